"""How soon a stream starts to speak, what streaming costs, and what batching many texts buys.

    python recipes/benchmark_synthesis.py --model runs/long/model --prompt runs/long/corpus/audio/spk005/spk005_00001.flac

With the prompt prepared once as a voice preset (as a server holds it) and `--threads` torch threads:

Streaming, for each of `--sentences` sentences (a built-in list, or `--text-file`):
- time to first audio: from calling `TTS.stream` to its first chunk;
- real-time factor of the stream (all its chunks) and of `TTS.synthesize` (compute seconds per
  second of audio; below 1 is faster than real time);
- the largest difference between the stream's concatenation and the whole synthesis (the same
  seed gives the same audio, up to float rounding).

Batches, for each of `--batches` N: N sentences (the list, repeated as needed, each with its own
seed) in one `TTS.synthesize_batch` call, against the same N synthesized one at a time: sentences
per second and real-time factor of both.

Prints markdown tables. The first call of each kind warms up and is not counted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from app.tts import TTS

SENTENCES = [
    "The children found a tiny kite near the bridge.",
    "We waited almost twenty minutes for the bus.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "A quiet river runs past the old mill.",
    "She sold her bicycle to buy a ticket to the coast.",
    "Nobody expected the meeting to last until midnight.",
    "The weather will turn cold again on Thursday.",
    "He painted the fence a bright shade of green.",
    "Our neighbours planted six apple trees last spring.",
    "The library closes early on public holidays.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an exported model directory")
    parser.add_argument("--prompt", required=True, help="a recording of the voice (3-10 s)")
    parser.add_argument("--prompt-text", default=None, help="what the prompt says, if known")
    parser.add_argument("--text-file", type=Path, default=None, help="one sentence per line (default: built-in)")
    parser.add_argument("--sentences", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 8, 32], help="texts per batch (none: skip)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    sentences = (args.text_file.read_text().splitlines() if args.text_file else SENTENCES)
    sentences = [s for s in sentences if s.strip()][: args.sentences]
    tts = TTS.from_pretrained(args.model)
    voice = tts.prepare_voice(args.prompt, args.prompt_text)
    tts.synthesize(sentences[0], voice=voice, seed=args.seed)  # warm-up
    list(tts.stream(sentences[0], voice=voice, seed=args.seed))

    rows = []
    for k, text in enumerate(sentences):
        start = time.perf_counter()
        stream = tts.stream(text, voice=voice, seed=args.seed + k)
        pieces = [next(stream)]
        first = time.perf_counter() - start
        pieces.extend(stream)
        stream_s = time.perf_counter() - start
        start = time.perf_counter()
        whole, sr = tts.synthesize(text, voice=voice, seed=args.seed + k)
        whole_s = time.perf_counter() - start
        streamed = np.concatenate(pieces)
        audio_s = len(whole) / sr
        diff = float(np.abs(streamed - whole).max()) if streamed.shape == whole.shape else float("inf")
        rows.append((text, audio_s, first, stream_s / audio_s, whole_s / audio_s, len(pieces), diff))

    print(f"model {args.model}, {args.threads} threads, {len(rows)} sentences, voice {args.prompt}\n")
    print("| sentence | audio s | first audio s | RTF stream | RTF whole | chunks | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for text, audio_s, first, rtf_stream, rtf_whole, n, diff in rows:
        print(f"| {text[:40]} | {audio_s:.2f} | {first:.3f} | {rtf_stream:.3f} | {rtf_whole:.3f} | {n} | {diff:.1e} |")
    median = lambda i: statistics.median(row[i] for row in rows)  # noqa: E731
    print(f"\nmedian: first audio {median(2):.3f} s, RTF stream {median(3):.3f}, RTF whole {median(4):.3f}; "
          f"largest difference {max(row[6] for row in rows):.1e}")

    if not args.batches:
        return
    print("\n| texts | one at a time: sentences/s | RTF | one batch: sentences/s | RTF | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.batches:
        texts = [sentences[k % len(sentences)] for k in range(n)]
        seeds = [args.seed + k for k in range(n)]
        start = time.perf_counter()
        alone = [tts.synthesize(text, voice=voice, seed=seed)[0] for text, seed in zip(texts, seeds)]
        alone_s = time.perf_counter() - start
        start = time.perf_counter()
        batched = [wav for wav, _ in tts.synthesize_batch(texts, voices=voice, seeds=seeds)]
        batch_s = time.perf_counter() - start
        audio_s = sum(len(w) for w in batched) / tts.sample_rate
        if [len(w) for w in batched] != [len(w) for w in alone]:
            raise SystemExit("a batched synthesis differs from the same text alone: a bug, please report it")
        print(f"| {n} | {n / alone_s:.2f} | {alone_s / audio_s:.3f} | {n / batch_s:.2f} | {batch_s / audio_s:.3f} | "
              f"{alone_s / batch_s:.2f}x |")


if __name__ == "__main__":
    main()

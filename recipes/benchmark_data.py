"""Measure the data stage: how fast the synthetic corpus is built and how fast text is phonemized.

    python recipes/benchmark_data.py                 # 0.5 h corpus, 2000 sentences
    python recipes/benchmark_data.py --hours 1 --sentences 5000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from data.frontend import TextFrontend
from data.phonemes import Phonemizer
from data.sentences import generate_sentences
from data.synthetic import build_synthetic_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=0.5, help="size of the synthetic corpus to build")
    parser.add_argument("--sentences", type=int, default=2000, help="distinct sentences to phonemize")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        utterances = build_synthetic_corpus(out, args.hours, workers=args.workers, use_flite=False)
        minutes = (time.perf_counter() - start) / 60
    hours = sum(u.duration for u in utterances) / 3600
    print(
        f"synthetic corpus: {hours:.2f} h, {len({u.speaker for u in utterances})} speakers, {len(utterances)} "
        f"utterances in {minutes * 60:.1f} s with {args.workers} workers = {hours / minutes:.2f} h of audio per minute"
    )

    sentences = generate_sentences(args.sentences, seed=1)
    phonemizer = Phonemizer()
    phonemizer.phonemize(["Warm up the backend."], "en-us")
    start = time.perf_counter()
    tokens = phonemizer.phonemize(sentences, "en-us")
    cold = time.perf_counter() - start
    start = time.perf_counter()
    phonemizer.phonemize(sentences, "en-us")
    cached = time.perf_counter() - start
    n_tokens = sum(map(len, tokens)) / len(tokens)
    print(
        f"phonemization: {len(sentences) / cold:.0f} utterances/s batched ({n_tokens:.0f} tokens each, one eSpeak "
        f"process), {len(sentences) / cached:.0f} utterances/s from the cache"
    )
    start = time.perf_counter()
    TextFrontend.build(sentences, "en-us", kind="bpe", bpe_vocab_size=512)
    print(f"sentencepiece: trained a 512-piece model on {len(sentences)} sentences in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()

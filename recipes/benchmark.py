"""Measure inference speed of the whole synthesis path for the `tiny`, `cpu` and `base` presets.

    python recipes/benchmark.py                          # all three presets, 2 threads
    python recipes/benchmark.py --presets cpu --threads 1

For each preset (LM sizes from recipes/configs/lm, the codec from recipes/configs/codec) the
models are built with random weights: speed does not depend on what they learned, but their
output is noise. The input is one utterance: `--text_tokens` phoneme tokens and a prompt of
`--prompt_seconds` of codec frames.

- AR ms/step: one step (network + sampling) after L frames were generated, with the KV cache
  (the mean over a window of steps starting at L) and without it (the full forward that
  `generate_ar(use_cache=False)` runs at that step);
- 10 s utterance: `generate_ar` with the cache writing 10 s of frames, `generate_nar` for
  all the codebooks 2..K, the codec decoding them; the real-time factor is their sum / 10 s
  (below 1 is faster than real time).

On a shared machine whose cores are busy, 2 threads can be many times slower than 1 for the
small presets (each op waits for the other thread); compare with `--threads 1`.

`base` is paper-sized and slow on a CPU: it measures shorter windows, no repeats, and its AR
time for 10 s is extrapolated: the measured prefill and steps up to the last window, then the
last window's ms/step for the remaining frames (marked ≈; a step's cost grows slowly with the
cache, so this is a slight underestimate).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

import torch

from codec.model import EchoCodec
from lm.ar import ARConfig, ARModel
from lm.generation import generate_ar, generate_nar
from lm.nar import NARConfig, NARModel
from lm.sampling import SamplingConfig, sample_next
from recipes.train_codec import TrainCodecConfig
from recipes.train_lm import TrainLMConfig
from recipes.training import CONFIG_DIR, load_config

TEXT_VOCAB = 128  # about the size of an English phoneme vocabulary with stress marks and punctuation
SAMPLING = SamplingConfig(temperature=1.0, top_k=50)


@dataclass
class Effort:
    """How much to measure: a step window, repeats of the no-cache forward, and whether the
    10 s AR run is measured (or extrapolated from the step windows)."""

    window: int
    repeats: int
    run_ar: bool


EFFORT = {"base": Effort(window=5, repeats=1, run_ar=False)}
DEFAULT_EFFORT = Effort(window=20, repeats=3, run_ar=True)


@dataclass
class Setup:
    name: str
    ar: ARModel
    nar: NARModel
    codec: EchoCodec
    frame_rate: float
    inputs: dict[str, torch.Tensor]  # text, text_lengths, prompt, prompt_lengths for one utterance


def build(name: str, text_tokens: int, prompt_seconds: float) -> Setup:
    lm = load_config(TrainLMConfig, name, [], preset_dir=CONFIG_DIR / "lm")
    codec_config = load_config(TrainCodecConfig, name, [], preset_dir=CONFIG_DIR / "codec").model
    codec = EchoCodec(codec_config).eval()
    shape = dict(text_vocab_size=TEXT_VOCAB, codebook_size=codec_config.codebook_size, n_q=codec_config.n_q)
    models = []
    for model_class, config_class, size in ((ARModel, ARConfig, lm.ar), (NARModel, NARConfig, lm.nar)):
        models.append(model_class(config_class(**shape, d_model=size.d_model, n_heads=size.n_heads,
                                               n_layers=size.n_layers, ffn_dim=size.ffn_dim, ffn=size.ffn)).eval())
    P = round(prompt_seconds * codec_config.frame_rate)
    inputs = dict(
        text=torch.randint(4, TEXT_VOCAB, (1, text_tokens)),
        text_lengths=torch.tensor([text_tokens]),
        prompt=torch.randint(0, codec_config.codebook_size, (1, codec_config.n_q, P)),
        prompt_lengths=torch.tensor([P]),
    )
    return Setup(name, models[0], models[1], codec, codec_config.frame_rate, inputs)


def cached_ms_per_step(setup: Setup, lengths: list[int], window: int) -> tuple[dict[int, float], int, float]:
    """Mean ms of a cached step (model.step + sample_next) over the `window` steps after each length;
    and the steps run with the seconds they took, prefill included."""
    model, eos = setup.ar, setup.ar.config.eos_id
    generator = torch.Generator().manual_seed(0)
    last = max(lengths) + window
    begin = time.perf_counter()
    with torch.no_grad():
        logits, cache = model.prefill(**setup.inputs, max_new_tokens=last)
        history = torch.zeros(1, 0, dtype=torch.long)
        starts, times = {}, {}
        for t in range(last + 1):
            now = time.perf_counter()
            if t in lengths:
                starts[t] = now
            if t - window in starts:
                times[t - window] = 1000 * (now - starts[t - window]) / window
            if t == last:
                break
            logits[:, eos] = float("-inf")  # a random model: keep it writing codes
            token = sample_next(logits, history, SAMPLING, generator)
            history = torch.cat([history, token[:, None]], 1)
            logits, cache = model.step(token, cache)
    return times, last, time.perf_counter() - begin


def full_forward_ms(setup: Setup, length: int, repeats: int) -> float:
    """ms of the full forward that the no-cache driver runs after `length` generated frames (best of repeats)."""
    codes = torch.randint(0, setup.ar.config.codebook_size, (1, 1, length))
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            setup.ar(**setup.inputs, codes=codes, code_lengths=torch.tensor([length]))
            best = min(best, time.perf_counter() - start)
    return 1000 * best


def utterance_seconds(setup: Setup, seconds: float, ar_s: float | None) -> tuple[int, float, float, float]:
    """Frames, and the wall time of AR (cached), NAR (all stages) and codec decode for `seconds` of speech.
    The AR is run with `generate_ar` unless its time `ar_s` is given (then random codes stand in)."""
    T = round(seconds * setup.frame_rate)
    if ar_s is None:
        start = time.perf_counter()
        ar = generate_ar(setup.ar, **setup.inputs, sampling=SAMPLING, min_new_tokens=T, max_new_tokens=T,
                         generator=torch.Generator().manual_seed(0))
        ar_s = time.perf_counter() - start
        codes1, lengths = ar.codes, ar.lengths
    else:
        codes1, lengths = torch.randint(0, setup.ar.config.codebook_size, (1, T)), torch.tensor([T])
    start = time.perf_counter()
    codes = generate_nar(setup.nar, **setup.inputs, codes1=codes1, lengths=lengths)
    nar_s = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        setup.codec.decode(codes)
    return T, ar_s, nar_s, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "cpu", "base"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 150, 300], help="generated frames")
    parser.add_argument("--text_tokens", type=int, default=60)
    parser.add_argument("--prompt_seconds", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="the utterance of the real-time factor")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()

    steps, utterances = [], []
    for name in args.presets:
        setup = build(name, args.text_tokens, args.prompt_seconds)
        effort = EFFORT.get(name, DEFAULT_EFFORT)
        full_forward_ms(setup, min(args.lengths), 1)  # warm-up: allocator, kernels
        cached, measured_steps, measured_s = cached_ms_per_step(setup, args.lengths, effort.window)
        T = round(args.seconds * setup.frame_rate)
        ar_s = None if effort.run_ar else measured_s + max(T - measured_steps, 0) * cached[max(args.lengths)] / 1000
        full = {L: full_forward_ms(setup, L, effort.repeats) for L in args.lengths}
        params = [sum(p.numel() for p in m.parameters()) / 1e6 for m in (setup.ar, setup.nar)]
        steps.append((setup, params, cached, full))
        utterances.append((setup, *utterance_seconds(setup, args.seconds, ar_s), not effort.run_ar))
        print(f"{name}: done after {time.perf_counter() - started:.0f} s", file=sys.stderr)

    print(f"Random-weight models (speed only), CPU, {args.threads} threads; one utterance of {args.text_tokens} "
          f"text tokens and a {args.prompt_seconds:g} s prompt. Load average (1 min) "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores.\n")
    print("AR ms per step after L generated frames, with the KV cache / without (full forward):\n")
    header = " | ".join(f"L={L} cache | L={L} no cache" for L in args.lengths)
    print(f"| preset | AR / NAR params (M) | frames/s | prompt frames | {header} |")
    print("|---" * (4 + 2 * len(args.lengths)) + "|")
    for setup, (ar_m, nar_m), cached, full in steps:
        cells = " | ".join(f"{cached[L]:.1f} | {full[L]:.1f}" for L in args.lengths)
        print(f"| {setup.name} | {ar_m:.2f} / {nar_m:.2f} | {setup.frame_rate:g} | "
              f"{int(setup.inputs['prompt_lengths'][0])} | {cells} |")

    print(f"\n{args.seconds:g} s of speech: AR with the cache, NAR for codebooks 2..K, codec decode (seconds); "
          f"RTF = total / {args.seconds:g} s:\n")
    print("| preset | frames | codebooks | AR (s) | NAR (s) | decode (s) | total (s) | RTF |")
    print("|---|---|---|---|---|---|---|---|")
    for setup, T, ar_s, nar_s, decode_s, estimated in utterances:
        total, mark = ar_s + nar_s + decode_s, "≈" if estimated else ""
        print(f"| {setup.name} | {T} | {setup.codec.n_q} | {mark}{ar_s:.2f} | {nar_s:.2f} | {decode_s:.2f} | "
              f"{mark}{total:.2f} | {mark}{total / args.seconds:.2f} |")
    if any(u[-1] for u in utterances):
        print(f"\n≈: AR extrapolated from the measured steps up to L={max(args.lengths)} "
              f"(see the module docstring).")


if __name__ == "__main__":
    main()

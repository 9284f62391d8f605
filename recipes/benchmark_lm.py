"""Measure the LM presets' training speed on this machine: AR and NAR frames/s, step time, memory.

    python recipes/benchmark_lm.py                       # tiny and cpu, then one base step
    python recipes/benchmark_lm.py --presets cpu --steps 5

Each model trains on a batch that fills its preset's frame budget with 6 s utterances
(~60 phonemes, a 3 s prompt, random tokens of a 50 Hz, 4-codebook codec for tiny/cpu and a
75 Hz, 8 x 1024 codec for base: the sizes the presets are meant for). "frames/s" counts target
frames, as train_lm.py logs it. The weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from dataclasses import replace

import torch

from lm.ar import ARModel
from lm.nar import NARModel
from lm.pretrained import LMConfig
from recipes.train_lm import TrainLMConfig
from recipes.training import CONFIG_DIR, adamw, load_config

TEXT_VOCAB = 80
CODECS = {"tiny": (50.0, 4, 512), "cpu": (50.0, 4, 512), "base": (75.0, 8, 1024)}  # frame rate, K, C


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def batch(frame_rate: float, n_q: int, codebook_size: int, max_frames: int, max_batch_size: int):
    """Items of 6 s (3 s prompt + 3 s target) and 60 phonemes, as many as the frame budget allows; the
    alignment (for a duration-guided AR) spreads the phonemes evenly over the target frames."""
    N, P, T = 60, round(3 * frame_rate), round(3 * frame_rate)
    B = max(1, min(max_batch_size, max_frames // (N + P + T)))
    text = torch.randint(4, TEXT_VOCAB, (B, N))
    prompt = torch.randint(0, codebook_size, (B, n_q, P))
    codes = torch.randint(0, codebook_size, (B, n_q, T))
    lengths = lambda n: torch.full((B,), n)  # noqa: E731
    alignment = (torch.arange(T) * N // T).expand(B, T)
    return (text, lengths(N), prompt, lengths(P), codes, lengths(T)), alignment, B * T


def time_steps(model: torch.nn.Module, inputs, steps: int, **kwargs) -> float:
    optimizer = adamw(model.parameters(), lr=1e-4)  # as the recipes train
    times = []
    for _ in range(steps + 1):  # the first step warms up the allocator
        start = time.perf_counter()
        loss = model(*inputs, **kwargs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return min(times[1:]) if steps else times[0]


def measure(name: str, settings: LMConfig, kind: str, cfg: TrainLMConfig, steps: int) -> dict:
    frame_rate, n_q, codebook_size = CODECS.get(name, CODECS["cpu"])
    config = replace(settings, text_vocab_size=TEXT_VOCAB, codebook_size=codebook_size, n_q=n_q)
    model = ARModel(config) if kind == "ar" else NARModel(config)
    inputs, alignment, frames = batch(frame_rate, n_q, codebook_size, cfg.max_frames, cfg.max_batch_size)
    options = {"stage": 2} if kind == "nar" else {"alignment": alignment} if model.config.duration_guided else {}
    before = peak_rss_gib()
    seconds = time_steps(model.train(), inputs, steps, **options)
    return {"preset": name, "model": kind.upper(), "params": model.num_parameters() / 1e6, "batch": inputs[0].shape[0],
            "frames": frames, "step_s": seconds, "frames_per_s": frames / seconds, "peak_gib": peak_rss_gib() - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "cpu", "base"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model (base always runs one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--base-max-frames", type=int, default=None,
        help="frame budget of the base batch (default: the preset's 40000, sized for a GPU; too much for 24 GiB of CPU memory)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    # base first, so that the peak memory it reports is its own rather than an earlier preset's.
    for name in sorted(args.presets, key=lambda n: n != "base"):
        cfg = load_config(TrainLMConfig, name, preset_dir=CONFIG_DIR / "lm")
        if name == "base" and args.base_max_frames:
            cfg.max_frames = args.base_max_frames
        for kind in ("ar", "nar"):
            rows.append(measure(name, getattr(cfg, kind), kind, cfg, 0 if name == "base" else args.steps))
            print(f"measured {name} {kind}", file=sys.stderr)

    print(f"\nLM training on CPU, {args.threads} threads; one optimizer step on a full frame-budget batch of 6 s items\n")
    print("| preset | model | params (M) | batch | target frames | step (s) | frames/s | peak memory (GiB) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['preset']} | {r['model']} | {r['params']:.2f} | {r['batch']} | {r['frames']} | "
              f"{r['step_s']:.2f} | {r['frames_per_s']:.0f} | {r['peak_gib']:.2f} |")


if __name__ == "__main__":
    main()

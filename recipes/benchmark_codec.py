"""Measure the codec presets: size, bitrate, encode/decode speed, and one training step of `base`.

    python recipes/benchmark_codec.py                      # all presets + EnCodec 24 kHz at 6 kbps
    python recipes/benchmark_codec.py --presets cpu --no-train-step

Speeds are "× real time" (seconds of audio per second of compute) on 10 s of audio, with the
threads torch is given (`--threads`, default 2). The training step runs the `base` preset's
full generator + discriminator step at its own batch size and reports its wall time and the
peak resident memory it added.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from codec.discriminators import Discriminator
from codec.interface import Codec
from codec.losses import (
    discriminator_adversarial_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    multiscale_mel_loss,
)
from codec.model import EchoCodec
from recipes.train_codec import TrainCodecConfig
from recipes.training import CONFIG_DIR, adamw, load_config


def best_time(fn, repeats: int = 3) -> float:
    fn()  # warm-up: allocator, kernels, lazy init
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def speed(codec: Codec, seconds: float = 10.0) -> tuple[float, float]:
    wav = 0.1 * torch.randn(1, 1, int(seconds * codec.sample_rate))
    codes = codec.encode(wav)
    return seconds / best_time(lambda: codec.encode(wav)), seconds / best_time(lambda: codec.decode(codes))


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def train_step_figures(cfg: TrainCodecConfig) -> tuple[float, float]:
    """Wall time of one full GAN training step at the preset's batch size, and the peak memory it added."""
    codec, discriminator = EchoCodec(cfg.model).train(), Discriminator(cfg.discriminator)
    opt_g = adamw(codec.parameters(), lr=cfg.lr, betas=cfg.betas)
    opt_d = adamw(discriminator.parameters(), lr=cfg.discriminator_lr, betas=cfg.betas)
    w = cfg.loss_weights
    wav = 0.1 * torch.randn(cfg.batch_size, 1, round(cfg.segment_seconds * cfg.model.sample_rate))
    before = peak_rss_gib()
    start = time.perf_counter()
    out = codec(wav)
    fake, real = discriminator(out.wav), discriminator(wav)
    loss_g = (
        w.mel * multiscale_mel_loss(out.wav, wav, cfg.model.sample_rate)
        + w.commitment * out.commitment_loss
        + w.adversarial * generator_adversarial_loss(fake.logits)
        + w.feature_matching * feature_matching_loss(real.features, fake.features)
    )
    opt_g.zero_grad()
    loss_g.backward()
    opt_g.step()
    real, fake = discriminator(wav), discriminator(out.wav.detach())
    loss_d = discriminator_adversarial_loss(real.logits, fake.logits)
    opt_d.zero_grad()
    loss_d.backward()
    opt_d.step()
    return time.perf_counter() - start, peak_rss_gib() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "cpu", "base"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-encodec", action="store_true", help="skip transformers' EnCodec reference")
    parser.add_argument("--no-train-step", action="store_true", help="skip the base training step")
    parser.add_argument(
        "--train-batch-size", type=int, default=None,
        help="batch size of the base training step (default: the preset's; its 32 x 1 s needs more than 24 GiB on CPU)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    if not args.no_train_step:  # first, so that the peak memory it reports is its own
        cfg = load_config(TrainCodecConfig, "base", preset_dir=CONFIG_DIR / "codec")
        if args.train_batch_size:
            cfg.batch_size = args.train_batch_size
        step_s, step_gib = train_step_figures(cfg)
        print(
            f"base training step (batch {cfg.batch_size} x {cfg.segment_seconds:g} s, generator + discriminators, "
            f"CPU, {args.threads} threads): {step_s:.1f} s, peak memory +{step_gib:.1f} GiB"
        )
    for name in args.presets:
        cfg = load_config(TrainCodecConfig, name, preset_dir=CONFIG_DIR / "codec")
        codec = EchoCodec(cfg.model).eval()
        params = sum(p.numel() for p in codec.parameters()) / 1e6
        disc = sum(p.numel() for p in Discriminator(cfg.discriminator).parameters()) / 1e6
        enc, dec = speed(codec)
        rows.append((f"Echo {name}", cfg.model.sample_rate, cfg.model.frame_rate, cfg.model.bitrate, params, disc, enc, dec))
    if not args.no_encodec:
        from transformers import EncodecConfig, EncodecModel

        from codec.encodec import EncodecCodec

        codec = EncodecCodec(EncodecModel(EncodecConfig()), bandwidth=6.0)  # the 24 kHz model's architecture
        params = sum(p.numel() for p in codec.parameters()) / 1e6
        enc, dec = speed(codec)
        rows.append(("EnCodec 24 kHz", codec.sample_rate, codec.frame_rate, 6000.0, params, float("nan"), enc, dec))

    print("\n| codec | sample rate | frames/s | kbps | params (M) | discriminator (M) | encode ×RT | decode ×RT |")
    print("|---|---|---|---|---|---|---|---|")
    for name, sr, fr, bps, params, disc, enc, dec in rows:
        disc_text = "-" if disc != disc else f"{disc:.2f}"
        print(f"| {name} | {sr} | {fr:g} | {bps / 1000:g} | {params:.2f} | {disc_text} | {enc:.0f} | {dec:.0f} |")


if __name__ == "__main__":
    main()

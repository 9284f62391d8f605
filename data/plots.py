"""Figures for reports and logs: log-mel spectrograms and training curves.

Everything renders off-screen with matplotlib's Agg canvas, and matplotlib is imported only
inside the functions: importing this module sets no backend and opens no window, so it is
safe in training loops, tests and servers alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from data.pretrained import write_file

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TOP_DB = 80.0  # dynamic range shown in spectrograms; quieter bins are clipped to the floor


def _mono(wav: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A float32 1-D tensor from a mono waveform given as [T], [1, T] or [1, 1, T]."""
    wav = torch.as_tensor(wav).detach().to("cpu", torch.float32)
    if wav.dim() > 1 and all(n == 1 for n in wav.shape[:-1]):
        wav = wav.reshape(-1)
    if wav.dim() != 1:
        raise ValueError(f"expected a mono waveform [T] (or [1, T], [1, 1, T]), got shape {tuple(wav.shape)}")
    return wav


def mel_settings(sample_rate: int) -> dict[str, int]:
    """FFT size (about 40 ms, a power of two), hop (a quarter of it) and 80 mel bands for `sample_rate`."""
    n_fft = 2 ** math.ceil(math.log2(0.04 * sample_rate))
    return {"n_fft": n_fft, "hop_length": n_fft // 4, "n_mels": 80}


def log_mel_db(wav: torch.Tensor | np.ndarray, sample_rate: int) -> np.ndarray:
    """Log-mel power spectrogram in dB, [n_mels, frames] (row 0 = lowest band)."""
    import torchaudio.transforms as T

    settings = mel_settings(sample_rate)
    mel = T.MelSpectrogram(sample_rate=sample_rate, power=2.0, **settings)(_mono(wav))
    return (10 * torch.log10(mel.clamp_min(1e-10))).numpy()


def save_figure(fig: "Figure", path: str | Path) -> Path:
    """Render `fig` with Agg and write it atomically (the format follows the suffix, e.g. .png, .pdf)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    FigureCanvasAgg(fig)
    return write_file(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png", dpi=100))


def plot_spectrograms(
    waves: Mapping[str, torch.Tensor | np.ndarray], sample_rate: int, path: str | Path, title: str | None = None
) -> Path:
    """Stack the log-mel spectrograms of `waves` (label -> mono waveform) in one figure at `path`.

    All panels share one colour scale (the loudest bin of any panel down `TOP_DB`) and one
    time axis in seconds, so an original and its reconstructions compare at a glance.
    """
    from matplotlib.figure import Figure

    if not waves:
        raise ValueError("plot_spectrograms needs at least one waveform")
    specs = {label: log_mel_db(wav, sample_rate) for label, wav in waves.items()}
    vmax = max(float(s.max()) for s in specs.values())
    hop = mel_settings(sample_rate)["hop_length"]
    fig = Figure(figsize=(10, 2.2 * len(specs) + (0.4 if title else 0)), layout="constrained")
    axes = fig.subplots(len(specs), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (label, spec) in zip(axes, specs.items()):
        image = ax.imshow(
            spec,
            origin="lower",
            aspect="auto",
            cmap="magma",
            vmin=vmax - TOP_DB,
            vmax=vmax,
            extent=(0.0, spec.shape[1] * hop / sample_rate, 0, spec.shape[0]),
            interpolation="nearest",
        )
        ax.set_title(label, fontsize=10, loc="left")
        ax.set_ylabel("mel band")
    axes[-1].set_xlabel("time (s)")
    fig.colorbar(image, ax=list(axes), label="dB", pad=0.01)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def spectrogram_image(wav: torch.Tensor | np.ndarray, sample_rate: int) -> np.ndarray:
    """A log-mel spectrogram as an RGB image [H = mel bands, W = frames, 3] uint8, low bands at the bottom.

    For `SummaryWriter.add_image(tag, image, step, dataformats="HWC")`. The colour scale runs
    from the loudest bin down `TOP_DB`.
    """
    from matplotlib import colormaps

    spec = log_mel_db(wav, sample_rate)
    top = float(spec.max())
    scaled = np.clip((spec - (top - TOP_DB)) / TOP_DB, 0.0, 1.0)[::-1]  # image row 0 is the top
    rgba = colormaps["magma"](scaled)  # [H, W, 4] floats in [0, 1]
    return np.ascontiguousarray((rgba[..., :3] * 255).round().astype(np.uint8))


def plot_curves(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    title: str,
    xlabel: str = "step",
    ylabel: str = "loss",
    log_y: bool = False,
) -> Path:
    """Plot named curves of (step, value) points into one figure at `path`.

    Non-finite values (a NaN loss, a skipped metric) are left out rather than breaking the
    line; `log_y` uses a log scale when every value shown is positive.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    all_positive, plotted = True, 0
    for name, points in series.items():
        points = [(float(x), float(y)) for x, y in points if math.isfinite(float(y))]
        if not points:
            continue
        xs, ys = zip(*points)
        ax.plot(xs, ys, label=name, marker="o" if len(points) <= 12 else None)  # few points: show each
        all_positive &= min(ys) > 0
        plotted += 1
    if log_y and plotted and all_positive:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if plotted:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return save_figure(fig, path)

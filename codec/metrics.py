"""Objective codec metrics: PESQ, STOI, SI-SDR, bitrate and codebook usage.

Pure functions on mono float waveforms ([T], [1, T] or [1, 1, T]; numpy or torch). The
reference comes first, the degraded (reconstructed) signal second; when their lengths differ
both are trimmed to the shorter, since codecs pad to whole frames. A metric that cannot be
computed for one item (PESQ finds no speech, STOI has too few frames) returns NaN and logs a
warning, so one odd file never stops a whole evaluation; average with `np.nanmean`.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torchaudio.functional as AF

from codec.interface import Codec

logger = logging.getLogger(__name__)

Signal = np.ndarray | torch.Tensor

PESQ_SAMPLE_RATE = 16000  # wide-band PESQ (ITU-T P.862.2) is defined at 16 kHz only


def as_mono_numpy(wav: Signal) -> np.ndarray:
    """A float64 1-D copy of a mono waveform given as [T], [1, T] or [1, 1, T]."""
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().to("cpu", torch.float64).numpy()
    wav = np.asarray(wav, dtype=np.float64)
    if wav.ndim > 1 and all(n == 1 for n in wav.shape[:-1]):
        wav = wav.reshape(-1)
    if wav.ndim != 1:
        raise ValueError(f"expected a mono waveform [T] (or [1, T], [1, 1, T]), got shape {wav.shape}")
    return wav


def align(ref: Signal, deg: Signal) -> tuple[np.ndarray, np.ndarray]:
    """Both signals as 1-D float64 arrays, trimmed to the shorter length."""
    ref, deg = as_mono_numpy(ref), as_mono_numpy(deg)
    n = min(len(ref), len(deg))
    return ref[:n], deg[:n]


def pesq_wb(ref: Signal, deg: Signal, sr: int) -> float:
    """Wide-band PESQ (MOS-LQO, about 1.0 to 4.64) of `deg` against `ref`, computed at 16 kHz.

    Returns NaN (and logs why) when PESQ cannot score the pair: no speech found, shorter than
    a quarter second, or a silent signal.
    """
    from pesq import PesqError, pesq

    ref, deg = align(ref, deg)
    if sr != PESQ_SAMPLE_RATE:
        ref, deg = (
            AF.resample(torch.from_numpy(x), sr, PESQ_SAMPLE_RATE).numpy() for x in (ref, deg)
        )
    if not (np.isfinite(ref).all() and np.isfinite(deg).all()):
        logger.warning("PESQ skipped: the signal contains NaN or infinite samples")
        return math.nan
    if not (np.abs(ref).max(initial=0.0) > 0 and np.abs(deg).max(initial=0.0) > 0):
        logger.warning("PESQ skipped: the reference or the degraded signal is silent")
        return math.nan
    try:
        return float(pesq(PESQ_SAMPLE_RATE, ref, deg, "wb"))
    except PesqError as e:  # NoUtterancesError, BufferTooShortError, ...
        logger.warning("PESQ failed (%s: %s); scoring this item as NaN", type(e).__name__, e)
        return math.nan


def stoi(ref: Signal, deg: Signal, sr: int) -> float:
    """STOI (0 to 1; the classic measure, not extended STOI) of `deg` against `ref`.

    pystoi returns 1e-5 when fewer than 30 frames survive its silence removal; that would drag
    an average down for no reason, so such items are NaN here instead.
    """
    from pystoi import stoi as pystoi_stoi

    ref, deg = align(ref, deg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(pystoi_stoi(ref, deg, sr, extended=False))
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        logger.warning("STOI skipped: fewer than 30 non-silent frames (%.2f s of audio)", len(ref) / sr)
        return math.nan
    return value if math.isfinite(value) else math.nan


def si_sdr(ref: Signal, deg: Signal, eps: float = 1e-8) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al., 2019), on zero-mean signals.

    `deg` is projected onto `ref`; the projection is the target and the rest is distortion,
    so any gain applied to `deg` leaves the score unchanged.
    """
    ref, deg = align(ref, deg)
    ref = ref - ref.mean()
    deg = deg - deg.mean()
    scale = np.dot(deg, ref) / (np.dot(ref, ref) + eps)
    target = scale * ref
    noise = deg - target
    return float(10 * np.log10((np.dot(target, target) + eps) / (np.dot(noise, noise) + eps)))


def _field(source: Any, name: str) -> Any:
    if isinstance(source, Mapping):
        if name not in source:
            raise KeyError(f"bitrate needs {name!r}; got fields {sorted(source)}")
        return source[name]
    if not hasattr(source, name):
        raise AttributeError(f"bitrate needs {name!r}; {type(source).__name__} has no such attribute")
    return getattr(source, name)


def bitrate(codec_or_fields: Any, n_q: int | None = None) -> float:
    """Bits per second of `n_q` codebooks: frame_rate × n_q × log2(codebook_size).

    `codec_or_fields` is anything with `frame_rate` and `codebook_size` (a `Codec`, a
    `CodecIdentity`, a config) or a mapping with those keys; `n_q` defaults to its own `n_q`.
    A codec whose rows differ in size (Echo's with a pitch stream) says its bits itself.
    """
    if isinstance(codec_or_fields, Codec):
        return codec_or_fields.frame_rate * codec_or_fields.bits_per_frame(codec_or_fields.n_q if n_q is None else n_q)
    frame_rate = float(_field(codec_or_fields, "frame_rate"))
    codebook_size = int(_field(codec_or_fields, "codebook_size"))
    if n_q is None:
        n_q = int(_field(codec_or_fields, "n_q"))
    if n_q < 1 or codebook_size < 2:
        raise ValueError(f"bitrate needs n_q >= 1 and codebook_size >= 2, got n_q={n_q}, codebook_size={codebook_size}")
    return frame_rate * n_q * math.log2(codebook_size)


@dataclass(frozen=True)
class CodebookUsage:
    """How much of each codebook the encoded items use (index k = codebook k + 1)."""

    fraction_used: list[float]  # distinct codes seen / codebook_size
    perplexity: list[float]  # exp(entropy of the code histogram): 1 = one code, codebook_size = uniform
    codebook_size: int
    frames: int  # frames counted per codebook

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def codebook_usage(
    codes: torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray], codebook_size: int
) -> CodebookUsage:
    """Per-codebook usage over `codes` [N, K, F], or a list of [K, F] / [1, K, F] arrays of any F."""
    items = [codes] if isinstance(codes, (torch.Tensor, np.ndarray)) else list(codes)
    if not items:
        raise ValueError("codebook_usage got no codes")
    counts: torch.Tensor | None = None  # [K, codebook_size]
    for item in items:
        item = torch.as_tensor(item).long()
        if item.dim() == 2:
            item = item.unsqueeze(0)
        if item.dim() != 3:
            raise ValueError(f"codes must be [N, K, F] or [K, F], got shape {tuple(item.shape)}")
        if item.numel() and (item.min() < 0 or item.max() >= codebook_size):
            raise ValueError(f"codes must lie in [0, {codebook_size}), got [{int(item.min())}, {int(item.max())}]")
        N, K, F = item.shape  # items, codebooks, frames
        flat = item.transpose(0, 1).reshape(K, N * F)
        offsets = torch.arange(K).unsqueeze(1) * codebook_size  # one bincount for all codebooks at once
        item_counts = torch.bincount((flat + offsets).reshape(-1), minlength=K * codebook_size)
        item_counts = item_counts.reshape(K, codebook_size)
        if counts is not None and counts.shape[0] != K:
            raise ValueError(f"all codes must have the same number of codebooks, got {counts.shape[0]} and {K}")
        counts = item_counts if counts is None else counts + item_counts
    assert counts is not None
    total = counts.sum(dim=1, keepdim=True).double()  # [K, 1]
    p = counts.double() / total.clamp_min(1)
    entropy = -(p * p.clamp_min(1e-30).log()).sum(dim=1)  # nats; 0 · log 0 = 0
    return CodebookUsage(
        fraction_used=((counts > 0).sum(dim=1).double() / codebook_size).tolist(),
        perplexity=entropy.exp().tolist(),
        codebook_size=codebook_size,
        frames=int(total[0, 0]) if total.numel() else 0,
    )

"""The codec's pitch stream: F0 coded beside the RVQ, and the harmonic source it gives the decoder.

The RVQ codes do not carry intonation: trained with spectral losses, whose gradients barely see
where a harmonic sits, the decoder renders speech at a level pitch wherever the recording's rises
and falls (README, Codec: what holds PESQ down). Codec 2 codes F0 explicitly; so does this stream,
one code per frame: 0 for an unvoiced frame, 1..bins-1 for log-spaced F0 between PITCH_FMIN and
PITCH_FMAX. The decoder does not have to learn to draw harmonics at that F0: it receives them, as
a source-filter vocoder does (the neural source-filter models of Wang et al. 2019, DDSP's harmonic
oscillator): the log-magnitude comb of a harmonic excitation at the coded F0 is added, scaled per
frequency bin, to the log-magnitude it predicts, and enters its ConvNeXt stack beside the latent.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data.audio import F0_WINDOW_SECONDS, f0_contour

PITCH_FMIN, PITCH_FMAX = 60.0, 450.0  # Hz: the range of the F0 tracker and of the codes
LOG_FLOOR = 1e-2  # of the excitation's magnitude before its log: how deep the comb's valleys go
# The comb's gain is a parameter scaled by this, so that it learns as fast as a weight 4x larger: the
# gains the trained decoders settle on (a few tenths) took most of a 1500-step run at lr 3e-4 even so.
GAIN_SCALE = 4.0


def frame_f0(wav: torch.Tensor, sample_rate: int, hop_length: int) -> torch.Tensor:
    """wav [B, 1, F * hop] -> F0 in Hz [B, F] of a 40 ms window centred on each codec frame; 0 where unvoiced."""
    B, _, T = wav.shape
    n_frames = T // hop_length
    window = int(F0_WINDOW_SECONDS * sample_rate)
    pad = max(window - hop_length, 0) // 2
    signals = F.pad(wav.detach().float().reshape(B, T), (pad, pad + window)).cpu().numpy()
    f0 = np.stack([f0_contour(x, sample_rate, PITCH_FMIN, PITCH_FMAX, hop_length)[:n_frames] for x in signals])
    return torch.as_tensor(np.nan_to_num(f0, nan=0.0), dtype=torch.float32, device=wav.device)


def quantize_f0(f0: torch.Tensor, bins: int) -> torch.Tensor:
    """F0 in Hz (0: unvoiced) -> codes: 0 unvoiced, 1..bins-1 evenly spaced in log F0 over [PITCH_FMIN, PITCH_FMAX]."""
    position = (f0.clamp(PITCH_FMIN, PITCH_FMAX).log() - math.log(PITCH_FMIN)) / math.log(PITCH_FMAX / PITCH_FMIN)
    codes = 1 + (position * (bins - 2)).round().long()
    return torch.where(f0 > 0, codes, torch.zeros_like(codes))


def dequantize_f0(codes: torch.Tensor, bins: int) -> torch.Tensor:
    """codes -> F0 in Hz at the centre of each code's bin; 0 for unvoiced (code 0)."""
    position = (codes.float() - 1) / (bins - 2)
    f0 = torch.exp(math.log(PITCH_FMIN) + position * math.log(PITCH_FMAX / PITCH_FMIN))
    return torch.where(codes > 0, f0, torch.zeros_like(f0))


def pitch_agreement(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, bins: int) -> torch.Tensor:
    """How close predicted pitch codes come to the true ones, as sums to pool over batches: float64 [4] =
    (frames, frames whose voicing agrees, frames both call voiced, of those the ones within a semitone).
    predicted, target [B, T] codes, mask [B, T] the real frames."""
    predicted, target = predicted[mask].long(), target[mask].long()
    both = (predicted > 0) & (target > 0)
    semitones = (predicted[both] - target[both]).abs() * 12 * math.log2(PITCH_FMAX / PITCH_FMIN) / (bins - 2)
    return torch.tensor([mask.sum(), ((predicted > 0) == (target > 0)).sum(), both.sum(),
                         (semitones <= 1.0).sum()], dtype=torch.float64)


def harmonic_excitation(f0: torch.Tensor, sample_rate: int, hop_length: int) -> torch.Tensor:
    """F0 in Hz [B, F] (0: unvoiced) -> [B, F * hop] the sum of every harmonic below Nyquist, phase-continuous
    within each voiced run and counted from its onset."""
    f0 = f0.double().repeat_interleave(hop_length, dim=1)  # [B, T]: one F0 per sample, held over its frame
    voiced = f0 > 0
    total = torch.cumsum(2 * math.pi * f0 / sample_rate, dim=1)  # never falls: holds still where F0 is 0
    # Each run's phase counts from its onset, so the excitation of a window of frames that starts before
    # the run is the whole utterance's: synthesis decodes block by block on such windows (app/tts.py), and
    # a phase counted from the window's start would jump at every join. Wrapped to one turn in float64,
    # so that a long utterance's phase keeps its precision.
    phase = torch.remainder(total - torch.cummax(torch.where(voiced, 0.0, total), dim=1).values, 2 * math.pi)
    # K harmonics, k * F0 < Nyquist (never more than the lowest F0 has), summed in closed form:
    # sin(phase) + ... + sin(K phase) = sin(K phase / 2) sin((K + 1) phase / 2) / sin(phase / 2): one ratio
    # per sample, where a loop over the harmonics took about half of a pitch decoder's training step.
    nyquist = sample_rate / 2
    harmonics = (torch.ceil(nyquist / f0.clamp_min(1e-3)) - 1).clamp(0, int(nyquist / PITCH_FMIN)) * voiced
    half = phase / 2
    denominator = torch.sin(half)
    # Where sin(phase / 2) vanishes (phase near 0 or one turn) so does the sum: to first order it is
    # K (K + 1) / 2 times the phase's distance from the nearest whole turn.
    near_zero = denominator.abs() < 1e-6
    signed = torch.where(phase > math.pi, phase - 2 * math.pi, phase)
    ratio = torch.sin(harmonics * half) * torch.sin((harmonics + 1) * half) / torch.where(near_zero, 1.0, denominator)
    excitation = torch.where(near_zero, signed * harmonics * (harmonics + 1) / 2, ratio)
    return excitation.float()


class HarmonicSource(nn.Module):
    """What the decoder takes from F0: an input for its ConvNeXt stack and a log-magnitude comb to add.

    Both start at zero (a zero-initialised projection and per-bin gain), so a trained codec upgraded
    with a pitch stream decodes exactly as before until the new parameters train.
    """

    def __init__(self, n_fft: int, hop_length: int, sample_rate: int, dim: int):
        super().__init__()
        self.n_fft, self.hop_length, self.sample_rate = n_fft, hop_length, sample_rate
        n_bins = n_fft // 2 + 1
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.project = nn.Conv1d(3 * n_bins, dim, kernel_size=1)  # comb, cos and sin of the excitation's phase
        self.gain = nn.Parameter(torch.zeros(n_bins))  # how deep the comb cuts into each bin's log-magnitude
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, f0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """F0 in Hz [B, F] -> (input [B, dim, F], comb [B, n_bins, F]); both zero on unvoiced frames."""
        excitation = harmonic_excitation(f0, self.sample_rate, self.hop_length)
        pad = (self.n_fft - self.hop_length) // 2  # frames centred like the decoder's overlap-add
        with torch.autocast(f0.device.type, enabled=False):
            spec = torch.stft(F.pad(excitation, (pad, pad)), self.n_fft, self.hop_length, window=self.window,
                              center=False, return_complex=True)  # [B, n_bins, F]
        voiced = (f0 > 0).float()[:, None]
        log_magnitude = spec.abs().clamp_min(LOG_FLOOR).log()
        comb = (log_magnitude - log_magnitude.mean(dim=1, keepdim=True)) * voiced
        phase = spec.angle()
        features = torch.cat([comb, phase.cos() * voiced, phase.sin() * voiced], dim=1)
        return self.project(features), GAIN_SCALE * self.gain[:, None] * comb

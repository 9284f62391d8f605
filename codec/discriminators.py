"""Discriminators for adversarial codec training: multi-period (HiFi-GAN) and multi-scale STFT (EnCodec).

Every discriminator maps a waveform [B, 1, T] to a `DiscriminatorOutput`: one logit map per
sub-discriminator and, for feature matching, the activations of each of its hidden layers.
The losses that consume them live in `codec/losses.py`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

LEAKY_SLOPE = 0.1
ENCODEC_N_FFTS = (1024, 2048, 512)
ENCODEC_SAMPLE_RATE = 24000  # the rate EnCodec chose those STFT sizes for


@dataclass
class DiscriminatorConfig:
    """Which discriminators to train against and how wide they are.

    `channels` is the base width: a period discriminator widens it 4x per layer up to 32x
    (32 gives HiFi-GAN's 32-128-512-1024-1024), an STFT discriminator keeps it constant (EnCodec).
    `n_ffts` are STFT sizes in samples; `for_sample_rate` scales EnCodec's 24 kHz sizes to another rate.
    """

    periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    n_ffts: tuple[int, ...] = ENCODEC_N_FFTS
    channels: int = 32
    use_mpd: bool = True
    use_stft: bool = True

    def __post_init__(self) -> None:
        self.periods = tuple(self.periods)  # JSON gives lists
        self.n_ffts = tuple(self.n_ffts)
        if not (self.use_mpd or self.use_stft):
            raise ValueError("use_mpd and use_stft are both False: enable at least one discriminator")
        if self.use_mpd and not self.periods:
            raise ValueError("periods is empty but use_mpd is True: give at least one period or set use_mpd=False")
        if self.use_stft and not self.n_ffts:
            raise ValueError("n_ffts is empty but use_stft is True: give at least one FFT size or set use_stft=False")
        if any(not _is_int(p) or p < 1 for p in self.periods):
            raise ValueError(f"periods={self.periods}: every period must be a positive integer")
        if len(set(self.periods)) != len(self.periods):
            raise ValueError(f"periods={self.periods}: a repeated period only duplicates a discriminator")
        if any(not _is_int(n) or n < 16 for n in self.n_ffts):
            raise ValueError(f"n_ffts={self.n_ffts}: every FFT size must be an integer >= 16 (hop is n_fft // 4)")
        if not _is_int(self.channels) or self.channels < 1:
            raise ValueError(f"channels={self.channels}: the base width must be a positive integer")

    @classmethod
    def for_sample_rate(
        cls,
        sample_rate: int,
        *,
        periods: tuple[int, ...] = (2, 3, 5, 7, 11),
        channels: int = 32,
        use_mpd: bool = True,
        use_stft: bool = True,
    ) -> DiscriminatorConfig:
        """EnCodec's STFT sizes (1024, 2048, 512 at 24 kHz) scaled to `sample_rate`, rounded to powers of two.

        Periods are in samples and stay as given: HiFi-GAN uses the same primes at 22.05 and 44.1 kHz.
        """
        if sample_rate <= 0:
            raise ValueError(f"sample_rate={sample_rate} must be positive")
        n_ffts = tuple(max(16, 2 ** round(math.log2(n * sample_rate / ENCODEC_SAMPLE_RATE))) for n in ENCODEC_N_FFTS)
        return cls(periods=periods, n_ffts=n_ffts, channels=channels, use_mpd=use_mpd, use_stft=use_stft)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class DiscriminatorOutput:
    """What a discriminator says about a batch of waveforms.

    `logits[k]` is sub-discriminator k's map of real/fake scores [B, 1, H, W]; `features[k]`
    holds its hidden activations (after the nonlinearity, logits excluded) for feature matching.
    """

    logits: list[torch.Tensor]
    features: list[list[torch.Tensor]]

    @classmethod
    def merge(cls, outputs: Iterable[DiscriminatorOutput]) -> DiscriminatorOutput:
        logits: list[torch.Tensor] = []
        features: list[list[torch.Tensor]] = []
        for out in outputs:
            logits.extend(out.logits)
            features.extend(out.features)
        return cls(logits, features)


def _conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    dilation: tuple[int, int] = (1, 1),
) -> nn.Module:
    """A weight-normalised Conv2d padded so that, at stride 1, the output is as large as the input."""
    padding = tuple((k - 1) * d // 2 for k, d in zip(kernel_size, dilation))
    return weight_norm(nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation))


def _check_waveform(wav: torch.Tensor) -> None:
    if wav.dim() != 3 or wav.shape[1] != 1:
        raise ValueError(f"expected a waveform [B, 1, T], got shape {tuple(wav.shape)}")


class PeriodDiscriminator(nn.Module):
    """Sees every `period`-th sample: the waveform folded into an image [T/p, p], convolved along T/p only."""

    def __init__(self, period: int, channels: int = 32) -> None:
        super().__init__()
        self.period = period
        widths = [1, channels, 4 * channels, 16 * channels, 32 * channels, 32 * channels]
        strides = [3, 3, 3, 3, 1]
        self.convs = nn.ModuleList(
            _conv2d(c_in, c_out, (5, 1), stride=(s, 1)) for c_in, c_out, s in zip(widths[:-1], widths[1:], strides)
        )
        self.post = _conv2d(widths[-1], 1, (3, 1))

    def forward(self, wav: torch.Tensor) -> DiscriminatorOutput:
        B, _, T = wav.shape  # batch, 1, samples
        pad = -T % self.period
        if pad:
            wav = F.pad(wav, (0, pad), mode="reflect" if pad < T else "constant")
        x = wav.reshape(B, 1, -1, self.period)  # [B, 1, ceil(T/p), p]
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LEAKY_SLOPE)  # [B, D, H, p]; H shrinks 3x at each strided layer
            features.append(x)
        logits = self.post(x)  # [B, 1, H, p]
        return DiscriminatorOutput([logits], [features])


class MultiPeriodDiscriminator(nn.Module):
    """HiFi-GAN's MPD: one `PeriodDiscriminator` per (prime) period, so each sees a different periodic structure."""

    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11), channels: int = 32) -> None:
        super().__init__()
        self.periods = tuple(periods)
        self.discriminators = nn.ModuleList(PeriodDiscriminator(p, channels) for p in self.periods)

    def forward(self, wav: torch.Tensor) -> DiscriminatorOutput:
        _check_waveform(wav)
        return DiscriminatorOutput.merge(d(wav) for d in self.discriminators)


class STFTDiscriminator(nn.Module):
    """EnCodec's STFT discriminator: 2-D convs over the complex spectrogram (real and imaginary as channels).

    Convolutions are dilated 1, 2, 4 along time and strided by 2 along frequency.
    """

    def __init__(self, n_fft: int, channels: int = 32, dilations: Sequence[int] = (1, 2, 4)) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = n_fft // 4
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.convs = nn.ModuleList([_conv2d(2, channels, (3, 9))])
        self.convs.extend(_conv2d(channels, channels, (3, 9), stride=(1, 2), dilation=(d, 1)) for d in dilations)
        self.convs.append(_conv2d(channels, channels, (3, 3)))
        self.post = _conv2d(channels, 1, (3, 3))

    def forward(self, wav: torch.Tensor) -> DiscriminatorOutput:
        T = wav.shape[-1]
        if T <= self.n_fft // 2:
            raise ValueError(
                f"a waveform of {T} samples is too short for n_fft={self.n_fft}: need more than {self.n_fft // 2}"
            )
        # The STFT runs in float32 whatever the autocast: FFTs in bf16 are unsupported or inaccurate.
        spec = AF.spectrogram(
            wav.float(),
            pad=0,
            window=self.window.float(),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.n_fft,
            power=None,
            normalized=True,
            center=True,
        )  # complex [B, 1, F, frames], F = n_fft // 2 + 1, frames = T // hop + 1
        x = torch.cat([spec.real, spec.imag], dim=1).transpose(2, 3)  # [B, 2, frames, F]
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LEAKY_SLOPE)  # [B, D, frames, F'], F' halves at each strided layer
            features.append(x)
        logits = self.post(x)  # [B, 1, frames, ceil(F / 8)]
        return DiscriminatorOutput([logits], [features])


class MultiScaleSTFTDiscriminator(nn.Module):
    """EnCodec's MS-STFTD: one `STFTDiscriminator` per FFT size (hop = n_fft // 4), each trading time for frequency."""

    def __init__(self, n_ffts: Sequence[int] = ENCODEC_N_FFTS, channels: int = 32) -> None:
        super().__init__()
        self.n_ffts = tuple(n_ffts)
        self.discriminators = nn.ModuleList(STFTDiscriminator(n, channels) for n in self.n_ffts)

    def forward(self, wav: torch.Tensor) -> DiscriminatorOutput:
        _check_waveform(wav)
        return DiscriminatorOutput.merge(d(wav) for d in self.discriminators)


class Discriminator(nn.Module):
    """The codec's adversary: the multi-period and/or multi-scale STFT discriminators, as configured.

    Outputs list the period discriminators first, then the STFT ones, in the order of `names`.
    """

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        self.mpd = MultiPeriodDiscriminator(config.periods, config.channels) if config.use_mpd else None
        self.stft = MultiScaleSTFTDiscriminator(config.n_ffts, config.channels) if config.use_stft else None

    @property
    def names(self) -> list[str]:
        """One name per sub-discriminator, for logging its losses: `mpd_2`, ..., `stft_1024`, ..."""
        names = [f"mpd_{p}" for p in self.config.periods] if self.mpd is not None else []
        if self.stft is not None:
            names += [f"stft_{n}" for n in self.config.n_ffts]
        return names

    def forward(self, wav: torch.Tensor) -> DiscriminatorOutput:
        _check_waveform(wav)
        return DiscriminatorOutput.merge(d(wav) for d in (self.mpd, self.stft) if d is not None)

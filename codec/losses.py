"""Codec training losses as pure functions; the recipe weights them from its config and sums them.

`x` is the codec's output and `y` the real audio, both [B, 1, T]. Spectral losses run in float32
with autocast off: log-mel differences of well-trained codecs are far below bf16's resolution.
Mel filterbanks and windows are cached per (parameters, device, dtype), so nothing holds state.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchaudio.functional as AF

CLAMP_EPS = 1e-5  # the floor under mel magnitudes before the log, as DAC
MEL_DISTANCE_SAMPLE_RATE = 24000  # mel_distance's 1024 / 256 STFT is defined at this rate


def multiscale_mel_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    sample_rate: int,
    window_lengths: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048),
    n_mels: Sequence[int] = (5, 10, 20, 40, 80, 160, 320),
    *,
    log_weight: float = 1.0,
    mag_weight: float = 0.0,
    clamp_eps: float = CLAMP_EPS,
    f_min: float = 0.0,
    f_max: float | None = None,
) -> torch.Tensor:
    """DAC's multi-scale mel loss: at each scale, L1 between log10 mel magnitudes, optionally plus L1 between mels.

    Each scale is a Hann-windowed STFT with n_fft = window_length and hop = window_length // 4,
    mapped to `n_mels` Slaney mel bands (librosa's default, which DAC uses). The scales are
    summed, not averaged, as in DAC, so DAC's weight (15) carries over. DAC trains with
    `mag_weight=0`. A scale asking for more mel bands than its window has FFT bins is an error;
    bands narrower than one FFT bin (high `n_mels` at high rates) cover no bin and are dropped.
    Returns a scalar.
    """
    if len(window_lengths) != len(n_mels):
        raise ValueError(f"window_lengths has {len(window_lengths)} scales but n_mels has {len(n_mels)}")
    x, y = _check_pair(x, y)
    xy = torch.cat([x, y])  # [2B, 1, T]: one STFT per scale for both
    loss = x.new_zeros(())
    with torch.autocast(x.device.type, enabled=False):
        for window_length, mels in zip(window_lengths, n_mels):
            mel = _mel_magnitudes(xy, sample_rate, window_length, window_length // 4, mels, f_min, f_max)
            x_mel, y_mel = mel.chunk(2)  # each [B, 1, n_mels, frames]
            if log_weight:
                log_x, log_y = x_mel.clamp_min(clamp_eps).log10(), y_mel.clamp_min(clamp_eps).log10()
                loss = loss + log_weight * F.l1_loss(log_x, log_y)
            if mag_weight:
                loss = loss + mag_weight * F.l1_loss(x_mel, y_mel)
    return loss


def mel_distance(x: torch.Tensor, y: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Mean L1 between log10 mel spectrograms at one scale, for evaluation reports.

    80 Slaney mel bands from a 1024-sample STFT with hop 256 at 24 kHz; at other rates both are
    scaled with the sample rate (683 / 171 at 16 kHz), so windows last the same 42.7 ms. Returns a scalar.
    """
    x, y = _check_pair(x, y)
    n_fft = round(1024 * sample_rate / MEL_DISTANCE_SAMPLE_RATE)
    hop_length = round(256 * sample_rate / MEL_DISTANCE_SAMPLE_RATE)
    with torch.autocast(x.device.type, enabled=False):
        x_mel, y_mel = _mel_magnitudes(torch.cat([x, y]), sample_rate, n_fft, hop_length, 80, 0.0, None).chunk(2)
        return F.l1_loss(x_mel.clamp_min(CLAMP_EPS).log10(), y_mel.clamp_min(CLAMP_EPS).log10())


def waveform_l1_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between the waveforms. Returns a scalar."""
    x, y = _check_pair(x, y)
    return F.l1_loss(x, y)


def generator_adversarial_loss(fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Least-squares GAN loss for the generator: mean over sub-discriminators of mean((1 - D(x))^2).

    Least squares (HiFi-GAN, DAC) rather than hinge (EnCodec, Mimi): its gradient pulls every
    fake toward the "real" target in proportion to how far it is, with no dead zone where a
    fooled discriminator stops teaching, and both sides' targets (0 and 1) keep logits bounded.
    Averaging over the K sub-discriminators (EnCodec's 1/K) keeps the scale the same whichever
    discriminators a config enables; DAC sums them, so DAC's weight w corresponds to w * K here.
    Returns a scalar.
    """
    if not fake_logits:
        raise ValueError("fake_logits is empty: the discriminator returned no sub-discriminator logits")
    losses = [(1 - logits.float()).square().mean() for logits in fake_logits]
    return torch.stack(losses).mean()


def discriminator_adversarial_loss(
    real_logits: Sequence[torch.Tensor], fake_logits: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Least-squares GAN loss for the discriminator: mean over sub-discriminators of mean((1 - D(y))^2) + mean(D(x)^2).

    Real audio is pushed toward 1 and codec output toward 0; compute `fake_logits` on
    `x.detach()` so this loss does not train the codec. See `generator_adversarial_loss` for
    why least squares. Returns a scalar.
    """
    if len(real_logits) != len(fake_logits) or not real_logits:
        raise ValueError(
            f"got {len(real_logits)} real and {len(fake_logits)} fake logit maps: need the same, non-zero number"
        )
    losses = [
        (1 - real.float()).square().mean() + fake.float().square().mean()
        for real, fake in zip(real_logits, fake_logits)
    ]
    return torch.stack(losses).mean()


def feature_matching_loss(
    real_features: Sequence[Sequence[torch.Tensor]], fake_features: Sequence[Sequence[torch.Tensor]]
) -> torch.Tensor:
    """Relative feature matching (EnCodec): mean over every layer of every sub-discriminator of
    mean|fake - real| / mean|real|.

    Relative rather than DAC's plain L1 sum so that each layer counts the same whatever the
    size of its activations, which also drift as the discriminator trains. The real features
    are detached: this loss trains the codec only. Returns a scalar.
    """
    if len(real_features) != len(fake_features) or not real_features:
        raise ValueError(
            f"got features of {len(real_features)} real and {len(fake_features)} fake sub-discriminators: "
            "need the same, non-zero number"
        )
    losses = []
    for k, (real_layers, fake_layers) in enumerate(zip(real_features, fake_features)):
        if len(real_layers) != len(fake_layers):
            raise ValueError(
                f"sub-discriminator {k} has {len(real_layers)} real and {len(fake_layers)} fake feature maps"
            )
        for real, fake in zip(real_layers, fake_layers):
            real = real.detach().float()
            # The floor only guards against an all-zero layer; real activations are far larger.
            losses.append(F.l1_loss(fake.float(), real) / real.abs().mean().clamp_min(CLAMP_EPS))
    return torch.stack(losses).mean()


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two waveforms, checked to match, in at least float32."""
    if x.shape != y.shape:
        raise ValueError(f"x has shape {tuple(x.shape)} but y has {tuple(y.shape)}: they must match")
    dtype = torch.promote_types(x.dtype, torch.float32)
    return x.to(dtype), y.to(dtype)


def _mel_magnitudes(
    wav: torch.Tensor,
    sample_rate: int,
    n_fft: int,
    hop_length: int,
    n_mels: int,
    f_min: float,
    f_max: float | None,
) -> torch.Tensor:
    """Mel-scaled STFT magnitudes of `wav` [..., T] -> [..., n_mels', frames] (n_mels' drops empty bands)."""
    T = wav.shape[-1]
    if T <= n_fft // 2:
        raise ValueError(f"a waveform of {T} samples is too short for an STFT of {n_fft}: need more than {n_fft // 2}")
    window = _hann_window(n_fft, wav.device, wav.dtype)
    spec = AF.spectrogram(
        wav, pad=0, window=window, n_fft=n_fft, hop_length=hop_length, win_length=n_fft, power=1.0, normalized=False
    )  # [..., n_fft // 2 + 1, frames]
    fbank = _mel_filterbank(n_fft, n_mels, sample_rate, f_min, f_max, wav.device, wav.dtype)  # [F, n_mels']
    return torch.einsum("...ft,fm->...mt", spec, fbank)


# Cached tensors are built outside inference mode: one first built under torch.inference_mode
# (an evaluation pass) could otherwise never be saved for backward in a later training step.
@functools.lru_cache(maxsize=64)
def _hann_window(length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    with torch.inference_mode(False):
        return torch.hann_window(length, device=device, dtype=dtype)


@functools.lru_cache(maxsize=64)
def _mel_filterbank(
    n_fft: int,
    n_mels: int,
    sample_rate: int,
    f_min: float,
    f_max: float | None,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Slaney mel filterbank [n_fft // 2 + 1, n_mels'] without the bands that cover no FFT bin."""
    n_freqs = n_fft // 2 + 1
    f_max = sample_rate / 2 if f_max is None else f_max
    if n_mels > n_freqs:
        raise ValueError(
            f"n_mels={n_mels} exceeds the {n_freqs} FFT bins of a {n_fft}-sample window: use at most {n_freqs} mels"
        )
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(
            f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, f_max={f_max} at {sample_rate} Hz"
        )
    with torch.inference_mode(False), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchaudio warns about empty bands, which are dropped just below
        fbank = AF.melscale_fbanks(n_freqs, f_min, f_max, n_mels, sample_rate, norm="slaney", mel_scale="slaney")
        fbank = fbank[:, fbank.sum(dim=0) > 0]
        return fbank.to(device=device, dtype=dtype)

"""A frame-rate codec body: STFT → ConvNeXt encoder, ConvNeXt decoder → inverse STFT (Vocos, WavTokenizer).

SEANet runs its first and last layers at the sample rate. Here every layer runs at the frame
rate: the encoder reads the log-magnitude STFT whose hop is the codec's hop, and the decoder
predicts one STFT frame (log-magnitude and phase) per latent frame and overlap-adds them back
into a waveform. A step costs a fraction of SEANet's, so a CPU can train many more of them.

Frame f of both the analysis and the synthesis STFT is centred on samples
[f * hop, (f + 1) * hop): the signal is padded by (n_fft - hop) / 2 on each side ("same"
padding), so T = F * hop samples give exactly F frames and F frames give back T samples.
Both transforms see (n_fft - hop) / 2 samples into the future, so this body is never causal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codec.pitch import HarmonicSource

LOG_FLOOR = 1e-5  # magnitude floor before the log of the encoder's input spectrum
MAX_LOG_MAGNITUDE = 7.0  # ceiling on the decoder's predicted log-magnitude (|S| <= e^7 ≈ 1100), as Vocos clips


class ConvNeXtBlock(nn.Module):
    """Depthwise convolution over time, LayerNorm, pointwise MLP, scaled residual (ConvNeXt, as in Vocos)."""

    def __init__(self, dim: int, hidden_dim: int, layer_scale: float, kernel_size: int = 7):
        super().__init__()
        self.depthwise = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden_dim)
        self.down = nn.Linear(hidden_dim, dim)
        self.scale = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, D, T]
        y = self.depthwise(x).transpose(1, 2)  # [B, T, D]
        y = self.down(F.gelu(self.up(self.norm(y))))
        return x + (self.scale * y).transpose(1, 2)


class ConvNeXtStack(nn.Module):
    """[B, c_in, T] -> [B, D, T]: an embedding convolution, then `depth` ConvNeXt blocks, each LayerNormed."""

    def __init__(self, c_in: int, dim: int, depth: int):
        super().__init__()
        self.embed = nn.Conv1d(c_in, dim, kernel_size=7, padding=3)
        self.norm_in = nn.LayerNorm(dim)
        # A small residual scale per block keeps the deep stack near identity at the start (Vocos: 1 / depth).
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, 3 * dim, layer_scale=1 / depth) for _ in range(depth))
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """extra [B, D, T], if given, is added to the embedded input (the decoder's harmonic source)."""
        x = self.embed(x) if extra is None else self.embed(x) + extra
        x = self.norm_in(x.transpose(1, 2)).transpose(1, 2)  # [B, D, T]
        for block in self.blocks:
            x = block(x)
        return self.norm_out(x.transpose(1, 2)).transpose(1, 2)


class STFTEncoder(nn.Module):
    """wav [B, 1, F * hop] -> latent [B, latent_dim, F] from the log-magnitude STFT."""

    def __init__(self, n_fft: int, hop_length: int, dim: int, depth: int, latent_dim: int):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.body = ConvNeXtStack(n_fft // 2 + 1, dim, depth)
        self.project = nn.Conv1d(dim, latent_dim, kernel_size=1)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        B, _, T = wav.shape
        if T % self.hop_length:
            raise ValueError(f"the STFT encoder needs whole frames: {T} samples is not a multiple of {self.hop_length}")
        pad = (self.n_fft - self.hop_length) // 2
        x = F.pad(wav, (pad, pad), mode="reflect" if T > pad else "constant").squeeze(1)  # [B, T + n_fft - hop]
        with torch.autocast(wav.device.type, enabled=False):
            spec = torch.stft(
                x.float(), self.n_fft, self.hop_length, window=self.window, center=False, return_complex=True
            )  # [B, n_fft // 2 + 1, F]
            log_magnitude = spec.abs().clamp_min(LOG_FLOOR).log()
        return self.project(self.body(log_magnitude.to(wav.dtype)))  # [B, latent_dim, F]


class ISTFTDecoder(nn.Module):
    """latent [B, latent_dim, F] -> wav [B, 1, F * hop]: ConvNeXt → log-magnitude and phase → overlap-add."""

    def __init__(self, n_fft: int, hop_length: int, dim: int, depth: int, latent_dim: int, sample_rate: int = 0):
        """sample_rate > 0 gives the decoder a harmonic source for an F0 stream (codec/pitch.py)."""
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.body = ConvNeXtStack(latent_dim, dim, depth)
        self.head = nn.Linear(dim, 2 * (n_fft // 2 + 1))  # log-magnitude and phase of every bin
        self.source = HarmonicSource(n_fft, hop_length, sample_rate, dim) if sample_rate > 0 else None

    def forward(self, latent: torch.Tensor, f0: torch.Tensor | None = None) -> torch.Tensor:
        """latent [B, latent_dim, F], F0 in Hz [B, F] (0: unvoiced; None: no pitch stream) -> wav [B, 1, F * hop]."""
        source_input, comb = self.source(f0) if f0 is not None and self.source is not None else (None, None)
        x = self.head(self.body(latent, source_input).transpose(1, 2)).float()  # [B, F, 2 * n_bins]
        log_magnitude, phase = x.transpose(1, 2).chunk(2, dim=1)  # each [B, n_bins, F]
        if comb is not None:
            log_magnitude = log_magnitude + comb  # source-filter: the harmonics at the coded F0, shaped
        magnitude = log_magnitude.clamp(max=MAX_LOG_MAGNITUDE).exp()
        # The phase head's output is an angle: cos and sin of it wrap any value onto the circle.
        spec = torch.polar(magnitude, phase)  # [B, n_bins, F] complex
        with torch.autocast(latent.device.type, enabled=False):
            return self.overlap_add(spec).unsqueeze(1)  # [B, 1, F * hop]

    def overlap_add(self, spec: torch.Tensor) -> torch.Tensor:
        """Inverse STFT with "same" padding: spec [B, n_bins, F] -> wav [B, F * hop].

        torch.istft cannot trim an uncentred transform to F * hop samples without zeroing the
        edges, so the frames are windowed and summed here, then divided by the summed squared
        window (the least-squares inverse of the analysis STFT).
        """
        B, _, n_frames = spec.shape
        frames = torch.fft.irfft(spec, n=self.n_fft, dim=1) * self.window[:, None]  # [B, n_fft, F]
        length = (n_frames - 1) * self.hop_length + self.n_fft
        fold = dict(output_size=(1, length), kernel_size=(1, self.n_fft), stride=(1, self.hop_length))
        wav = F.fold(frames, **fold)[:, 0, 0]  # [B, length]
        envelope = F.fold(self.window.square()[None, :, None].expand(1, -1, n_frames), **fold)[0, 0, 0]  # [length]
        pad = (self.n_fft - self.hop_length) // 2
        wav, envelope = wav[:, pad : length - pad], envelope[pad : length - pad]
        return wav / envelope.clamp_min(1e-8)

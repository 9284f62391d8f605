"""SEANet-style convolutional encoder and decoder (the EnCodec / DAC family).

The encoder stacks blocks of dilated residual units followed by a strided convolution that
halves the time resolution by `stride` and doubles the channels; the decoder mirrors it with
transposed convolutions. With `causal=True` every convolution looks only at the past, so the
output at sample t never depends on input after t (what streaming decoding needs).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class Snake(nn.Module):
    """x + sin²(αx)/α with a learned α per channel: a periodic inductive bias for audio (BigVGAN, DAC)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.alpha * x).sin().pow(2) / (self.alpha + 1e-9)


def activation(name: str, channels: int) -> nn.Module:
    if name == "snake":
        return Snake(channels)
    if name == "elu":
        return nn.ELU()
    raise ValueError(f"unknown activation {name!r}; use 'elu' or 'snake'")


class Conv1d(nn.Module):
    """Weight-normed 1-D convolution whose padding keeps `T_out = T_in / stride` (causal: all on the left)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, dilation: int = 1, causal: bool = False):
        super().__init__()
        self.conv = weight_norm(nn.Conv1d(c_in, c_out, kernel, stride=stride, dilation=dilation))
        pad = dilation * (kernel - 1) + 1 - stride
        self.pad = (pad, 0) if causal else (pad // 2, pad - pad // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.pad(x, self.pad))


class ConvTranspose1d(nn.Module):
    """Weight-normed transposed convolution with `T_out = T_in * stride` (causal: the overhang trimmed on the right)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, causal: bool = False):
        super().__init__()
        self.conv = weight_norm(nn.ConvTranspose1d(c_in, c_out, kernel, stride=stride))
        trim = kernel - stride
        self.trim = (0, trim) if causal else (trim // 2, trim - trim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y[..., self.trim[0] : y.shape[-1] - self.trim[1]]


class ResidualUnit(nn.Module):
    def __init__(self, channels: int, dilation: int, act: str, causal: bool):
        super().__init__()
        self.block = nn.Sequential(
            activation(act, channels),
            Conv1d(channels, channels // 2, kernel=7, dilation=dilation, causal=causal),
            activation(act, channels // 2),
            Conv1d(channels // 2, channels, kernel=1, causal=causal),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class LSTMBottleneck(nn.Module):
    """A unidirectional LSTM with a skip connection at the bottleneck (EnCodec): longer context, still causal."""

    def __init__(self, channels: int, num_layers: int):
        super().__init__()
        self.lstm = nn.LSTM(channels, channels, num_layers=num_layers, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, D, T]
        y, _ = self.lstm(x.transpose(1, 2))
        return x + y.transpose(1, 2)


def _block_channels(channels: int, n_blocks: int) -> list[int]:
    return [channels * 2**i for i in range(n_blocks + 1)]


class Encoder(nn.Module):
    """wav [B, 1, T] -> latent [B, D, T / prod(strides)]."""

    def __init__(
        self,
        channels: int,
        strides: tuple[int, ...],
        latent_dim: int,
        dilations: tuple[int, ...],
        act: str,
        causal: bool,
        lstm_layers: int,
    ):
        super().__init__()
        widths = _block_channels(channels, len(strides))
        layers: list[nn.Module] = [Conv1d(1, widths[0], kernel=7, causal=causal)]
        for c_in, c_out, stride in zip(widths, widths[1:], strides):
            layers += [ResidualUnit(c_in, d, act, causal) for d in dilations]
            layers += [activation(act, c_in), Conv1d(c_in, c_out, kernel=2 * stride, stride=stride, causal=causal)]
        if lstm_layers:
            layers.append(LSTMBottleneck(widths[-1], lstm_layers))
        layers += [activation(act, widths[-1]), Conv1d(widths[-1], latent_dim, kernel=3, causal=causal)]
        self.layers = nn.Sequential(*layers)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.layers(wav)


class Decoder(nn.Module):
    """latent [B, D, F] -> wav [B, 1, F * prod(strides)]."""

    def __init__(
        self,
        channels: int,
        strides: tuple[int, ...],
        latent_dim: int,
        dilations: tuple[int, ...],
        act: str,
        causal: bool,
        lstm_layers: int,
    ):
        super().__init__()
        widths = _block_channels(channels, len(strides))[::-1]
        layers: list[nn.Module] = [Conv1d(latent_dim, widths[0], kernel=7, causal=causal)]
        if lstm_layers:
            layers.append(LSTMBottleneck(widths[0], lstm_layers))
        for c_in, c_out, stride in zip(widths, widths[1:], reversed(strides)):
            layers += [activation(act, c_in), ConvTranspose1d(c_in, c_out, kernel=2 * stride, stride=stride, causal=causal)]
            layers += [ResidualUnit(c_out, d, act, causal) for d in dilations]
        layers += [activation(act, widths[-1]), Conv1d(widths[-1], 1, kernel=7, causal=causal)]
        self.layers = nn.Sequential(*layers)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.layers(latent)

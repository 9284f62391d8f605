"""Echo's neural codec: encoder → residual vector quantizer → decoder.

Two bodies around the same quantizer (`CodecConfig.architecture`):
- "seanet": strided convolutions from the waveform down to the frames and back (EnCodec, DAC);
- "istft": ConvNeXt blocks at the frame rate between an STFT and an inverse STFT (Vocos,
  WavTokenizer), far cheaper a step; see `codec/istft.py`.

    codes = codec.encode(wav)    # wav [B, 1, T] at codec.sample_rate -> codes [B, K, F]
    wav = codec.decode(codes)    # codes [B, K', F], K' <= K -> wav [B, 1, F * hop_length]

A directory written by `save_pretrained` holds `config.json` and `model.safetensors`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from codec.interface import Codec, CodecIdentity, config_hash
from codec.istft import ISTFTDecoder, STFTEncoder
from codec.quantizer import QuantizerOutput, ResidualVectorQuantizer
from codec.seanet import Decoder, Encoder
from data.pretrained import config_from_dict, load_model, read_config, resolve_pretrained, save_model

# What `to_dict` leaves out for each architecture: the other body's fields. A SEANet config (the
# default) leaves out `architecture` too, so it writes exactly what it wrote before the istft
# option existed and keeps its config hash, which every LM and token shard is checked against.
UNUSED_FIELDS = {
    "seanet": ("architecture", "n_fft", "width", "depth"),
    "istft": ("channels", "dilations", "activation", "lstm_layers"),
}
ARCHITECTURES = tuple(UNUSED_FIELDS)


@dataclass
class CodecConfig:
    sample_rate: int = 24000
    architecture: str = "seanet"  # or "istft": ConvNeXt at the frame rate around an STFT (never causal)
    channels: int = 32  # seanet: width of the first encoder block; doubles at every stride
    # The hop length is the product of the strides for both bodies: 320 samples = 75 Hz at 24 kHz.
    # SEANet downsamples by each stride in turn; the istft body needs only the product (e.g. [320]).
    strides: tuple[int, ...] = (2, 4, 5, 8)
    dilations: tuple[int, ...] = (1, 3, 9)  # seanet
    n_fft: int = 1024  # istft: STFT size of the encoder's input and the decoder's output (>= hop length)
    width: int = 256  # istft: ConvNeXt width D of the encoder and of the decoder
    depth: int = 8  # istft: ConvNeXt blocks in the encoder and in the decoder
    latent_dim: int = 128
    n_q: int = 8
    codebook_size: int = 1024
    activation: str = "snake"  # seanet: or "elu"
    causal: bool = False
    lstm_layers: int = 0  # seanet: LSTM at the bottleneck (0: none)
    quantizer_dropout: float = 0.5  # share of items trained with a random number of codebooks
    ema_decay: float = 0.99
    dead_code_threshold: float = 0.01  # relative to the usage a code would have if all were used equally
    kmeans_init: bool = True
    model_type: str = field(default="echo_codec", init=False)

    def __post_init__(self) -> None:
        self.strides = tuple(self.strides)
        self.dilations = tuple(self.dilations)
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if not self.strides or any(s < 1 for s in self.strides):
            raise ValueError(f"strides must be a non-empty list of positive integers, got {self.strides}")
        if self.sample_rate % self.hop_length:
            raise ValueError(
                f"sample_rate {self.sample_rate} is not a multiple of the hop length {self.hop_length} "
                f"(the product of strides {self.strides}); the frame rate would not be whole"
            )
        if self.n_q < 1:
            raise ValueError(f"n_q must be at least 1, got {self.n_q}")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be at least 2, got {self.codebook_size}")
        if not 0.0 <= self.quantizer_dropout <= 1.0:
            raise ValueError(f"quantizer_dropout is a probability in [0, 1], got {self.quantizer_dropout}")
        if self.architecture == "seanet":
            self._check_seanet()
        else:
            self._check_istft()

    def _check_seanet(self) -> None:
        if self.channels < 2 or self.channels % 2:
            raise ValueError(f"channels must be an even number >= 2 (residual units halve it), got {self.channels}")
        if self.activation not in ("snake", "elu"):
            raise ValueError(f"activation must be 'snake' or 'elu', got {self.activation!r}")

    def _check_istft(self) -> None:
        hop = self.hop_length
        if self.causal:
            raise ValueError(
                "causal=True is not possible with architecture='istft': its STFT and overlap-add see "
                f"(n_fft - hop) / 2 = {(self.n_fft - hop) // 2} samples ahead; use architecture='seanet' to stream"
            )
        if self.n_fft < hop or (self.n_fft - hop) % 2:
            raise ValueError(
                f"n_fft must be at least the hop length {hop} (the product of strides) and differ from it by an "
                f"even number, so that frames tile the signal; got n_fft={self.n_fft}"
            )
        if self.width < 1 or self.depth < 1:
            raise ValueError(f"width and depth must be positive, got width={self.width}, depth={self.depth}")

    @property
    def hop_length(self) -> int:
        return math.prod(self.strides)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def bitrate(self) -> float:
        """Bits per second with all codebooks."""
        return self.frame_rate * self.n_q * math.log2(self.codebook_size)

    def to_dict(self) -> dict[str, Any]:
        """The fields this architecture reads (the other body's are left out), as JSON values."""
        d = asdict(self)
        d["strides"], d["dilations"] = list(self.strides), list(self.dilations)
        return {k: v for k, v in d.items() if k not in UNUSED_FIELDS[self.architecture]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CodecConfig":
        return config_from_dict(cls, d)


@dataclass
class CodecOutput:
    wav: torch.Tensor | None  # [B, 1, T] reconstruction, trimmed to the input length (None: not decoded)
    codes: torch.Tensor  # [B, K, F]
    commitment_loss: torch.Tensor  # scalar
    quantizer: QuantizerOutput  # everything the quantizer reports (usage, perplexity, codebooks used)


class EchoCodec(Codec):
    def __init__(self, config: CodecConfig):
        super().__init__()
        self.config = config
        if config.architecture == "istft":
            encoder, decoder = STFTEncoder, ISTFTDecoder
            body = dict(n_fft=config.n_fft, hop_length=config.hop_length, dim=config.width, depth=config.depth,
                        latent_dim=config.latent_dim)  # fmt: skip
        else:
            encoder, decoder = Encoder, Decoder
            body = dict(channels=config.channels, strides=config.strides, latent_dim=config.latent_dim,
                        dilations=config.dilations, act=config.activation, causal=config.causal,
                        lstm_layers=config.lstm_layers)  # fmt: skip
        self.encoder = encoder(**body)
        self.quantizer = ResidualVectorQuantizer(
            dim=config.latent_dim,
            n_q=config.n_q,
            codebook_size=config.codebook_size,
            quantizer_dropout=config.quantizer_dropout,
            decay=config.ema_decay,
            dead_code_threshold=config.dead_code_threshold,
            kmeans_init=config.kmeans_init,
        )
        self.decoder = decoder(**body)

    sample_rate = property(lambda self: self.config.sample_rate)
    frame_rate = property(lambda self: self.config.frame_rate)
    n_q = property(lambda self: self.config.n_q)
    codebook_size = property(lambda self: self.config.codebook_size)

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def identity(self) -> CodecIdentity:
        return CodecIdentity(
            name="echo",
            config_hash=config_hash(self.config.to_dict()),
            sample_rate=self.sample_rate,
            frame_rate=self.frame_rate,
            n_q=self.n_q,
            codebook_size=self.codebook_size,
        )

    def _pad(self, wav: torch.Tensor) -> torch.Tensor:
        """Right-pad to whole frames: F = ceil(T / hop_length)."""
        extra = -wav.shape[-1] % self.hop_length
        return torch.nn.functional.pad(wav, (0, extra))

    def forward(self, wav: torch.Tensor, n_q: int | None = None, decode: bool = True) -> CodecOutput:
        """Training path: reconstruct `wav` [B, 1, T] through the quantizer (with quantizer dropout in train mode).

        decode=False stops after the quantizer (`wav` is then None): for losses on the codes alone.
        """
        self.check_wav(wav)
        T = wav.shape[-1]
        latent = self.encoder(self._pad(wav))  # [B, D, F]
        q = self.quantizer(latent, n_q=n_q)
        out = self.decoder(q.z_q)[..., :T] if decode else None  # [B, 1, T]
        return CodecOutput(wav=out, codes=q.codes, commitment_loss=q.commitment_loss, quantizer=q)

    @torch.no_grad()
    def encode(self, wav: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """wav [B, 1, T] -> codes LongTensor [B, K, ceil(T / hop_length)]."""
        self.check_wav(wav)
        latent = self.encoder(self._pad(wav))
        return self.quantizer.encode(latent, n_q=n_q)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, F] (the first K codebooks) -> wav [B, 1, F * hop_length]."""
        self.check_codes(codes)
        return self.decoder(self.quantizer.decode(codes))

    @torch.no_grad()
    def decode_expected(self, probabilities: torch.Tensor) -> torch.Tensor:
        """probabilities [B, K, F, C] -> wav [B, 1, F * hop_length], each codebook's expected code vector decoded."""
        self.check_probabilities(probabilities)
        return self.decoder(self.quantizer.decode_expected(probabilities))

    def save_pretrained(self, directory: str | Path) -> Path:
        return save_model(directory, self.config.to_dict(), self)

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | Path, device: str | torch.device = "cpu") -> "EchoCodec":
        """Load a directory written by `save_pretrained` (or a hub id), in eval mode."""
        directory = resolve_pretrained(path_or_hub_id, what="codec")
        config = read_config(directory, CodecConfig, loader=cls.__name__)
        return load_model(lambda: cls(config), directory, device)

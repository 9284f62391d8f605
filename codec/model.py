"""Echo's neural codec: encoder → residual vector quantizer → decoder.

Two bodies around the same quantizer (`CodecConfig.architecture`):
- "seanet": strided convolutions from the waveform down to the frames and back (EnCodec, DAC);
- "istft": ConvNeXt blocks at the frame rate between an STFT and an inverse STFT (Vocos,
  WavTokenizer), far cheaper a step; see `codec/istft.py`.

    codes = codec.encode(wav)    # wav [B, 1, T] at codec.sample_rate -> codes [B, K, F]
    wav = codec.decode(codes)    # codes [B, K', F], K' <= K -> wav [B, 1, F * hop_length]

With `pitch_bins` > 0 (istft body) the codes carry F0 as well (`codec/pitch.py`): row 2 of the
codes is the pitch stream, rows 1, 3, 4, ... the RVQ's codebooks, so that K = n_q + 1 and every
prefix of the rows is a rate: codebook 1 alone, then with the pitch, then each further codebook.

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
from codec.pitch import dequantize_f0, frame_f0, quantize_f0
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
    pitch_bins: int = 0  # istft: > 0 codes F0 beside the RVQ in that many codes (0 for unvoiced); 0: no pitch stream
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
        if self.pitch_bins and not 3 <= self.pitch_bins <= self.codebook_size:
            raise ValueError(f"pitch_bins must be 0 (no pitch stream) or between 3 and codebook_size "
                             f"{self.codebook_size}, so that its codes share the LM's code space; got {self.pitch_bins}")
        if self.pitch_bins and self.architecture != "istft":
            raise ValueError("pitch_bins needs architecture='istft': the harmonic source feeds its STFT-frame decoder")
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
        """Bits per second with all codebooks (and the pitch stream)."""
        return self.frame_rate * self.bits_per_frame(self.n_q + (1 if self.pitch_bins else 0))

    def bits_per_frame(self, rows: int) -> float:
        """Bits of the first `rows` rows of the codes: codebooks of log2(codebook_size) bits, and the pitch
        stream's log2(pitch_bins) if row 2 is among them."""
        pitch = self.pitch_bins > 0 and rows >= 2
        return (rows - pitch) * math.log2(self.codebook_size) + (math.log2(self.pitch_bins) if pitch else 0.0)

    def to_dict(self) -> dict[str, Any]:
        """The fields this architecture reads (the other body's are left out), as JSON values. A codec
        without a pitch stream leaves `pitch_bins` out, so its config hash is the one it had before."""
        d = asdict(self)
        d["strides"], d["dilations"] = list(self.strides), list(self.dilations)
        unused = UNUSED_FIELDS[self.architecture] + (() if self.pitch_bins else ("pitch_bins",))
        return {k: v for k, v in d.items() if k not in unused}

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
        decoder_extra = {}
        if config.architecture == "istft":
            encoder, decoder = STFTEncoder, ISTFTDecoder
            body = dict(n_fft=config.n_fft, hop_length=config.hop_length, dim=config.width, depth=config.depth,
                        latent_dim=config.latent_dim)  # fmt: skip
            decoder_extra = dict(sample_rate=config.sample_rate if config.pitch_bins else 0)
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
        self.decoder = decoder(**body, **decoder_extra)

    sample_rate = property(lambda self: self.config.sample_rate)
    frame_rate = property(lambda self: self.config.frame_rate)
    codebook_size = property(lambda self: self.config.codebook_size)

    @property
    def n_q(self) -> int:
        """Rows of the codes: the RVQ's codebooks, and the pitch stream if there is one."""
        return self.config.n_q + (1 if self.config.pitch_bins else 0)

    def bits_per_frame(self, n_q: int) -> float:
        return self.config.bits_per_frame(n_q)

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
            pitch_bins=self.config.pitch_bins,
        )

    def _pad(self, wav: torch.Tensor) -> torch.Tensor:
        """Right-pad to whole frames: F = ceil(T / hop_length)."""
        extra = -wav.shape[-1] % self.hop_length
        return torch.nn.functional.pad(wav, (0, extra))

    def _rows(self, n_q: int | None) -> tuple[int, bool]:
        """What the first `n_q` rows of the codes hold (all rows when None): (RVQ codebooks, the pitch stream?)."""
        rows = self.n_q if n_q is None else n_q
        if not 1 <= rows <= self.n_q:
            raise ValueError(f"n_q must lie in 1..{self.n_q} (rows of this codec's codes), got {n_q}")
        pitch = self.config.pitch_bins > 0 and rows >= 2
        return rows - pitch, pitch

    def _pitch_codes(self, padded: torch.Tensor) -> torch.Tensor:
        """padded wav [B, 1, F * hop] -> pitch codes LongTensor [B, F]."""
        return quantize_f0(frame_f0(padded, self.sample_rate, self.hop_length), self.config.pitch_bins)

    def _with_pitch(self, rvq_codes: torch.Tensor, pitch_codes: torch.Tensor) -> torch.Tensor:
        """The codes' row order: codebook 1, the pitch stream, codebooks 2.."""
        return torch.cat([rvq_codes[:, :1], pitch_codes[:, None], rvq_codes[:, 1:]], dim=1)

    def _split(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """codes [B, K, F] -> (RVQ codes, F0 in Hz [B, F] or None where the rows stop before the pitch stream)."""
        if not self.config.pitch_bins or codes.shape[1] < 2:
            return codes, None
        pitch = codes[:, 1]
        if pitch.max() >= self.config.pitch_bins:
            raise ValueError(f"row 2 of these codes is the pitch stream, whose codes lie in 0..{self.config.pitch_bins - 1}; "
                             f"got {int(pitch.max())}: were they made by this codec?")
        rvq = torch.cat([codes[:, :1], codes[:, 2:]], dim=1)
        return rvq, dequantize_f0(pitch, self.config.pitch_bins)

    def forward(self, wav: torch.Tensor, n_q: int | None = None, decode: bool = True) -> CodecOutput:
        """Training path: reconstruct `wav` [B, 1, T] through the quantizer (with quantizer dropout in train mode).

        decode=False stops after the quantizer (`wav` is then None): for losses on the codes alone.
        With a pitch stream, items the quantizer dropout leaves one codebook decode without the pitch
        half the time, so that codebook 1 alone still decodes.
        """
        self.check_wav(wav)
        T = wav.shape[-1]
        padded = self._pad(wav)
        latent = self.encoder(padded)  # [B, D, F]
        layers, with_pitch = self._rows(n_q)
        q = self.quantizer(latent, n_q=layers)
        codes, f0 = q.codes, None
        if with_pitch:
            pitch = self._pitch_codes(padded)
            codes = self._with_pitch(q.codes, pitch)
            f0 = dequantize_f0(pitch, self.config.pitch_bins)
            if self.training:
                one_layer = ~q.layer_mask[:, 1] if layers > 1 else torch.ones_like(q.layer_mask[:, 0])
                dropped = one_layer & (torch.rand(one_layer.shape, device=wav.device) < 0.5)
                f0 = torch.where(dropped[:, None], torch.zeros_like(f0), f0)  # 0 everywhere: no harmonic source
        out = self._decode_latent(q.z_q, f0)[..., :T] if decode else None  # [B, 1, T]
        return CodecOutput(wav=out, codes=codes, commitment_loss=q.commitment_loss, quantizer=q)

    def _decode_latent(self, z_q: torch.Tensor, f0: torch.Tensor | None) -> torch.Tensor:
        return self.decoder(z_q) if f0 is None else self.decoder(z_q, f0)

    @torch.no_grad()
    def encode(self, wav: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """wav [B, 1, T] -> codes LongTensor [B, K, ceil(T / hop_length)], K = n_q rows (all when None)."""
        self.check_wav(wav)
        padded = self._pad(wav)
        layers, with_pitch = self._rows(n_q)
        codes = self.quantizer.encode(self.encoder(padded), n_q=layers)
        if with_pitch:
            codes = self._with_pitch(codes, self._pitch_codes(padded))
        return codes

    @torch.no_grad()
    def decode_unquantized(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [B, 1, T] -> wav [B, 1, F * hop_length] decoded from the encoder's latent as it is, without the
        quantizer (the pitch stream's F0 coded as always): what the encoder and decoder keep of the recording,
        the codebooks' loss aside (recipes/diagnose_codec.py)."""
        self.check_wav(wav)
        padded = self._pad(wav)
        f0 = dequantize_f0(self._pitch_codes(padded), self.config.pitch_bins) if self.config.pitch_bins else None
        return self._decode_latent(self.encoder(padded), f0)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, F] (the first K rows) -> wav [B, 1, F * hop_length]."""
        self.check_codes(codes)
        rvq, f0 = self._split(codes)
        return self._decode_latent(self.quantizer.decode(rvq), f0)

    @torch.no_grad()
    def decode_expected(self, probabilities: torch.Tensor) -> torch.Tensor:
        """probabilities [B, K, F, C] -> wav [B, 1, F * hop_length], each codebook's expected code vector decoded
        (the pitch stream's most likely code among its `pitch_bins`: an average of two F0s is neither)."""
        self.check_probabilities(probabilities)
        f0 = None
        if self.config.pitch_bins and probabilities.shape[1] >= 2:
            f0 = dequantize_f0(probabilities[:, 1, :, : self.config.pitch_bins].argmax(-1), self.config.pitch_bins)
            probabilities = torch.cat([probabilities[:, :1], probabilities[:, 2:]], dim=1)
        return self._decode_latent(self.quantizer.decode_expected(probabilities), f0)

    def save_pretrained(self, directory: str | Path) -> Path:
        return save_model(directory, self.config.to_dict(), self)

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | Path, device: str | torch.device = "cpu") -> "EchoCodec":
        """Load a directory written by `save_pretrained` (or a hub id), in eval mode."""
        directory = resolve_pretrained(path_or_hub_id, what="codec")
        config = read_config(directory, CodecConfig, loader=cls.__name__)
        return load_model(lambda: cls(config), directory, device)

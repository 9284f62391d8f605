"""What every codec offers the rest of Echo.

Two implementations sit behind this interface: Echo's own RVQ codec (`codec.model.EchoCodec`)
and pretrained EnCodec through transformers (`codec.encodec.EncodecCodec`); `codec.loading.load_codec`
picks one by a directory's model_type. The LM never knows which one made its tokens; it stores
the codec's `identity` and refuses tokens from another codec.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class CodecIdentity:
    """Everything that must match between the codec that made tokens and the LM that reads them."""

    name: str  # "echo" or "encodec"
    config_hash: str  # of the codec's configuration (not its weights: fine-tuning keeps the token space)
    sample_rate: int
    frame_rate: float
    n_q: int
    codebook_size: int
    pitch_bins: int = 0  # > 0: row 2 of the codes is F0 in that many codes (codec/pitch.py), counted in n_q

    def to_dict(self) -> dict[str, Any]:
        """Without `pitch_bins` when there is no pitch stream: such identities read as they did before it."""
        d = asdict(self)
        if not self.pitch_bins:
            del d["pitch_bins"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CodecIdentity":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d or k != "pitch_bins"})

    def check_compatible(self, other: "CodecIdentity", what: str = "these tokens") -> None:
        """Raise ValueError naming every field where `other` (e.g. a shard's codec) differs from `self`."""
        diffs = [
            f"{name}: {getattr(self, name)!r} != {getattr(other, name)!r}"
            for name in self.__dataclass_fields__
            if getattr(self, name) != getattr(other, name)
        ]
        if diffs:
            raise ValueError(
                f"{what} come from a different codec ({'; '.join(diffs)}); "
                "re-tokenize the corpus with the codec this model was trained with"
            )


def config_hash(config: dict[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable configuration."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class Codec(nn.Module):
    """Base class: `encode(wav [B, 1, T]) -> codes [B, K, F]`, `decode(codes) -> wav [B, 1, T]`."""

    sample_rate: int
    frame_rate: float
    n_q: int
    codebook_size: int

    @property
    def identity(self) -> CodecIdentity:
        raise NotImplementedError

    @property
    def hop_length(self) -> int:
        """Audio samples per codec frame."""
        return round(self.sample_rate / self.frame_rate)

    def bits_per_frame(self, n_q: int) -> float:
        """Bits a frame of the first `n_q` rows of the codes takes."""
        return n_q * math.log2(self.codebook_size)

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode_expected(self, probabilities: torch.Tensor) -> torch.Tensor:
        """probabilities [B, K, F, C] over the codes of the first K codebooks -> wav [B, 1, F * hop_length].

        Each codebook contributes the probability-weighted mean of its code vectors: the
        least-squares guess of its vector when the code is uncertain (the NAR model's residual
        codebooks). One-hot distributions give `decode`'s audio.
        """
        raise NotImplementedError

    def save_pretrained(self, directory: str | Path) -> Path:
        raise NotImplementedError

    def check_wav(self, wav: torch.Tensor) -> None:
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"codec.encode expects mono audio [B, 1, T], got shape {tuple(wav.shape)}")
        if wav.shape[-1] == 0:
            raise ValueError("codec.encode got empty audio (T = 0)")

    def check_codes(self, codes: torch.Tensor) -> None:
        if codes.dim() != 3:
            raise ValueError(f"codec.decode expects codes [B, K, F], got shape {tuple(codes.shape)}")
        if not 1 <= codes.shape[1] <= self.n_q:
            raise ValueError(f"codec.decode got {codes.shape[1]} codebooks; this codec has 1 to {self.n_q}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]"
            )

    def check_probabilities(self, probabilities: torch.Tensor) -> None:
        if probabilities.dim() != 4 or probabilities.shape[-1] != self.codebook_size:
            raise ValueError(f"codec.decode_expected expects probabilities [B, K, F, {self.codebook_size}], "
                             f"got shape {tuple(probabilities.shape)}")
        if not 1 <= probabilities.shape[1] <= self.n_q:
            raise ValueError(f"codec.decode_expected got {probabilities.shape[1]} codebooks; this codec has "
                             f"1 to {self.n_q}")
        if not probabilities.is_floating_point():
            raise TypeError(f"codec.decode_expected expects float probabilities, got {probabilities.dtype}")


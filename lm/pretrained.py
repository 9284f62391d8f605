"""What the AR and NAR models share: the config fields, save/load, and the identity checks.

A model directory holds `config.json` (the config with its `model_type`) and
`model.safetensors`. The config records the codec whose tokens the model reads
(`codec`, a `CodecIdentity` dict) and the text vocabulary it was trained with (`text_vocab`,
`text_vocab_identity(vocab.to_dict())`); `from_pretrained(..., expect_codec=, expect_text_vocab=)`
refuses a model trained with another codec or vocabulary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from codec.interface import CodecIdentity, config_hash
from data.pretrained import config_from_dict, load_model, read_config, resolve_pretrained, save_model
from lm.transformer import FFN_KINDS


def text_vocab_identity(vocab: dict[str, Any]) -> str:
    """The identity of a text vocabulary from its JSON form (`Vocabulary.to_dict()`): size + hash."""
    return f"{vocab.get('kind', 'text')}-{vocab.get('size', len(vocab.get('symbols', [])))}-{config_hash(vocab)}"


@dataclass
class LMConfig:
    """Fields common to `ARConfig` (lm/ar.py) and `NARConfig` (lm/nar.py).

    Sizes default to the VALL-E paper's (12 layers, 16 heads, width 1024, FFN 4096). The
    `corpus_fields` come from the tokens a model is trained on (their codec and text vocabulary):
    recipes/train_lm.py sets them, the rest is the model's to choose.
    """

    text_vocab_size: int = 256  # phoneme ids lie in [0, text_vocab_size)
    text_pad_id: int = 0
    codebook_size: int = 1024  # C: codes lie in [0, C)
    n_q: int = 8  # K: codebooks of the codec
    d_model: int = 1024
    n_heads: int = 16
    n_layers: int = 12
    ffn_dim: int = 4096
    ffn: str = "gelu"  # or "swiglu"
    dropout: float = 0.1  # on the embeddings and on the attention's and the FFN's outputs
    attention_dropout: float = 0.0  # on the attention probabilities (README: Dropout on the attention probabilities)
    codec: dict[str, Any] | None = None  # CodecIdentity.to_dict() of the codec that made the tokens
    text_vocab: str | None = None  # text_vocab_identity(...) of the phoneme vocabulary

    model_type: ClassVar[str] = "echo_lm"
    corpus_fields: ClassVar[tuple[str, ...]] = ("text_vocab_size", "text_pad_id", "codebook_size", "n_q", "codec",
                                                "text_vocab")

    def __post_init__(self) -> None:
        for name in ("text_vocab_size", "text_pad_id", "codebook_size", "n_q", "d_model", "n_heads",
                     "n_layers", "ffn_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.text_vocab_size < 2:
            raise ValueError(f"text_vocab_size must be at least 2, got {self.text_vocab_size}")
        if not 0 <= self.text_pad_id < self.text_vocab_size:
            raise ValueError(f"text_pad_id {self.text_pad_id} is outside the text vocabulary [0, {self.text_vocab_size})")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be at least 2, got {self.codebook_size}")
        if self.n_q < 1:
            raise ValueError(f"n_q must be at least 1, got {self.n_q}")
        if self.d_model < 2 or self.d_model % 2:
            raise ValueError(f"d_model must be even (sinusoidal positions come in sin/cos pairs), got {self.d_model}")
        if self.n_heads < 1 or self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} must be a multiple of n_heads {self.n_heads}")
        if self.n_layers < 1 or self.ffn_dim < 1:
            raise ValueError(f"n_layers and ffn_dim must be positive, got {self.n_layers} and {self.ffn_dim}")
        if self.ffn not in FFN_KINDS:
            raise ValueError(f"ffn must be one of {FFN_KINDS}, got {self.ffn!r}")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} is a probability in [0, 1), got {getattr(self, name)}")
        if isinstance(self.codec, CodecIdentity):
            self.codec = self.codec.to_dict()
        if self.codec is not None:
            try:
                codec = CodecIdentity.from_dict(self.codec)
            except (KeyError, TypeError) as error:
                raise ValueError(f"codec must be a CodecIdentity dict, got {self.codec!r} ({error!r})") from None
            if codec.codebook_size != self.codebook_size:
                raise ValueError(f"codebook_size {self.codebook_size} differs from the codec's {codec.codebook_size}")
            if self.n_q > codec.n_q:
                raise ValueError(f"n_q {self.n_q} is more than the codec's {codec.n_q} codebooks")
            self.codec = codec.to_dict()
        if self.text_vocab is not None and (not isinstance(self.text_vocab, str) or not self.text_vocab):
            raise ValueError(f"text_vocab must be a non-empty identity string or None, got {self.text_vocab!r}")

    @property
    def codec_identity(self) -> CodecIdentity | None:
        return CodecIdentity.from_dict(self.codec) if self.codec is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LMConfig":
        return config_from_dict(cls, d)


Model = TypeVar("Model", bound="PretrainedLM")


class PretrainedLM(nn.Module):
    """Base of ARModel and NARModel: a `config` and save/load through safetensors."""

    config_class: ClassVar[type[LMConfig]] = LMConfig

    def __init__(self, config: LMConfig):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def save_pretrained(self, directory: str | Path) -> Path:
        return save_model(directory, self.config.to_dict(), self)

    @classmethod
    def from_pretrained(cls: type[Model], path_or_hub_id: str | Path, expect_codec: CodecIdentity | None = None,
                        expect_text_vocab: str | None = None, device: str | torch.device = "cpu") -> Model:
        """Load a directory written by `save_pretrained` (or a hub id), in eval mode.

        `expect_codec` / `expect_text_vocab`: raise ValueError unless the model was trained on
        tokens of this codec / with this text vocabulary.
        """
        directory = resolve_pretrained(path_or_hub_id)
        config = read_config(directory, cls.config_class, loader=cls.__name__)
        if expect_codec is not None:
            if config.codec_identity is None:
                raise ValueError(f"{directory} does not record which codec it was trained with; cannot check it "
                                 f"against {expect_codec.name} (config_hash {expect_codec.config_hash})")
            config.codec_identity.check_compatible(expect_codec, what=f"the model in {directory} and this codec's tokens")
        if expect_text_vocab is not None and config.text_vocab != expect_text_vocab:
            raise ValueError(
                f"the model in {directory} was trained with text vocabulary {config.text_vocab!r}, "
                f"not {expect_text_vocab!r}; use the text front-end saved with the model"
            )
        return load_model(lambda: cls(config), directory, device)

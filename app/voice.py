"""Voice presets: a prepared prompt, encoded once, saved as a small safetensors file.

    voice = tts.prepare_voice("me.wav", prompt_text="What I said in the recording.")
    voice.save("me.voice")
    wav, sr = tts.synthesize("Something new.", voice=tts.load_voice("me.voice"))

The file holds the prompt's codec tokens (`codes`, int16 [K, P]) and, when the prompt's
transcript is known, its token ids (`prompt_ids`, int32 [L]: no language tag, <bos> or <eos>).
Everything else is JSON in the safetensors header: the codec's identity (a preset only works
with the codec that made its tokens: loading checks it), the transcript, its language, the
text vocabulary the ids come from, the source file and the prompt's duration. No pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from codec.interface import CodecIdentity
from data.pretrained import write_file

FILE_FORMAT = "echo-voice"
FORMAT_VERSION = 1


class VoiceError(ValueError):
    """A voice preset that cannot be used; the message says why and what to do."""


@dataclass
class Voice:
    """A voice prompt ready for synthesis (see the module docstring)."""

    codes: torch.Tensor  # int16 [K, P]: the prompt's codec tokens (int32 for codebooks over 32768)
    codec: CodecIdentity
    language: str = "en-us"
    prompt_text: str | None = None  # the transcript of the prompt, when known
    prompt_ids: list[int] | None = None  # its token ids, without language tag, <bos> or <eos>
    text_vocab: str | None = None  # text_vocab_identity of the vocabulary prompt_ids come from
    source: str = ""  # where the prompt came from (a file name, or "audio")
    metadata: dict[str, Any] = field(default_factory=dict)  # anything else, JSON-serialisable

    def __post_init__(self) -> None:
        if self.codes.dim() != 2 or self.codes.shape[1] == 0:
            raise VoiceError(f"a voice's codes are [K, P] with P > 0 frames, got shape {tuple(self.codes.shape)}")
        if self.codes.numel() and (self.codes.min() < 0 or self.codes.max() >= self.codec.codebook_size):
            raise VoiceError(f"a voice's codes must lie in [0, {self.codec.codebook_size}) (its codec's codebook)")
        self.codes = self.codes.detach().to("cpu", torch.int16 if self.codec.codebook_size <= 2**15 else torch.int32)
        if (self.prompt_ids is None) != (self.prompt_text is None):
            raise VoiceError("prompt_text and prompt_ids go together: give both or neither")

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def n_frames(self) -> int:
        return self.codes.shape[1]

    @property
    def duration(self) -> float:
        """Seconds of prompt."""
        return self.n_frames / self.codec.frame_rate

    def check_codec(self, codec: CodecIdentity, source: str = "this voice") -> None:
        """Raise VoiceError unless the voice's tokens come from `codec`."""
        diffs = [f"{name} {getattr(self.codec, name)!r} != {getattr(codec, name)!r}"
                 for name in CodecIdentity.__dataclass_fields__ if getattr(self.codec, name) != getattr(codec, name)]
        if diffs:
            raise VoiceError(
                f"{source} was made with another codec than this model's ({'; '.join(diffs)}); make the preset "
                "again from its recording with this model: echo-tts voice --model DIR --prompt VOICE.wav --out PRESET"
            )

    def save(self, path: str | Path) -> Path:
        return save_voice(self, path)


def save_voice(voice: Voice, path: str | Path) -> Path:
    """Write `voice` to `path` (safetensors + JSON header; atomically)."""
    tensors = {"codes": voice.codes.contiguous()}
    if voice.prompt_ids is not None:
        tensors["prompt_ids"] = torch.tensor(voice.prompt_ids, dtype=torch.int32)
    header = {
        "codec": voice.codec.to_dict(),
        "language": voice.language,
        "prompt_text": voice.prompt_text,
        "text_vocab": voice.text_vocab,
        "source": voice.source,
        "duration": round(voice.duration, 3),
        "metadata": voice.metadata,
    }
    metadata = {"format": FILE_FORMAT, "format_version": str(FORMAT_VERSION),
                "voice": json.dumps(header, ensure_ascii=False)}
    return write_file(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_voice(path: str | Path, expect_codec: CodecIdentity | None = None) -> Voice:
    """Read a preset written by `save_voice`; with `expect_codec`, refuse one made by another codec."""
    path = Path(path)
    if not path.is_file():
        raise VoiceError(f"the voice preset {path} does not exist; make one with: "
                         "echo-tts voice --model DIR --prompt VOICE.wav --out PRESET")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise VoiceError(f"{path} is not an Echo voice preset ({error})") from None
    if metadata.get("format") != FILE_FORMAT or "codes" not in tensors:
        raise VoiceError(f"{path} is not an Echo voice preset (a safetensors file with format {FILE_FORMAT!r})")
    version = metadata.get("format_version", "")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise VoiceError(f"{path} has voice format version {version!r}; this Echo reads up to {FORMAT_VERSION}: "
                         "upgrade Echo")
    try:
        header = json.loads(metadata["voice"])
        codec = CodecIdentity.from_dict(header["codec"])
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise VoiceError(f"{path} has a damaged voice header ({error!r}); make the preset again") from None
    ids = tensors.get("prompt_ids")
    voice = Voice(
        codes=tensors["codes"],
        codec=codec,
        language=header.get("language", "en-us"),
        prompt_text=header.get("prompt_text"),
        prompt_ids=ids.tolist() if ids is not None else None,
        text_vocab=header.get("text_vocab"),
        source=header.get("source", ""),
        metadata=header.get("metadata", {}),
    )
    if expect_codec is not None:
        voice.check_codec(expect_codec, f"the voice preset {path}")
    return voice

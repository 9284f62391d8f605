"""The user-facing surface: `synthesize()` and the `TTS` class, voice presets, the `echo-tts` CLI.

    from app import TTS, synthesize
    wav, sr = synthesize("Hello there.", "me.wav", model="runs/lm/model")

Nothing heavy loads at import: each name below is imported from its module on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "TTS": "app.tts",
    "Synthesis": "app.tts",
    "synthesize": "app.tts",
    "load_tts": "app.tts",
    "Voice": "app.voice",
    "VoiceError": "app.voice",
    "load_voice": "app.voice",
    "save_voice": "app.voice",
    "PromptError": "app.prompt",
    "prepare_prompt": "app.prompt",
    "WhisperASR": "app.asr",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from app.asr import WhisperASR
    from app.prompt import PromptError, prepare_prompt
    from app.tts import TTS, Synthesis, load_tts, synthesize
    from app.voice import Voice, VoiceError, load_voice, save_voice


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'app' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

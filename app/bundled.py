"""The default model and voices that ship inside the package: `pip install`, then one command clones a voice.

    app/assets/model/     codec/, ar/, nar/, text/ of the model the long recipe trained (the README's model
                          card), its weights stored in half precision and loaded into float32
    app/assets/voices/    NAME.voice presets made with `TTS.prepare_voice` from held-out voices of the built-in
                          corpus
    app/assets/card.json  where they come from: the run, the commands, the evaluation, the default voice

`recipes/bundle_model.py` writes all three from a trained model; nothing else writes there. Everything
that takes a model (`TTS.from_pretrained()`, `synthesize`, the CLI, the demo, the server) falls back to
`default_model_dir()`, and a `--voice NAME` that is no file is looked up among `bundled_voices()`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from data.pretrained import WEIGHTS_FILE, write_directory, write_file, write_json

ASSETS_DIR = Path(__file__).with_name("assets")
MODEL_DIR = ASSETS_DIR / "model"
VOICES_DIR = ASSETS_DIR / "voices"
CARD_FILE = ASSETS_DIR / "card.json"
VOICE_SUFFIX = ".voice"
MODEL_PARTS = ("codec", "ar", "nar", "text")


def default_model_dir() -> Path:
    """The bundled model's directory; a FileNotFoundError that says what to do when this installation has none."""
    missing = [part for part in MODEL_PARTS if not (MODEL_DIR / part).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"this installation of Echo has no bundled model ({MODEL_DIR} lacks {', '.join(missing)}): pass a model "
            "directory (--model DIR, or TTS.from_pretrained(DIR)), or train one with python recipes/quickstart.py")
    return MODEL_DIR


def bundled_voices() -> dict[str, Path]:
    """The bundled voice presets by name (the file name without .voice), sorted."""
    if not VOICES_DIR.is_dir():
        return {}
    return {path.stem: path for path in sorted(VOICES_DIR.glob(f"*{VOICE_SUFFIX}"))}


def read_card() -> dict[str, Any]:
    """card.json: the bundled model's provenance ({} when there is none)."""
    return json.loads(CARD_FILE.read_text(encoding="utf-8")) if CARD_FILE.is_file() else {}


def default_voice() -> Path:
    """The voice that speaks when no prompt and no voice are given: the card's choice."""
    voices = bundled_voices()
    name = read_card().get("default_voice")
    if name not in voices:
        raise FileNotFoundError(f"this installation of Echo has no bundled default voice (in {VOICES_DIR}): give a "
                                "recording to clone (--prompt VOICE.wav) or a voice preset (--voice PRESET)")
    return voices[name]


def find_voice(name_or_path: str | Path) -> Path:
    """A voice preset's file: an existing path as it is, else the bundled voice of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    voices = bundled_voices()
    if str(name_or_path) in voices:
        return voices[str(name_or_path)]
    from app.voice import VoiceError

    names = ", ".join(voices) or "none in this installation"
    raise VoiceError(f"{str(name_or_path)!r} is neither a voice preset file nor a bundled voice (bundled: {names}); "
                     "make a preset with: echo-tts voice --prompt VOICE.wav --out PRESET.voice")


def save_half_precision(source: str | Path, target: str | Path) -> Path:
    """Copy an exported model directory (codec/, ar/, nar/, text/) with its float32 weights as float16.

    Half the size on disk; `load_weights` copies them back into the float32 modules, so the loaded
    model computes in float32 from weights rounded once (recipes/bundle_model.py measures what that
    changes in the audio).
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    source = Path(source)
    missing = [part for part in MODEL_PARTS if not (source / part).is_dir()]
    if missing:
        raise FileNotFoundError(f"{source} is not an exported model directory: {', '.join(missing)} missing")

    def write(tmp: Path) -> None:
        for part in MODEL_PARTS:
            shutil.copytree(source / part, tmp / part, ignore=shutil.ignore_patterns(WEIGHTS_FILE))
            weights = source / part / WEIGHTS_FILE
            if not weights.is_file():
                continue
            with safe_open(str(weights), framework="pt") as f:
                metadata, state = f.metadata(), {name: f.get_tensor(name) for name in f.keys()}
            state = {name: t.half() if t.dtype == torch.float32 else t for name, t in state.items()}
            too_large = [name for name, t in state.items() if t.is_floating_point() and not t.isfinite().all()]
            if too_large:
                raise ValueError(f"{weights}: {too_large[:5]} do not fit in float16")
            save_file(state, str(tmp / part / WEIGHTS_FILE), metadata=metadata)

    return write_directory(target, write, marker="ar")


def write_card(card: dict[str, Any], card_file: Path) -> None:
    write_file(card_file, lambda tmp: write_json(tmp, card))

"""Load any codec from a directory or a hub id: config.json's model_type picks the implementation.

    codec = load_codec("runs/codec/model")             # Echo's codec, written by EchoCodec.save_pretrained
    codec = load_codec("facebook/encodec_24khz")        # EnCodec from the Hugging Face Hub (or its cache)
    codec = load_codec(encodec_dir, bandwidth=3.0)      # keyword arguments go to that codec's from_pretrained

The implementations are imported only when a directory asks for them: EnCodec needs
transformers, which takes seconds to import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from codec.interface import Codec
from data.pretrained import CONFIG_FILE, WEIGHTS_FILE, read_config_dict, resolve_pretrained

# What a hub snapshot of any codec needs: its config, weights and side files (EnCodec's echo_codec.json).
CODEC_FILES = ("*.json", WEIGHTS_FILE)


def _echo_codec(directory: Path, **kwargs: Any) -> Codec:
    from codec.model import EchoCodec

    return EchoCodec.from_pretrained(directory, **kwargs)


def _encodec(directory: Path, **kwargs: Any) -> Codec:
    from codec.encodec import EncodecCodec

    return EncodecCodec.from_pretrained(directory, **kwargs)


CODECS: dict[str, Callable[..., Codec]] = {"echo_codec": _echo_codec, "encodec": _encodec}


def load_codec(path_or_hub_id: str | Path, **kwargs: Any) -> Codec:
    """Echo's codec or EnCodec from a directory written by save_pretrained, or from a hub id."""
    directory = resolve_pretrained(path_or_hub_id, CODEC_FILES, what="codec")
    model_type = read_config_dict(directory, what="codec").get("model_type")
    if model_type not in CODECS:
        raise ValueError(f"{directory / CONFIG_FILE} describes a {model_type!r} model; expected an Echo codec "
                         f"or EnCodec (model_type one of {sorted(CODECS)})")
    return CODECS[model_type](directory, **kwargs)

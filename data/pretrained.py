"""Model directories: where one is found, how it is written, how its config is read.

Every Echo model (the codec, the AR, the NAR, the aligner, the text front-end, the exported TTS
model) is a directory written by `save_pretrained(dir)` and read by `from_pretrained(path_or_hub_id)`;
a voice preset is one file. The rules they share:

- `resolve_pretrained`: an existing local directory is used as is; a string of the form owner/name
  that names nothing local is a Hugging Face Hub id, fetched with `snapshot_download` (or found in
  its cache). Anything else that does not exist is a FileNotFoundError, never a network call.
- `write_directory`, `write_file` and `replacing_file`: what a save writes appears whole or not at
  all, so that a crash mid-save never leaves a half-written model that loads (see `write_directory`).
  Every file in Echo that must not be seen half-written (manifests, token shards, audio, plots, state
  files) is written through them.
- `read_config` / `config_from_dict`: config.json -> the model's config dataclass, refusing another
  `model_type`, unknown fields (naming the known ones) and missing ones.
- `save_model` / `load_model` / `load_weights`: config.json + model.safetensors of a torch module; no pickle.

It imports nothing from codec, lm or app, which all build on it, and torch only to save or load weights:
the modules that only write files through it (manifests, vocabularies, state files) stay light.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import MISSING, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence, TypeVar

if TYPE_CHECKING:
    from torch import nn

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE)

# Hugging Face Hub repo ids: owner/name, each a letter or digit then letters, digits, '-', '_', '.'.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")

Config = TypeVar("Config")
Module = TypeVar("Module", bound="nn.Module")


# -- finding a model ----------------------------------------------------------------------------------


def is_hub_id(text: str) -> bool:
    """Whether `text` has the form of a Hub id (owner/name) and its owner is not a local directory."""
    return _HUB_ID.fullmatch(text) is not None and not Path(text).parent.is_dir()


def resolve_pretrained(path_or_hub_id: str | Path, files: Sequence[str] = MODEL_FILES, what: str = "model",
                       hint: str = "") -> Path:
    """The local directory of `path_or_hub_id`: itself if it is a directory, else the Hub snapshot of
    that id, holding only the files that match the `files` patterns (fnmatch, e.g. "*.json").

    Raises FileNotFoundError for a path that does not exist and is no Hub id (`hint` is added to
    say where such a directory comes from), or when the Hub cannot provide the id.
    """
    text = str(path_or_hub_id)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise FileNotFoundError(f"{what} {path} is a file; give the directory that holds it")
    if not is_hub_id(text):
        raise FileNotFoundError(f"{what} directory {path} does not exist" + (f"; {hint}" if hint else ""))
    from huggingface_hub import snapshot_download  # only when a hub id is asked for

    try:
        return Path(snapshot_download(text, allow_patterns=list(files)))
    except (OSError, ValueError) as error:  # no network, not in the cache while offline, no such repo
        reason = " ".join(str(error).split())
        raise FileNotFoundError(
            f"could not load {what} {text!r}: it is not a local directory, and the Hugging Face Hub could not "
            f"provide it ({reason}). Offline (no internet, or HF_HUB_OFFLINE=1) only models already in the Hugging "
            f"Face cache load by hub id; otherwise pass a local directory written by save_pretrained, saved once "
            f"on a machine with internet with from_pretrained({text!r}).save_pretrained(DIR)."
        ) from error


# -- writing ---------------------------------------------------------------------------------------------


def write_directory(directory: str | Path, write: Callable[[Path], None], marker: str = CONFIG_FILE) -> Path:
    """Save a model directory: `write(tmp)` fills an empty temporary sibling of `directory` with
    files and subdirectories, which then move into place.

    A new directory appears whole, by one rename. An existing one first loses its `marker` (the
    entry its loader cannot do without, which the save must write: config.json for one model, a
    part's subdirectory for a directory of models), then takes the other entries one by one and the
    marker last; a subdirectory replaces the old one of its name whole. A crash at any point leaves
    the old model, the new one, or a directory without its marker, which no loader accepts. Entries
    of the old directory that the save does not write are kept.
    """
    directory = Path(directory)
    target = Path(os.path.abspath(directory))  # "." and ".." have no name to make a sibling from
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"cannot save a model into {directory}: it is a file")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.saving")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a save that crashed
    tmp.mkdir()
    try:
        write(tmp)
        if not (tmp / marker).exists():
            raise RuntimeError(f"a save into {directory} wrote no {marker}, so nothing could load it")
        if not target.exists():
            os.replace(tmp, target)
            return directory
        _remove(target / marker)
        for name in [*sorted(p.name for p in tmp.iterdir() if p.name != marker), marker]:
            if (tmp / name).is_dir() or (target / name).is_dir():
                _remove(target / name)  # os.replace puts a file only over a file, a directory only over an empty one
            os.replace(tmp / name, target / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def temporary_sibling(path: Path) -> Path:
    """The hidden file that `write_file` and `replacing_file` write before it becomes `path`."""
    return path.with_name(f".{path.name}.tmp")


@contextmanager
def replacing_file(path: str | Path) -> Iterator[Path]:
    """Write one file through its temporary sibling, which the `with` block writes and which
    replaces `path` when the block ends without an error (the old file or the new one, never a part
    of one). For a file written piece by piece; `write_file` is the one-call form."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_file(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Save one file: `write(tmp)` writes a temporary sibling, which then replaces `path` (the old
    file or the new one, never a part of one). The sibling's name ends in .tmp, so a writer that
    picks the format by suffix (soundfile, matplotlib) must be given the format of `path`."""
    with replacing_file(path) as tmp:
        write(tmp)
    return Path(path)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def save_model(directory: str | Path, config: Mapping[str, Any], model: nn.Module) -> Path:
    """Write `config` (with its model_type) as config.json and `model`'s state as model.safetensors."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "model_type": str(config["model_type"])})
        write_json(tmp / CONFIG_FILE, config)

    return write_directory(directory, write)


# -- reading ---------------------------------------------------------------------------------------------


def read_config_dict(directory: str | Path, what: str = "model") -> dict[str, Any]:
    """The JSON object in directory/config.json."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG_FILE}; save_pretrained writes one into every {what} "
                                "directory")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); save the model again") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not a config object; save the model again")
    return data


def config_from_dict(config_class: type[Config], data: Mapping[str, Any], source: str = "",
                     loader: str = "") -> Config:
    """Build `config_class` (a dataclass with a `model_type` class attribute) from `data`.

    `data` may leave out model_type; any other than the class's is refused, and so are unknown
    and missing fields. `source` (a file) and `loader` (who reads it) only make the errors clearer.
    """
    expected = config_class.model_type  # type: ignore[attr-defined]
    where = f" in {source}" if source else ""
    model_type = data.get("model_type", expected)
    if model_type != expected:
        raise ValueError(f"{source or 'the config'} describes a {model_type!r} model; "
                         f"{loader or config_class.__name__} loads {expected!r} models")
    arguments = [f for f in fields(config_class) if f.init]  # type: ignore[arg-type]
    known = sorted(f.name for f in arguments)
    unknown = sorted(set(data) - set(known) - {"model_type"})
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} field(s) {unknown}{where}; known: {known}")
    missing = sorted(f.name for f in arguments
                     if f.name not in data and f.default is MISSING and f.default_factory is MISSING)
    if missing:
        raise ValueError(f"{config_class.__name__} field(s) {missing} are missing{where}")
    return config_class(**{name: value for name, value in data.items() if name != "model_type"})


def read_config(directory: str | Path, config_class: type[Config], loader: str) -> Config:
    """The config in directory/config.json, which must name `config_class.model_type` (see `config_from_dict`)."""
    data = read_config_dict(directory)
    path = Path(directory) / CONFIG_FILE
    if "model_type" not in data:
        raise ValueError(f"{path} has no model_type, so it was not written by save_pretrained; "
                         f"{loader} loads {config_class.model_type!r} models")  # type: ignore[attr-defined]
    return config_from_dict(config_class, data, source=str(path), loader=loader)


def load_model(build: Callable[[], Module], directory: str | Path, device: Any = "cpu") -> Module:
    """`build()` a module and fill it from directory/model.safetensors (`load_weights`).

    The module is built without drawing its random initial weights, which the file's replace at once:
    in a fresh process that draw is half the time of loading a model (0.27 s -> 0.12 s for the bundled
    one). The weights are then whatever memory held until `load_weights`, which fills every parameter
    and buffer the module saves or refuses the file.
    """
    with _initializers_skipped():
        model = build()
    return load_weights(model, directory, device)


@contextmanager
def _initializers_skipped() -> Iterator[None]:
    """torch.nn.init's in-place initializers (what every module's `reset_parameters` calls) do nothing
    inside. Process-wide while it lasts, like transformers' `no_init_weights`: a module built by another
    thread meanwhile would keep uninitialized weights."""
    from torch.nn import init

    names = [name for name in vars(init) if name.endswith("_") and not name.startswith("_")
             and callable(getattr(init, name))]
    saved = {name: getattr(init, name) for name in names}
    for name in names:
        setattr(init, name, _leave_as_is)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(init, name, function)


def _leave_as_is(tensor: Any, *args: Any, **kwargs: Any) -> Any:
    return tensor


def load_weights(model: Module, directory: str | Path, device: Any = "cpu") -> Module:
    """Fill `model` from directory/model.safetensors, whose tensors must match its own one for one;
    returns it on `device`, in eval mode."""
    from safetensors.torch import load_file

    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; a model directory is written by save_pretrained")
    state = load_file(str(path), device=str(device))
    own = model.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise ValueError(f"{path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    reshaped = [f"{name} {tuple(state[name].shape)} != {tuple(tensor.shape)}"
                for name, tensor in own.items() if state[name].shape != tensor.shape]
    if reshaped:
        raise ValueError(f"{path} does not match its config: {'; '.join(reshaped[:5])}")
    model.load_state_dict(state)
    return model.to(device).eval()

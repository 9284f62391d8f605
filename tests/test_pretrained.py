"""data/pretrained.py: finding a model directory, writing it whole or not at all, reading its config."""

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import huggingface_hub
import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors.torch import save_file
from torch import nn

import data.pretrained as pretrained
from data.pretrained import (CONFIG_FILE, WEIGHTS_FILE, config_from_dict, load_model, load_weights, read_config,
                             replacing_file, resolve_pretrained, save_model, write_directory, write_file)


@dataclass
class ToyConfig:
    width: int
    depth: int = 1
    tags: list[str] = field(default_factory=list)

    model_type: ClassVar[str] = "toy"

    def to_dict(self) -> dict:
        return {"model_type": self.model_type, "width": self.width, "depth": self.depth, "tags": self.tags}


class Toy(nn.Module):
    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.layers = nn.Sequential(*[nn.Linear(config.width, config.width) for _ in range(config.depth)])
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def toy(width: int = 4, depth: int = 2, seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    return Toy(ToyConfig(width, depth, ["a"]))


def load_toy(directory: Path) -> Toy:
    return load_weights(Toy(read_config(directory, ToyConfig, loader="Toy")), directory)


@pytest.fixture
def no_download(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"snapshot_download was called with {args} {kwargs}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)


# -- finding a model ---------------------------------------------------------------------------------


def test_a_local_directory_is_used_as_is(tmp_path, no_download):
    assert resolve_pretrained(tmp_path) == tmp_path
    assert resolve_pretrained(str(tmp_path)) == tmp_path


@pytest.mark.parametrize("name", ["./someone/model", "~/no-such-echo-dir/model", "model", "a/b/c", "-x/y",
                                  "owner/name with spaces"])
def test_what_is_no_directory_and_no_hub_id_never_downloads(name, no_download):
    with pytest.raises(FileNotFoundError, match="model directory .* does not exist; train one first"):
        resolve_pretrained(name, hint="train one first")


def test_a_missing_path_whose_parent_is_local_is_not_a_hub_id(tmp_path, monkeypatch, no_download):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match="codec directory runs/model does not exist"):
        resolve_pretrained("runs/model", what="codec")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_pretrained(tmp_path / "runs" / "model")


def test_a_file_is_not_a_model_directory(tmp_path, no_download):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is a file"):
        resolve_pretrained(tmp_path / "weights.bin")


def test_a_hub_id_is_downloaded_with_only_the_files_asked_for(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, **kwargs: asked.append((repo, kwargs)) or str(tmp_path))
    assert resolve_pretrained("someone/echo-model", files=("config.json", "*.safetensors")) == tmp_path
    assert asked == [("someone/echo-model", {"allow_patterns": ["config.json", "*.safetensors"]})]


def test_a_hub_id_the_hub_cannot_provide_says_what_to_do(monkeypatch):
    def offline(repo, **kwargs):
        raise LocalEntryNotFoundError("cannot reach the Hub and the snapshot is not in the cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match=r"(?s)EnCodec 'someone/codec'.*not a local directory.*not in the "
                                                r"cache.*save_pretrained\(DIR\)"):
        resolve_pretrained("someone/codec", what="EnCodec")


# -- writing -----------------------------------------------------------------------------------------------


def test_save_and_load_give_an_identical_model(tmp_path):
    model = toy()
    with torch.no_grad():
        model.steps += 3
    assert save_model(tmp_path / "toy", model.config.to_dict(), model) == tmp_path / "toy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]  # no temporary directory left
    assert sorted(p.name for p in (tmp_path / "toy").iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    loaded = load_toy(tmp_path / "toy")
    assert loaded.config == model.config and not loaded.training and int(loaded.steps) == 3
    x = torch.randn(3, 4)
    assert torch.equal(loaded(x), model(x))


def test_saving_over_a_model_replaces_it_and_keeps_other_files(tmp_path):
    save_model(tmp_path, toy(seed=0).config.to_dict(), toy(seed=0))
    (tmp_path / "README.md").write_text("notes")
    newer = toy(width=6, seed=1)
    save_model(tmp_path, newer.config.to_dict(), newer)
    assert load_toy(tmp_path).config.width == 6
    assert (tmp_path / "README.md").read_text() == "notes"


def test_a_save_that_fails_while_writing_leaves_the_old_model(tmp_path):
    old = toy(seed=0)
    save_model(tmp_path / "toy", old.config.to_dict(), old)

    def crash(tmp: Path) -> None:
        (tmp / WEIGHTS_FILE).write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_directory(tmp_path / "toy", crash)
    x = torch.randn(2, 4)
    assert torch.equal(load_toy(tmp_path / "toy")(x), old(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]
    with pytest.raises(KeyboardInterrupt):
        write_directory(tmp_path / "new", crash)
    assert not (tmp_path / "new").exists()


def test_a_save_that_dies_while_moving_files_in_leaves_nothing_that_loads(tmp_path, monkeypatch):
    save_model(tmp_path, toy(seed=0).config.to_dict(), toy(seed=0))
    real_replace = pretrained.os.replace

    def die_after_the_weights(src, dst):
        real_replace(src, dst)
        if Path(dst).name == WEIGHTS_FILE:
            raise SystemExit("killed")

    monkeypatch.setattr(pretrained.os, "replace", die_after_the_weights)
    newer = toy(width=6, seed=1)
    with pytest.raises(SystemExit):
        save_model(tmp_path, newer.config.to_dict(), newer)
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_toy(tmp_path)  # new weights without the old config: refused, not loaded as a wrong model
    save_model(tmp_path, newer.config.to_dict(), newer)  # the next save repairs it
    assert load_toy(tmp_path).config.width == 6


def test_a_save_must_write_its_marker(tmp_path):
    with pytest.raises(RuntimeError, match="wrote no config.json"):
        write_directory(tmp_path / "toy", lambda tmp: (tmp / WEIGHTS_FILE).write_bytes(b""))
    assert not (tmp_path / "toy").exists()


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path):
    path = write_file(tmp_path / "sub" / "x.txt", lambda tmp: tmp.write_text("first"))

    def crash(tmp: Path) -> None:
        tmp.write_text("sec")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_file(path, crash)
    assert path.read_text() == "first" and sorted(p.name for p in path.parent.iterdir()) == ["x.txt"]


def test_a_file_written_piece_by_piece_appears_when_its_block_ends(tmp_path):
    path = tmp_path / "log.txt"
    with replacing_file(path) as tmp, open(tmp, "w") as f:
        f.write("one")
        f.flush()
        assert not path.exists()
    assert path.read_text() == "one"
    with pytest.raises(KeyboardInterrupt), replacing_file(path) as tmp:
        tmp.write_text("two")
        raise KeyboardInterrupt
    assert path.read_text() == "one" and [p.name for p in tmp_path.iterdir()] == ["log.txt"]


def test_a_directory_of_models_is_saved_over_part_by_part_with_its_marker_last(tmp_path, monkeypatch):
    def version(n: int):
        def write(tmp: Path) -> None:
            for part in ("ar", "text"):
                (tmp / part).mkdir()
                (tmp / part / f"v{n}").write_text(part)
        return write

    model = tmp_path / "model"
    write_directory(model, version(1), marker="text")
    (model / "notes.md").write_text("kept")
    write_directory(model, version(2), marker="text")
    assert sorted(p.relative_to(model).as_posix() for p in model.rglob("*")) == [
        "ar", "ar/v2", "notes.md", "text", "text/v2"]  # each part replaced whole, the rest kept
    real_replace = pretrained.os.replace

    def die_after_ar(src, dst):
        real_replace(src, dst)
        if Path(dst).name == "ar":
            raise SystemExit("killed")

    monkeypatch.setattr(pretrained.os, "replace", die_after_ar)
    with pytest.raises(SystemExit):
        write_directory(model, version(3), marker="text")
    assert (model / "ar" / "v3").is_file() and not (model / "text").exists()  # no mix of versions with its marker


def test_writing_files_needs_no_torch():
    code = ("import sys, data.manifest, data.vocab, data.phoneme_timings, recipes.stages; "
            "assert 'torch' not in sys.modules, 'torch was imported'; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


# -- reading -----------------------------------------------------------------------------------------------


def test_config_from_dict_is_strict():
    assert config_from_dict(ToyConfig, {"width": 3}) == ToyConfig(3)
    assert config_from_dict(ToyConfig, {"model_type": "toy", "width": 3, "depth": 2}) == ToyConfig(3, 2)
    with pytest.raises(ValueError, match=r"unknown ToyConfig field\(s\) \['heads', 'size'\]; "
                                         r"known: \['depth', 'tags', 'width'\]"):
        config_from_dict(ToyConfig, {"width": 3, "size": 1, "heads": 2})
    with pytest.raises(ValueError, match="describes a 'echo_ar' model; ToyConfig loads 'toy' models"):
        config_from_dict(ToyConfig, {"model_type": "echo_ar", "width": 3})
    with pytest.raises(ValueError, match=r"ToyConfig field\(s\) \['width'\] are missing"):
        config_from_dict(ToyConfig, {"depth": 3})


def test_read_config_names_the_file_and_the_loader(tmp_path):
    path = tmp_path / CONFIG_FILE
    path.write_text(json.dumps({"model_type": "echo_nar", "width": 3}))
    with pytest.raises(ValueError, match=f"{path} describes a 'echo_nar' model; Toy loads 'toy' models"):
        read_config(tmp_path, ToyConfig, loader="Toy")
    path.write_text(json.dumps({"model_type": "toy", "width": 3, "n_codebooks": 8}))
    with pytest.raises(ValueError, match=rf"unknown ToyConfig field\(s\) \['n_codebooks'\] in {path}; known"):
        read_config(tmp_path, ToyConfig, loader="Toy")
    path.write_text(json.dumps({"width": 3}))
    with pytest.raises(ValueError, match="has no model_type"):
        read_config(tmp_path, ToyConfig, loader="Toy")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_config(tmp_path, ToyConfig, loader="Toy")
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="a JSON list, not a config object"):
        read_config(tmp_path, ToyConfig, loader="Toy")
    path.unlink()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        read_config(tmp_path, ToyConfig, loader="Toy")


def test_load_model_skips_the_random_draw_and_restores_the_initializers(tmp_path):
    model = toy(depth=2)
    save_model(tmp_path, model.config.to_dict(), model)
    draws = []
    original = nn.init.kaiming_uniform_
    nn.init.kaiming_uniform_ = lambda tensor, *args, **kwargs: draws.append(tensor) or original(tensor, *args, **kwargs)
    try:
        loaded = load_model(lambda: Toy(ToyConfig(4, depth=2)), tmp_path)
        assert draws == []  # nn.Linear's initializer never ran while building
        for name, tensor in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], tensor), name
        with pytest.raises(ValueError, match="does not match its config"):
            load_model(lambda: Toy(ToyConfig(4, depth=1)), tmp_path)
        Toy(ToyConfig(4))  # after a load, and after a refused one, modules draw their weights again
        assert len(draws) == 1
    finally:
        nn.init.kaiming_uniform_ = original


def test_weights_must_match_the_config(tmp_path):
    model = toy(depth=2)
    save_model(tmp_path, model.config.to_dict(), model)
    with pytest.raises(ValueError, match=r"does not match its config: missing \[\], unexpected \['layers.1.bias'"):
        load_weights(Toy(ToyConfig(4, depth=1)), tmp_path)
    with pytest.raises(ValueError, match=r"layers.0.weight \(4, 4\) != \(5, 5\)"):
        load_weights(Toy(ToyConfig(5, depth=2)), tmp_path)
    save_file({}, str(tmp_path / WEIGHTS_FILE))
    with pytest.raises(ValueError, match=r"missing \['layers.0.bias'"):
        load_toy(tmp_path)
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        load_toy(tmp_path)

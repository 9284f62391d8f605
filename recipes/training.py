"""What the training recipes share: the run (config, Accelerator, checkpoints), presets with
typed overrides, and the LR schedule. Each recipe keeps its own training loop in view.

A run directory holds:

    config.yaml              the fully resolved config of the run
    logs/                    TensorBoard event files
    checkpoints/step-N/      Accelerate state (model, optimizers, schedulers, RNG) + trainer_state.json
    samples/                 audio written during validation
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
import yaml

from data.pretrained import write_file

CONFIG_DIR = Path(__file__).parent / "configs"
C = TypeVar("C")


# ---------------------------------------------------------------- configs


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    """Return `value` converted to the field's declared type, or raise ValueError naming the field."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(name, value, option)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0])
    if origin in (tuple, list):
        (item_type, *_rest) = typing.get_args(annotation) or (Any,)
        if not isinstance(value, (list, tuple)):
            value = [value]
        items = [_check_type(name, v, item_type) for v in value]
        return tuple(items) if origin is tuple else items
    if annotation is Any or origin is dict:
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-3" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if annotation is bool and not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if annotation is int and isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not isinstance(value, annotation):
        raise ValueError(f"{name} must be {annotation.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _apply(config: Any, updates: dict[str, Any], prefix: str = "") -> Any:
    """Set `updates` on the dataclass `config`, recursing into nested dataclasses, checking names and types.

    Returns the updated config: `config` itself, or a new one where it is a frozen dataclass.
    """
    hints = typing.get_type_hints(type(config))
    names = {f.name for f in dataclasses.fields(config) if f.init}
    changes = {}
    for key, value in updates.items():
        if key not in names:
            raise ValueError(f"unknown config key {prefix + key!r}; known keys: {', '.join(sorted(prefix + n for n in names))}")
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{prefix + key} is a section; set its keys as {prefix + key}.NAME")
            changes[key] = _apply(current, value, prefix=f"{prefix}{key}.")
        else:
            changes[key] = _check_type(prefix + key, value, hints[key])
    if type(config).__dataclass_params__.frozen:
        return dataclasses.replace(config, **changes)
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`["--lr", "1e-3", "--model.n_q", "4"]` -> {"lr": 1e-3, "model": {"n_q": 4}}; values are parsed as YAML."""
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ValueError(f"expected --key value, got {arg!r}")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise ValueError(f"--{key} needs a value")
            value = args[i + 1]
            i += 1
        i += 1
        target = overrides
        *sections, leaf = key.replace("-", "_").split(".")
        for section in sections:
            target = target.setdefault(section, {})
        target[leaf] = yaml.safe_load(value) if value != "" else ""
    return overrides


def load_config(
    config_type: type[C], preset: str | Path | None, overrides: list[str] | dict[str, Any] = (),
    preset_dir: Path = CONFIG_DIR,
) -> C:
    """Build `config_type` from a YAML preset (a name in `preset_dir` or a path to a file; None: the
    dataclass's defaults) and overrides."""
    config = config_type()
    if preset is not None:
        path = Path(preset)
        if not path.suffix:
            path = preset_dir / f"{preset}.yaml"
        if not path.is_file():
            available = sorted(p.stem for p in preset_dir.glob("*.yaml"))
            raise FileNotFoundError(f"no preset {preset!r} ({path}); available: {', '.join(available)}")
        config = _apply(config, yaml.safe_load(path.read_text()) or {})
    config = _apply(config, overrides if isinstance(overrides, dict) else parse_overrides(list(overrides)))
    for value in [config] + [getattr(config, f.name) for f in dataclasses.fields(config)]:
        if dataclasses.is_dataclass(value) and hasattr(value, "__post_init__"):
            value.__post_init__()  # validate again after the overrides
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    return plain(config)


def save_config(config: Any, path: str | Path) -> None:
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    write_file(path, lambda tmp: tmp.write_text(text))


# ---------------------------------------------------------------- runs

PRECISIONS = ("auto", "bf16", "fp32")


@dataclasses.dataclass
class TrainingConfig:
    """The settings every training recipe has; each recipe's config adds its own and its defaults."""

    run_dir: str = "runs/train"
    steps: int = 10000
    lr: float = 3e-4
    warmup_steps: int = 200
    grad_clip: float = 1.0
    gradient_accumulation_steps: int = 1  # batches per optimizer step
    precision: str = "auto"  # auto: bf16 autocast on GPUs, float32 on CPUs (bf16 there is slow); bf16; fp32
    num_workers: int = 0
    log_every: int = 10
    val_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("steps", "gradient_accumulation_steps", "log_every", "val_every", "checkpoint_every",
                     "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def due(self, step: int, every: int) -> bool:
        """Whether periodic work (logging, validation, a checkpoint) is due after `step`: every
        `every` steps, and always after the last."""
        return step % every == 0 or step == self.steps

    @property
    def mixed_precision(self) -> str:
        """Accelerate's name for the precision this run trains in."""
        if self.precision == "auto":
            return "bf16" if torch.cuda.is_available() else "no"
        return "no" if self.precision == "fp32" else "bf16"


@dataclasses.dataclass
class Run:
    """A training run: its config, directory, Accelerator and checkpoint folder."""

    config: Any  # a TrainingConfig
    directory: Path
    accelerator: Any  # accelerate.Accelerator
    resume: bool
    checkpoints: str = "checkpoints"
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # the ones given on the command line

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def save_config(self, name: str = "config.yaml") -> None:
        if self.is_main:
            self.directory.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.directory / name)

    def restore(self) -> dict[str, Any] | None:
        """With --resume, load the newest checkpoint into the prepared objects and return its state."""
        state = resume_from_checkpoint(self.accelerator, self.directory, self.checkpoints) if self.resume else None
        if state:
            self.accelerator.print(f"resumed from step {state['step']}")
        return state

    def checkpoint(self, step: int, state: dict[str, Any] | None = None) -> Path:
        return save_checkpoint(self.accelerator, self.directory, step, state or {},
                               keep=self.config.keep_checkpoints, folder=self.checkpoints)


def start_run(config_type: type[C], argv: list[str] | None, *, description: str, preset_dir: Path,
              tracker: str | Callable[[C], str], checkpoints: str | Callable[[C], str] = "checkpoints",
              accelerate_accumulation: bool = True, **accelerator_kwargs: Any) -> Run:
    """Parse `--preset NAME --resume --key value ...`, build the config, refuse to overwrite a run's
    checkpoints without --resume, and start Accelerate (precision, TensorBoard under logs/, seed).

    `tracker` (the TensorBoard run name) and `checkpoints` (the folder) may depend on the config.
    With `accelerate_accumulation=False` the recipe accumulates gradients itself and the
    Accelerator is built for one batch per step.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--preset", default="cpu", help="tiny, cpu, base, or a path to a YAML file")
    parser.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    config = load_config(config_type, args.preset, overrides, preset_dir=preset_dir)
    directory = Path(config.run_dir)
    checkpoints = checkpoints(config) if callable(checkpoints) else checkpoints
    if checkpoint_dirs(directory, checkpoints) and not args.resume:
        raise SystemExit(f"{directory / checkpoints} already has checkpoints: pass --resume to continue, "
                         f"or choose another --run_dir")
    accelerator = Accelerator(
        # Without a GPU, processes started by torchrun join one gloo group only when Accelerate
        # is told to use the CPU; otherwise each would train alone into the same run directory.
        cpu=not torch.cuda.is_available(),
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps if accelerate_accumulation else 1,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(directory), logging_dir=str(directory / "logs")),
        **accelerator_kwargs,
    )
    set_seed(config.seed)
    precision = "bf16 autocast" if accelerator.mixed_precision == "bf16" else "float32"
    accelerator.print(f"{accelerator.num_processes} process(es) on {accelerator.device.type}, {precision}")
    accelerator.init_trackers(tracker(config) if callable(tracker) else tracker)
    return Run(config, directory, accelerator, args.resume, checkpoints, parse_overrides(overrides))


def adamw(params: Any, **kwargs: Any) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel (Run's Accelerator trains on a CPU or CUDA, which both have it):
    one pass over every parameter instead of a few small operations per tensor, the same update within
    rounding."""
    return torch.optim.AdamW(params, fused=True, **kwargs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# ---------------------------------------------------------------- schedule


def lr_at(step: int, peak: float, warmup_steps: int, total_steps: int, final_fraction: float = 0.1) -> float:
    """Linear warm-up to `peak`, then cosine decay to `final_fraction * peak` at `total_steps`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


# ---------------------------------------------------------------- checkpoints


def checkpoint_dirs(run_dir: str | Path, folder: str = "checkpoints") -> list[Path]:
    """Complete checkpoints of a run, oldest first (an interrupted save never has the final name)."""
    root = Path(run_dir) / folder
    found = [p for p in root.glob("step-*") if p.is_dir() and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(
    accelerator: Any, run_dir: str | Path, step: int, state: dict[str, Any], keep: int = 2, folder: str = "checkpoints"
) -> Path:
    """Save the Accelerate state and `state` (JSON) as `folder`/step-`step`, atomically; keep the newest `keep`.

    Every process must call this (each saves its RNG state). The state is written into a
    temporary directory that is renamed into place only once complete, so a SIGKILL at any
    moment leaves either the previous checkpoints or the new one, never a torn one.
    """
    root = Path(run_dir) / folder
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    if accelerator.is_main_process:
        for torn in root.glob(".tmp-step-*"):  # left by a process killed mid-save
            shutil.rmtree(torn, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **state}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoint_dirs(run_dir, folder)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resume_from_checkpoint(accelerator: Any, run_dir: str | Path, folder: str = "checkpoints") -> dict[str, Any] | None:
    """Load the newest complete checkpoint of `run_dir` into the prepared objects; return its trainer state."""
    found = checkpoint_dirs(run_dir, folder)
    if not found:
        return None
    accelerator.load_state(str(found[-1]))
    return json.loads((found[-1] / "trainer_state.json").read_text())


# ---------------------------------------------------------------- processes


def torchrun_command(processes: int, *program: str) -> list[str]:
    """The command that starts `processes` processes of `program` (a script or `-m module`, and its arguments)
    on this machine under torchrun, with this Python."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            *program]


def run_recipe(module: str, argv: list[str], processes: int = 1) -> None:
    """Run the training recipe `module` ("recipes.train_lm") with `argv`: its `main(argv)` in this process,
    or, with `processes` > 1, that many processes of one torch thread each under torchrun (gloo; each
    process takes its own batches and Accelerate averages their gradients).

    On a CPU small models use threads poorly: on this project's 2 cores the quickstart's AR trains 1.25-1.32
    times as fast in two processes of one thread as in one of two (README, Figures: the quickstart). Ctrl-C or SIGTERM
    here (a KeyboardInterrupt) stops the processes, whose checkpoints are written atomically, and is raised
    again, so that a rerun with --resume goes on from their last checkpoint.
    """
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    if processes == 1:
        importlib.import_module(module).main(argv)
        return
    threads = max(1, (os.cpu_count() or processes) // processes)
    command = torchrun_command(processes, "-m", module, *argv)
    launcher = subprocess.Popen(command, env=os.environ | {"OMP_NUM_THREADS": str(threads)})
    try:
        code = launcher.wait()
    except KeyboardInterrupt:
        launcher.send_signal(signal.SIGTERM)  # torchrun passes it on to its workers and waits for them
        try:
            launcher.wait(timeout=60)
        except subprocess.TimeoutExpired:
            launcher.kill()
        raise
    if code != 0:
        raise RuntimeError(f"{module} in {processes} processes exited with status {code} (its error is above): "
                           f"{' '.join(command)}")

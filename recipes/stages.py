"""A run of named stages that resumes: each stage's record is kept in a JSON state file.

    pipeline = Pipeline([Stage("corpus", ...), Stage("codec", ..., needs=("corpus",)), ...])
    failed = pipeline.run(ctx, state, state_path, command, from_stage="codec")

A stage is finished when its record says "completed" with the settings it would run with now and
all its outputs exist; a run skips finished stages. A stage that is not finished runs again and is
expected to go on from what it left (checkpoints, audio already written), unless it is redone from
scratch (`from_stage`, `only`, or its settings changed): then what it `removes` is deleted first.
A stage that runs invalidates the stages that read its output, directly or not: their outputs are
deleted and their records dropped, so that they run again.

The state file holds {"stages": {name: record}, "last_run": {...}, "total_seconds": ...} and whatever
the caller adds. A record: "status" (running, completed, failed or interrupted), "settings",
"started_at", "seconds" (wall seconds, summed over the attempts that resumed), "finished_at" or
"error", and the notes the stage's body returned.

`kill PID` (SIGTERM) stops a run as Ctrl-C does: the stage in progress is recorded as interrupted,
with its seconds so far, and the same command goes on from there. A run started in the background
(`nohup python recipes/quickstart.py ... &`) ignores Ctrl-C's signal, and a kill that Python does not
turn into an exception would leave the stage "running" without the time it spent.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Generic, TypeVar

from data.pretrained import write_file

C = TypeVar("C")  # what the stages' functions are given: the caller's paths, config and state


def _no_settings(ctx: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Stage(Generic[C]):
    name: str
    what: str  # the banner's line
    needs: tuple[str, ...]  # earlier stages whose outputs this one reads
    home: Callable[[C], Path]  # its main output, as a report names it
    outputs: Callable[[C], list[Path]]  # all exist once the stage has finished
    removes: Callable[[C], list[Path]]  # what redoing the stage from scratch deletes first
    run: Callable[[C], dict[str, Any]]  # -> notes for the record
    settings: Callable[[C], dict[str, Any]] = _no_settings  # a change of these redoes the stage
    # What a change of settings deletes, given the recorded and the new settings; None: `removes`.
    removes_on_change: Callable[[C, dict[str, Any], dict[str, Any]], list[Path]] | None = None
    optional: bool = False  # a failure is recorded and the run goes on; `run` returns it among the failed
    reads_all: bool = False  # reads every stage's record (a report): runs again after any stage, and with `only`


class Pipeline(Generic[C]):
    """Stages in the order they run; a stage only needs stages before it."""

    def __init__(self, stages: Sequence[Stage[C]], title: str):
        self.stages = tuple(stages)
        self.title = title  # the summary's heading
        self.names = [stage.name for stage in self.stages]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"stage names must be unique, got {self.names}")
        for i, stage in enumerate(self.stages):
            later = [need for need in stage.needs if need not in self.names[:i]]
            if later:
                raise ValueError(f"stage {stage.name} needs {later}, which must be stages before it")
        self._by_name = dict(zip(self.names, self.stages))

    def __getitem__(self, name: str) -> Stage[C]:
        if name not in self._by_name:
            raise KeyError(f"no stage {name!r}; the stages are {', '.join(self.names)}")
        return self._by_name[name]

    def dependents(self, name: str) -> list[str]:
        """The stages that read `name`'s output, directly or not, and those that read every stage's record."""
        found = {name}
        for stage in self.stages:  # in order: a stage's inputs come before it
            if found & set(stage.needs):
                found.add(stage.name)
        return [s.name for s in self.stages if s.name != name and (s.name in found or s.reads_all)]

    def is_finished(self, stage: Stage[C], ctx: C, state: dict[str, Any]) -> bool:
        record = state["stages"].get(stage.name)
        return (record is not None and record.get("status") == "completed"
                and record.get("settings") == plain(stage.settings(ctx))
                and all(path.exists() for path in stage.outputs(ctx)))

    def plan(self, ctx: C, state: dict[str, Any], only: Sequence[str] | None = None,
             from_stage: str | None = None) -> tuple[set[str], set[str]]:
        """-> (the stages to consider, those to redo from scratch). `only` redoes just those stages (and
        the ones that read every record), whose inputs must be finished; `from_stage` redoes it and all after."""
        if only and from_stage:
            raise ValueError("give `only` or `from_stage`, not both")
        if only:
            for name in only:
                missing = [need for need in self[name].needs if not self.is_finished(self[need], ctx, state)]
                if missing:
                    raise SystemExit(f"--only {name} reads the output of {', '.join(missing)}, which has not "
                                     "finished: run without --only first")
            return set(only) | {s.name for s in self.stages if s.reads_all}, set(only)
        if from_stage:
            self[from_stage]  # a clear error for an unknown name
            return set(self.names), set(self.names[self.names.index(from_stage):])
        return set(self.names), set()

    def run(self, ctx: C, state: dict[str, Any], state_path: Path, command: str,
            only: Sequence[str] | None = None, from_stage: str | None = None) -> list[str]:
        """Run what is not finished (see `plan`), recording every stage in `state` and `state_path`;
        return the optional stages that failed. A stage that is not optional and fails raises."""
        state.setdefault("stages", {})
        selected, redo = self.plan(ctx, state, only, from_stage)
        run: dict[str, Any] = {"command": command, "started_at": now(), "ran": [], "skipped": {}}
        state["last_run"] = run
        clock = time.perf_counter()
        with _terminate_as_interrupt():
            self._run_selected(ctx, state, state_path, selected, redo, run, clock)

        run["seconds"] = round(time.perf_counter() - clock, 1)
        records = state["stages"]
        state["total_seconds"] = round(sum(r["seconds"] for r in records.values() if r.get("status") == "completed"), 1)
        save_state(state_path, state)
        self._print_summary(state)
        return [name for name in run["ran"] if records[name]["status"] == "failed"]

    def _run_selected(self, ctx: C, state: dict[str, Any], state_path: Path, selected: set[str], redo: set[str],
                      run: dict[str, Any], clock: float) -> None:
        for number, stage in enumerate(self.stages, start=1):
            if stage.name not in selected:
                continue
            banner = f"[{number}/{len(self.stages)}] {stage.name}: {stage.what}"
            if stage.name not in redo and self.is_finished(stage, ctx, state):
                seconds = state["stages"][stage.name]["seconds"]
                print(f"\n{banner}\n    skipped: finished in an earlier run ({format_seconds(seconds)})", flush=True)
                run["skipped"][stage.name] = "finished"
                continue
            seconds = self._run_stage(stage, ctx, state, state_path, stage.name in redo, banner)
            run["ran"].append(stage.name)
            save_state(state_path, state)
            print(f"--- {stage.name}: {state['stages'][stage.name]['status']} in {format_seconds(seconds)} "
                  f"(this run so far: {format_seconds(time.perf_counter() - clock)})", flush=True)

    def _run_stage(self, stage: Stage[C], ctx: C, state: dict[str, Any], state_path: Path, redo: bool,
                   banner: str) -> float:
        """Clear what must go, run `stage`, record it; return its wall seconds (this attempt and earlier ones)."""
        records = state["stages"]
        record = records.get(stage.name)
        settings = plain(stage.settings(ctx))
        changed = record is not None and record.get("settings") is not None and record["settings"] != settings
        if record is not None and (redo or changed):  # redone from scratch: what it left goes first
            if changed and stage.removes_on_change is not None:
                targets = stage.removes_on_change(ctx, record["settings"], settings)
            else:
                targets = stage.removes(ctx)
            for path in targets:
                if path.exists():
                    print(f"removing {path} (the stage is redone from scratch)", flush=True)
                    remove(path)
        for name in self.dependents(stage.name):  # built on what this stage is about to change
            for path in self[name].removes(ctx):
                if path.exists():
                    print(f"removing {path} ({name} is redone after {stage.name})", flush=True)
                    remove(path)
            records.pop(name, None)
        resuming = record is not None and record.get("status") in ("running", "interrupted", "failed") and not changed
        earlier = record.get("seconds", 0.0) if resuming and not redo else 0.0  # before an interruption
        records[stage.name] = {"status": "running", "settings": settings, "started_at": now(), "seconds": earlier}
        save_state(state_path, state)

        print(f"\n{'=' * 100}\n{banner}\n{'=' * 100}", flush=True)
        start = time.perf_counter()
        try:
            notes = stage.run(ctx)
        except BaseException as e:
            seconds = earlier + time.perf_counter() - start
            status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            error = f"{type(e).__name__}: {e}"[:1000]
            records[stage.name].update(status=status, seconds=round(seconds, 1), error=error)
            save_state(state_path, state)
            print(f"\nstage {stage.name} {status} after {format_seconds(seconds)}; run the same command again to "
                  "go on from there", file=sys.stderr, flush=True)
            if stage.optional and isinstance(e, Exception):  # not SystemExit nor Ctrl-C: those stop the run
                traceback.print_exc()
                return seconds
            raise
        seconds = earlier + time.perf_counter() - start
        records[stage.name].update(status="completed", seconds=round(seconds, 1), finished_at=now(), **notes)
        return seconds

    def _print_summary(self, state: dict[str, Any]) -> None:
        run, records = state["last_run"], state["stages"]
        print(f"\n{'=' * 100}\n{self.title}: this run took {format_seconds(run['seconds'])}", flush=True)
        width = max(len(name) for name in self.names + ["total"])
        for stage in self.stages:
            record = records.get(stage.name, {})
            if stage.name in run["ran"]:
                what = f"{record['status']} in {format_seconds(record['seconds'])}"
            elif stage.name in run["skipped"]:
                what = f"skipped, finished in an earlier run ({format_seconds(record['seconds'])})"
            else:
                what = "not selected"
            print(f"  {stage.name:<{width}} {what}", flush=True)
        print(f"  {'total':<{width}} {format_seconds(state['total_seconds'])} (every completed stage)", flush=True)


# ---------------------------------------------------------------- the state file


def now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def plain(value: Any) -> Any:
    """What `value` reads back as from JSON (tuples become lists): settings are compared that way."""
    return json.loads(json.dumps(value))


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Inside, SIGTERM raises KeyboardInterrupt in the main thread, as Ctrl-C does (see the module's docstring)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may handle signals
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def load_state(path: Path) -> dict[str, Any]:
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            print(f"warning: {path} is not valid JSON; every stage is checked again", flush=True)
    return {"stages": {}}


def save_state(path: Path, state: dict[str, Any]) -> None:
    text = json.dumps(state, indent=2, ensure_ascii=False) + "\n"
    write_file(path, lambda tmp: tmp.write_text(text))  # a kill never leaves half a state file


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"

"""From a cold start to speech: `echo-tts synthesize` timed as a whole, and where its time goes.

    python recipes/benchmark_cold_start.py                       # the bundled model and default voice
    python recipes/benchmark_cold_start.py --model runs/long/model --prompt me.wav --runs 5

Each run is a fresh Python process (nothing imported, nothing loaded; the files are in the page
cache and the compiled modules in `__pycache__` after the first run, which is a warm-up and not
counted), with `--threads` torch threads.
Two kinds of run alternate:

- the command itself, `python -m app.cli synthesize --text SENTENCE --out OUT.wav` (what the
  `echo-tts` script runs): its wall time, from starting the interpreter to its exit;
- the same command in a process that also times its parts, with the same start and end
  (`app.cli.parse`, `import_torch_quickly`, `handle`, `exit_quickly`):
  - import: the interpreter's start up to `app.tts` imported (torch, the models' code);
  - load: `TTS.from_pretrained`, reading the weights;
  - voice: loading the voice preset, or cleaning and encoding `--prompt`;
  - AR, NAR, decode: the three parts of the synthesis;
  - write: the audio file;
  - rest: the text front-end, chunking, trimming and joining, and the command's own work;
  - exit: from the command's end to the process's end, as the parent sees it.

Prints the median and range of each over `--runs` runs as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SENTENCE = "We waited almost twenty minutes for the bus, and then two of them came at once."  # about 3 s
PHASES = ["import", "load", "voice", "AR", "NAR", "decode", "write", "rest", "exit"]


def command(model: str | None, prompt: str | None, out: Path) -> list[str]:
    """The arguments of `echo-tts synthesize` for the benchmark's sentence."""
    argv = ["synthesize", "--text", SENTENCE, "--out", str(out)]
    argv += ["--model", model] if model else []
    argv += ["--prompt", prompt] if prompt else []
    return argv


def child(argv: list[str]) -> dict[str, float]:
    """`echo-tts` with these arguments in this process, timed by part -> seconds per part."""
    started = time.perf_counter()
    from app import cli

    parser, args = cli.parse(argv)
    cli.import_torch_quickly()
    import app.tts as tts_module
    import data.audio

    times = {"import": time.perf_counter() - started}

    def timed(name, function):
        def call(*args, **kwargs):
            mark = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                times[name] = times.get(name, 0.0) + time.perf_counter() - mark
        return call

    load = timed("load", tts_module.TTS.from_pretrained)

    def from_pretrained(*args, **kwargs):
        tts = load(*args, **kwargs)
        tts.codec.decode_expected = timed("decode", tts.codec.decode_expected)
        return tts

    tts_module.TTS.from_pretrained = from_pretrained
    tts_module.TTS.load_voice = timed("voice", tts_module.TTS.load_voice)
    tts_module.TTS.prepare_voice = timed("voice", tts_module.TTS.prepare_voice)
    tts_module.generate_ar = timed("AR", tts_module.generate_ar)
    tts_module.generate_nar = timed("NAR", tts_module.generate_nar)
    data.audio.write_audio = timed("write", data.audio.write_audio)
    mark = time.perf_counter()
    cli.handle(parser, args)
    times["rest"] = time.perf_counter() - mark - sum(times.get(p, 0.0) for p in PHASES[1:7])
    times["ended"] = time.perf_counter() - started  # the parent adds the exit
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="an exported model directory (default: the bundled model)")
    parser.add_argument("--prompt", default=None, help="a recording to clone (default: the bundled default voice)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (OMP_NUM_THREADS of each run)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child)))
        from app.cli import exit_quickly

        exit_quickly()  # as `echo-tts` ends
        return

    import soundfile

    # Python caches the compiled modules (__pycache__) on the first run, as it does on any machine where
    # PYTHONDONTWRITEBYTECODE is not set (some sandboxes and containers set it; pip compiles them at install)
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    environment["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "cold.wav"
        argv = command(args.model, args.prompt, out)
        plain, timed = [sys.executable, "-m", "app.cli", *argv], [sys.executable, __file__, "--child", *argv]
        walls, parts = [], []
        for k in range(args.runs + 1):
            for kind in (plain, timed):
                mark = time.perf_counter()
                done = subprocess.run(kind, capture_output=True, text=True, check=False, env=environment)
                wall = time.perf_counter() - mark
                if done.returncode != 0:
                    raise SystemExit(f"the cold start failed:\n{done.stderr}")
                if k == 0:
                    continue
                if kind is plain:
                    walls.append(wall)
                else:
                    times = json.loads(done.stdout.splitlines()[-1])
                    parts.append({**times, "exit": wall - times.pop("ended"), "wall": wall})
        seconds = soundfile.info(str(out)).duration
    print(f"{args.runs} cold starts of each kind, {args.threads} threads, {seconds:.2f} s of speech ({SENTENCE!r})\n")
    print("| | median (s) | range (s) |\n|---|---:|---:|")
    for name, values in [*((p, [run.get(p, 0.0) for run in parts]) for p in PHASES),
                         ("the timed process, wall", [run["wall"] for run in parts]),
                         ("`echo-tts synthesize`, wall", walls)]:
        print(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f}–{max(values):.3f} |")


if __name__ == "__main__":
    main()

"""From a cold start to speech: import, load the model, prepare the voice, write, fill and decode.

    python recipes/benchmark_cold_start.py                       # the bundled model and default voice
    python recipes/benchmark_cold_start.py --model runs/long/model --prompt me.wav --runs 5

Each run is a fresh Python process (nothing imported, nothing loaded, the files in the page cache
after the first), which times, with `--threads` torch threads:

- import: `from app.tts import TTS` (torch, the models' code);
- load: `TTS.from_pretrained(...)`, reading the weights;
- voice: loading the bundled voice preset, or cleaning and encoding `--prompt`;
- AR, NAR, decode: the three parts of `tts.synthesize(SENTENCE)`, timed inside it; `rest` is the
  text front-end, chunking, trimming and joining;

and the wall time of the whole process. Prints the median and range of each over `--runs` runs (the
first is a warm-up of the page cache and is not counted) as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

SENTENCE = "We waited almost twenty minutes for the bus, and then two of them came at once."  # about 3 s


def child(model: str | None, prompt: str | None, threads: int) -> dict[str, float]:
    """One cold start in this process -> seconds per phase."""
    start = time.perf_counter()
    import torch

    torch.set_num_threads(threads)
    import app.tts as tts_module
    from app.tts import TTS

    times = {"import": time.perf_counter() - start}
    mark = time.perf_counter()
    tts = TTS.from_pretrained(model)
    times["load"] = time.perf_counter() - mark
    mark = time.perf_counter()
    voice = tts.prepare_voice(prompt) if prompt is not None else tts.load_voice(tts.default_voice)
    times["voice"] = time.perf_counter() - mark

    spent = {"AR": 0.0, "NAR": 0.0, "decode": 0.0}

    def timed(name, function):
        def call(*args, **kwargs):
            mark = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - mark
        return call

    tts_module.generate_ar = timed("AR", tts_module.generate_ar)
    tts_module.generate_nar = timed("NAR", tts_module.generate_nar)
    tts.codec.decode_expected = timed("decode", tts.codec.decode_expected)
    mark = time.perf_counter()
    wav, sample_rate = tts.synthesize(SENTENCE, voice=voice)
    synthesis = time.perf_counter() - mark
    times.update(spent)
    times["rest"] = synthesis - sum(spent.values())
    times["audio seconds"] = len(wav) / sample_rate
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="an exported model directory (default: the bundled model)")
    parser.add_argument("--prompt", default=None, help="a recording to clone (default: the bundled default voice)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.prompt, args.threads)))
        return

    command = [sys.executable, __file__, "--child", "--threads", str(args.threads)]
    command += ["--model", args.model] if args.model else []
    command += ["--prompt", args.prompt] if args.prompt else []
    runs = []
    for k in range(args.runs + 1):
        mark = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - mark
        if done.returncode != 0:
            raise SystemExit(f"the cold start failed:\n{done.stderr}")
        if k > 0:
            runs.append({**json.loads(done.stdout.splitlines()[-1]), "process wall time": wall})
    print(f"{args.runs} cold starts, {args.threads} threads, {runs[0]['audio seconds']:.2f} s of speech "
          f"({SENTENCE!r})\n")
    print("| phase | median (s) | range (s) |\n|---|---:|---:|")
    for phase in ["import", "load", "voice", "AR", "NAR", "decode", "rest", "process wall time"]:
        values = [run[phase] for run in runs]
        print(f"| {phase} | {statistics.median(values):.3f} | {min(values):.3f}–{max(values):.3f} |")


if __name__ == "__main__":
    main()

"""The quickstart: from nothing to a cloned voice on a laptop CPU in one command (at most 30 minutes on 2 cores).

    python recipes/quickstart.py                                   # everything, into runs/quickstart
    python recipes/quickstart.py --preset tiny --run-dir runs/qs-tiny   # the same path in seconds (tests)
    python recipes/quickstart.py --from-stage lm                   # redo the LM and every stage after it
    python recipes/quickstart.py --only samples                    # redo the samples (and the report)

Stages, each calling a recipe's `main(argv)` in this process, into one run directory RUN:

    1 corpus    the built-in synthetic corpus               RUN/corpus/{train,dev,test}.jsonl
    2 codec     recipes/train_codec.py                      RUN/codec/model
    3 decoder   train_codec.py --decoder_only_from: the     RUN/decoder/model
                codec's decoder trains on, its tokens fixed
    4 tokens    recipes/tokenize_corpus.py (train + dev)    RUN/tokens
    5 align     recipes/align.py: each frame's phoneme      RUN/aligner, durations into RUN/tokens
    6 lm        recipes/train_lm.py, AR and NAR             RUN/lm/model (and RUN/lm/snapshots)
    7 export    the final model directory, with the         RUN/model (codec/, ar/, nar/, text/)
                decoder's codec
    8 samples   held-out sentences in held-out voices       RUN/samples/*.wav, samples.json
    9 evaluate  recipes/evaluate.py, when it exists         RUN/report/
   10 curve     the same on each AR snapshot                RUN/curve/learning_curve.json, *.png
   11 report    time per stage, what was skipped, paths     RUN/report.md, RUN/quickstart.json

Rerun and resume. RUN/quickstart.json records each stage: its status, wall seconds and the
settings it ran with. A stage is finished when its record says "completed" with today's
settings and its output exists; a rerun skips finished stages. A stage that is not finished
runs again and continues where it stopped: the corpus build keeps the audio already written,
the codec and LM trainings pass `--resume` when they have checkpoints, tokenization skips
the utterances already done. A stage that runs invalidates the stages that read its output:
their outputs are deleted and they run again. `--from-stage S` redoes S and every later
stage from scratch; `--only S ...` redoes just those (their inputs must be finished). The
report is rewritten whenever a stage ran. The sizes of each preset are in
recipes/configs/quickstart/ (the codec and LM sizes in their own cpu and tiny presets).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from data.prepare import SYNTHETIC_HELD_OUT_SPEAKERS
from data.synthetic import DEFAULT_NUM_SPEAKERS, SYNTHETIC_QUICKSTART_HOURS
from recipes.training import CONFIG_DIR, checkpoint_dirs, config_to_dict, load_config

RECIPES = Path(__file__).resolve().parent

STATE_FILE = "quickstart.json"
EVALUATE_SCRIPT = RECIPES / "evaluate.py"  # the evaluate stage runs its main(argv) when it exists


# ---------------------------------------------------------------- settings


@dataclass
class CorpusSettings:
    hours: float = SYNTHETIC_QUICKSTART_HOURS
    speakers: int = DEFAULT_NUM_SPEAKERS
    held_out_speakers: int = SYNTHETIC_HELD_OUT_SPEAKERS  # whole voices never trained on: the zero-shot test set
    dev_fraction: float = 0.02
    min_duration: float = 0.5
    max_duration: float = 20.0
    flite: bool = True  # flite's voices for a few speakers when the `flite` program is installed
    seed: int = 0
    workers: int = 0  # processes synthesizing; 0: one per core (the corpus does not depend on it)


@dataclass
class CodecSettings:
    preset: str = "cpu"  # recipes/configs/codec/<preset>.yaml
    overrides: dict[str, Any] = field(default_factory=dict)  # config keys: {"steps": 2000, "model.n_q": 4}


@dataclass
class DecoderSettings:
    # The codec's decoder trains on with its encoder and quantizer frozen (as Vocos renders EnCodec's
    # tokens): the tokens, hence the LMs, do not depend on this stage. The codec preset's settings but these.
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class TokensSettings:
    grouping: str = "frames"  # see recipes/tokenize_corpus.py --grouping
    batch_seconds: float = 60.0


@dataclass
class AlignSettings:
    overrides: dict[str, Any] = field(default_factory=dict)  # recipes/align.py config keys: {"steps": 600}


@dataclass
class LMSettings:
    preset: str = "cpu"  # recipes/configs/lm/<preset>.yaml
    overrides: dict[str, Any] = field(default_factory=dict)  # for every run below
    # train_lm.py runs, in order, each `--stage NAME` with its own overrides: "both" trains AR and NAR
    # side by side; {"ar": {...}, "nar": {...}} trains them one after the other.
    stages: dict[str, dict[str, Any]] = field(default_factory=lambda: {"both": {}})


@dataclass
class SamplesSettings:
    voices: int = 6  # held-out speakers, one sentence each, with and without the prompt's transcript
    max_prompt_seconds: float = 10.0
    seed: int = 0


@dataclass
class EvaluateSettings:
    max_items: int = 36
    # Voices judged (recipes/evaluate.py --families): pocketsphinx reads flite's voices, not eSpeak's.
    # Without flite installed there are none, and every held-out voice is evaluated.
    families: list[str] = field(default_factory=lambda: ["flite"])


@dataclass
class QuickstartConfig:
    corpus: CorpusSettings = field(default_factory=CorpusSettings)
    codec: CodecSettings = field(default_factory=CodecSettings)
    decoder: DecoderSettings = field(default_factory=DecoderSettings)
    tokens: TokensSettings = field(default_factory=TokensSettings)
    align: AlignSettings = field(default_factory=AlignSettings)
    lm: LMSettings = field(default_factory=LMSettings)
    samples: SamplesSettings = field(default_factory=SamplesSettings)
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)


@dataclass(frozen=True)
class Paths:
    """Where every stage reads and writes, under the run directory."""

    root: Path

    @property
    def corpus(self) -> Path:
        return self.root / "corpus"

    @property
    def codec(self) -> Path:
        return self.root / "codec"

    @property
    def codec_model(self) -> Path:
        return self.codec / "model"

    @property
    def decoder(self) -> Path:
        return self.root / "decoder"

    @property
    def decoder_model(self) -> Path:
        return self.decoder / "model"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens"

    @property
    def aligner(self) -> Path:
        return self.root / "aligner"

    @property
    def lm(self) -> Path:
        return self.root / "lm"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def evaluation(self) -> Path:
        return self.root / "report"

    @property
    def curve(self) -> Path:
        return self.root / "curve"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def state(self) -> Path:
        return self.root / STATE_FILE


def recipe_argv(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """{"lr": 3e-3, "prompt": {"mode": "speaker"}} -> ["--lr", "0.003", "--prompt.mode", "speaker"]."""
    argv = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            argv += recipe_argv(value, f"{prefix}{key}.")
        else:
            argv += [f"--{prefix}{key}", value if isinstance(value, str) else json.dumps(value)]  # JSON is YAML
    return argv


# ---------------------------------------------------------------- stages


@dataclass
class Context:
    paths: Paths
    config: QuickstartConfig
    state: dict[str, Any]  # the records of RUN/quickstart.json


@dataclass(frozen=True)
class Stage:
    name: str
    what: str  # the banner's line
    needs: tuple[str, ...]  # stages whose outputs this one reads
    home: Callable[[Paths], Path]  # its output, as the report names it
    outputs: Callable[[Paths], list[Path]]  # all exist once the stage has finished
    removes: Callable[[Paths], list[Path]]  # what redoing the stage from scratch deletes first
    run: Callable[[Context], dict[str, Any]]  # -> notes for the record
    settings: Callable[[QuickstartConfig], dict[str, Any]] = lambda config: {}
    unavailable: Callable[[], str | None] = lambda: None  # why the stage cannot run here, if it cannot
    optional: bool = False  # a failure is recorded and the run goes on to the report (then exits with an error)


def run_corpus(ctx: Context) -> dict[str, Any]:
    from data.prepare import add_arguments, run

    c, out = ctx.config.corpus, ctx.paths.corpus
    argv = ["synthetic", "--out", str(out), "--hours", str(c.hours), "--speakers", str(c.speakers),
            "--held-out-speakers", str(c.held_out_speakers), "--dev-fraction", str(c.dev_fraction),
            "--min-duration", str(c.min_duration), "--max-duration", str(c.max_duration), "--seed", str(c.seed)]
    if c.workers > 0:
        argv += ["--workers", str(c.workers)]
    if not c.flite:
        argv.append("--no-flite")
    parser = argparse.ArgumentParser(prog="prepare_data.py")
    add_arguments(parser)
    summaries = run(parser.parse_args(argv))
    for split in ("train", "dev", "test"):
        if summaries[split].utterances == 0:
            raise SystemExit(f"the corpus has no {split} utterance ({summaries[split]}); "
                             "raise --hours or change the corpus settings of the preset")
    return {"summary": {name: str(summary) for name, summary in summaries.items()}}


def _train_codec(ctx: Context, run_dir: Path, what: str, extra: list[str]) -> dict[str, Any]:
    """recipes/train_codec.py on the corpus into `run_dir`, resumed from its checkpoints if it has any."""
    from recipes import train_codec

    p = ctx.paths
    argv = ["--preset", ctx.config.codec.preset, "--train_manifest", str(p.corpus / "train.jsonl"),
            "--dev_manifest", str(p.corpus / "dev.jsonl"), "--run_dir", str(run_dir), *extra]
    resume = bool(checkpoint_dirs(run_dir))
    if resume:
        argv.append("--resume")
        print(f"continuing the {what} training from {checkpoint_dirs(run_dir)[-1]}", flush=True)
    train_codec.main(argv)
    return {"resumed": resume}


def run_codec(ctx: Context) -> dict[str, Any]:
    return _train_codec(ctx, ctx.paths.codec, "codec", recipe_argv(ctx.config.codec.overrides))


def run_decoder(ctx: Context) -> dict[str, Any]:
    p = ctx.paths
    return _train_codec(ctx, p.decoder, "decoder",
                        ["--decoder_only_from", str(p.codec_model), *recipe_argv(ctx.config.decoder.overrides)])


def run_tokens(ctx: Context) -> dict[str, Any]:
    from recipes import tokenize_corpus

    p, c = ctx.paths, ctx.config.tokens
    tokenize_corpus.main(["--codec", str(p.codec_model), "--manifest", str(p.corpus / "train.jsonl"),
                          "--manifest", str(p.corpus / "dev.jsonl"), "--out", str(p.tokens),
                          "--grouping", c.grouping, "--batch-seconds", str(c.batch_seconds)])
    return {}


def run_align(ctx: Context) -> dict[str, Any]:
    from recipes import align

    p = ctx.paths
    argv = ["--tokens", str(p.tokens), "--run_dir", str(p.aligner), *recipe_argv(ctx.config.align.overrides)]
    resume = (p.aligner / "model" / "config.json").is_file()
    return align.main(argv + (["--resume"] if resume else [])) | {"resumed": resume}


def run_lm(ctx: Context) -> dict[str, Any]:
    from recipes import train_lm

    p, c = ctx.paths, ctx.config.lm
    resumed = []
    for stage, overrides in c.stages.items():
        argv = ["--preset", c.preset, "--tokens", str(p.tokens), "--run_dir", str(p.lm),
                "--codec", str(p.codec_model), "--stage", stage, *recipe_argv(c.overrides), *recipe_argv(overrides)]
        found = checkpoint_dirs(p.lm, f"checkpoints-{stage}")
        if found:
            argv.append("--resume")
            resumed.append(stage)
            print(f"continuing the {stage} training from {found[-1]}", flush=True)
        train_lm.main(argv)
    validation = {}
    for stage in c.stages:
        path = p.lm / f"validation-{stage}.json"
        if path.is_file():
            validation[stage] = json.loads(path.read_text())
    return {"resumed": resumed, "validation": validation}


def run_export(ctx: Context) -> dict[str, Any]:
    p = ctx.paths
    tmp = p.root / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(p.lm / "model", tmp)
    shutil.rmtree(tmp / "codec")
    shutil.copytree(p.decoder_model, tmp / "codec")  # the same tokens as the LMs' codec, a better decoder
    shutil.rmtree(p.model, ignore_errors=True)
    os.replace(tmp, p.model)  # the model directory appears whole or not at all
    size = sum(f.stat().st_size for f in p.model.rglob("*") if f.is_file())
    print(f"model directory: {p.model} ({size / 1e6:.1f} MB)", flush=True)
    return {"megabytes": round(size / 1e6, 2)}


def pick_samples(test: list, voices: int, max_prompt_seconds: float) -> list[tuple[Any, Any]]:
    """(target, prompt) pairs from held-out speakers: the target's sentence is to be spoken in the voice of
    the prompt, another utterance of the same speaker (its longest one up to `max_prompt_seconds`)."""
    by_speaker: dict[str, list] = {}
    for utterance in sorted(test, key=lambda u: u.id):
        by_speaker.setdefault(utterance.speaker, []).append(utterance)
    pairs = []
    for speaker in sorted(by_speaker):
        utterances = by_speaker[speaker]
        prompts = [u for u in utterances if u.duration <= max_prompt_seconds]
        if len(utterances) < 2 or not prompts:
            continue
        prompt = max(prompts, key=lambda u: u.duration)
        others = [u for u in utterances if u.id != prompt.id]
        target = next((u for u in others if u.duration >= 2.0), others[0])  # a sentence, not a two-word one
        pairs.append((target, prompt))
        if len(pairs) == voices:
            break
    return pairs


def run_samples(ctx: Context) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from app import TTS, PromptError
    from data.audio import load_audio, write_audio
    from data.manifest import read_manifest

    p, c = ctx.paths, ctx.config.samples
    pairs = pick_samples(read_manifest(p.corpus / "test.jsonl"), c.voices, c.max_prompt_seconds)
    if not pairs:
        raise SystemExit(f"{p.corpus / 'test.jsonl'} has no held-out speaker with two utterances to sample from")
    tts = TTS.from_pretrained(p.model)
    sr = tts.sample_rate
    p.samples.mkdir(parents=True, exist_ok=True)
    records = []
    progress = tqdm(total=2 * len(pairs), desc="samples", unit="wav")
    for i, (target, prompt) in enumerate(pairs):
        stem = f"{i:02d}_{target.speaker}"
        record = {"speaker": target.speaker, "text": target.text, "prompt_text": prompt.text,
                  "prompt": f"{stem}_prompt.wav", "reference": f"{stem}_reference.wav",
                  "reference_seconds": round(target.duration, 2)}
        write_audio(p.samples / record["prompt"], load_audio(prompt.audio_path, sr)[0], sr)
        write_audio(p.samples / record["reference"], load_audio(target.audio_path, sr)[0], sr)  # the voice itself
        for key, prompt_text in (("cloned", None), ("cloned_with_prompt_text", prompt.text)):
            start = time.perf_counter()
            try:
                result = tts.generate(target.text, prompt.audio_path, prompt_text, seed=c.seed)
            except PromptError as e:
                tqdm.write(f"{prompt.audio_path} cannot be a prompt: {e}")
                progress.update(1)
                continue
            seconds = time.perf_counter() - start
            record[key] = f"{stem}_{key}.wav"
            record[f"{key}_seconds"] = round(result.duration, 2)
            record[f"{key}_real_time_factor"] = round(seconds / max(result.duration, 1e-3), 3)
            record[f"{key}_ended_by_model"] = all(segment.chosen.finished for segment in result.segments)  # EOS
            write_audio(p.samples / record[key], result.wav, sr)
            progress.update(1)
        records.append(record)
    progress.close()
    (p.samples / "samples.json").write_text(json.dumps(records, indent=2, ensure_ascii=False) + "\n")
    made = sum(key in r for r in records for key in ("cloned", "cloned_with_prompt_text"))
    if made == 0:
        raise SystemExit("no sample could be synthesized: every prompt was refused (see above)")
    print(f"{made} samples in {p.samples}", flush=True)
    return {"wavs": made, "voices": len(records)}


def evaluate_unavailable() -> str | None:
    if not EVALUATE_SCRIPT.is_file():
        return f"{EVALUATE_SCRIPT} does not exist"
    if "def main(" not in EVALUATE_SCRIPT.read_text(encoding="utf-8"):
        return f"{EVALUATE_SCRIPT} has no main(argv)"
    return None


def evaluate_model(ctx: Context, model: Path, out: Path, plot_runs: bool = True) -> dict[str, Any]:
    """recipes/evaluate.py on the held-out voices of the evaluated families -> its report.json."""
    from app.evaluation import read_voice_families
    from data.manifest import read_manifest

    # Loaded from its file: a top-level `evaluate` could be Hugging Face's package of that name.
    spec = importlib.util.spec_from_file_location("echo_recipes_evaluate", EVALUATE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    p, c = ctx.paths, ctx.config.evaluate
    argv = ["--model", str(model), "--manifest", str(p.corpus / "test.jsonl"), "--max-items", str(c.max_items),
            "--out", str(out)]
    if plot_runs:
        argv += ["--codec-run", str(p.codec), "--lm-run", str(p.lm)]
    held_out = {u.speaker for u in read_manifest(p.corpus / "test.jsonl")}
    engines = read_voice_families(p.corpus / "speakers.json")
    families = [f for f in c.families if any(engines.get(s) == f for s in held_out)]
    module.main(argv + (["--families", *families] if families else []))
    return json.loads((out / "report.json").read_text())


def run_evaluate(ctx: Context) -> dict[str, Any]:
    report = evaluate_model(ctx, ctx.paths.model, ctx.paths.evaluation)
    return {"metrics": {f"{system} {key}": value for system, target in report["targets"].items()
                        for key, value in target.items() if key in ("wer_ratio", "sim_own", "separation")}}


def run_curve(ctx: Context) -> dict[str, Any]:
    """Evaluate the AR's snapshots (train_lm.py --snapshot_every) with the final codec and NAR: quality
    against the minutes of training that led to each (codec, decoder, tokens, aligner, NAR, and the AR so far)."""
    from data.plots import plot_curves
    from recipes.train_lm import snapshots

    p, records = ctx.paths, ctx.state["stages"]
    before = sum(records[name]["seconds"] for name in ("codec", "decoder", "tokens", "align"))
    ar = snapshots(p.lm, "ar")
    nar = snapshots(p.lm, "nar")
    final_report = json.loads((p.evaluation / "report.json").read_text())
    if not ar or not nar:  # no snapshots asked for: the final model is the only point
        points = [(None, records["lm"]["seconds"], final_report)]
    else:
        points = []
        for directory, info in ar:
            home = p.curve / f"ar-step-{info['step']}"
            if info["step"] == ar[-1][1]["step"]:  # the exported model: the evaluate stage measured it
                report = final_report
            elif (home / "report" / "report.json").is_file():  # evaluated before an interruption
                report = json.loads((home / "report" / "report.json").read_text())
            else:
                model = home / "model"
                shutil.rmtree(model, ignore_errors=True)
                shutil.copytree(p.model, model, ignore=lambda folder, names: ["ar"] if Path(folder) == p.model else [])
                shutil.copytree(directory / "ar", model / "ar")
                report = evaluate_model(ctx, model, home / "report", plot_runs=False)
                shutil.rmtree(model)  # a copy of the final model but for the AR snapshot, which stays in lm/
            points.append((info["step"], nar[-1][1]["seconds"] + info["seconds"], report))
    curve = [{"ar_step": step, "minutes": round((before + seconds) / 60, 2),
              **{system: {k: target[k] for k in ("wer_ratio", "sim_own", "separation")}
                 for system, target in report["targets"].items()}}
             for step, seconds, report in points]
    p.curve.mkdir(parents=True, exist_ok=True)
    (p.curve / "learning_curve.json").write_text(json.dumps(curve, indent=2) + "\n")
    for metric, label in (("wer_ratio", "WER / ground truth's"), ("sim_own", "similarity to own voice")):
        series = {system: [(point["minutes"], point[system][metric]) for point in curve
                           if point.get(system, {}).get(metric) is not None]
                  for system in final_report["targets"]}
        plot_curves(series, p.curve / f"learning_curve_{metric}.png", f"learning curve: {label}",
                    xlabel="minutes of training (codec, decoder, tokens, aligner, NAR, AR)", ylabel=label)
    return {"points": [{"ar_step": point["ar_step"], "minutes": point["minutes"]} for point in curve]}


def run_report(ctx: Context) -> dict[str, Any]:
    p = ctx.paths
    ctx.state["paths"] = {"model": str(p.model), "samples": str(p.samples), "report": str(p.report),
                          "evaluation": str(p.evaluation), "state": str(p.state)}
    write_report(p, ctx.state)
    print(f"report: {p.report}", flush=True)
    return {}


STAGES: tuple[Stage, ...] = (
    Stage("corpus", "build the built-in synthetic corpus", (), home=lambda p: p.corpus,
          outputs=lambda p: [p.corpus / f"{n}.jsonl" for n in ("train", "dev", "test")] + [p.corpus / "summary.json"],
          removes=lambda p: [],  # rebuilt in place, reusing its audio (other voices: see run_stage)
          run=run_corpus, settings=lambda c: {k: v for k, v in asdict(c.corpus).items() if k != "workers"}),
    Stage("codec", "train the neural codec", ("corpus",), home=lambda p: p.codec_model,
          outputs=lambda p: [p.codec_model / "config.json", p.codec_model / "model.safetensors"],
          removes=lambda p: [p.codec], run=run_codec, settings=lambda c: asdict(c.codec)),
    Stage("decoder", "train the codec's decoder on, its tokens fixed", ("corpus", "codec"),
          home=lambda p: p.decoder_model,
          outputs=lambda p: [p.decoder_model / "config.json", p.decoder_model / "model.safetensors"],
          removes=lambda p: [p.decoder], run=run_decoder, settings=lambda c: asdict(c.decoder)),
    Stage("tokens", "encode and phonemize the train and dev utterances", ("corpus", "codec"), home=lambda p: p.tokens,
          outputs=lambda p: [p.tokens / "header.json"],
          removes=lambda p: [p.tokens], run=run_tokens, settings=lambda c: asdict(c.tokens)),
    Stage("align", "learn which phoneme each frame speaks (recipes/align.py)", ("tokens",), home=lambda p: p.aligner,
          outputs=lambda p: [p.aligner / "alignment.json"], removes=lambda p: [p.aligner], run=run_align,
          settings=lambda c: asdict(c.align)),
    Stage("lm", "train the AR and NAR language models", ("codec", "tokens", "align"), home=lambda p: p.lm / "model",
          outputs=lambda p: [p.lm / "model" / part for part in ("ar", "nar", "text", "codec")],
          removes=lambda p: [p.lm], run=run_lm, settings=lambda c: asdict(c.lm)),
    Stage("export", "write the final model directory", ("lm", "decoder"), home=lambda p: p.model,
          outputs=lambda p: [p.model / "codec" / "config.json", p.model / "ar" / "model.safetensors",
                             p.model / "nar" / "model.safetensors", p.model / "text" / "text_vocab.json"],
          removes=lambda p: [p.model], run=run_export),
    Stage("samples", "speak held-out sentences in held-out voices", ("corpus", "export"), home=lambda p: p.samples,
          outputs=lambda p: [p.samples / "samples.json"],
          removes=lambda p: [p.samples], run=run_samples, settings=lambda c: asdict(c.samples)),
    Stage("evaluate", "measure intelligibility and voice similarity (recipes/evaluate.py)",
          ("corpus", "codec", "decoder", "lm", "export"), home=lambda p: p.evaluation,
          outputs=lambda p: [p.evaluation], removes=lambda p: [p.evaluation], run=run_evaluate,
          settings=lambda c: asdict(c.evaluate), unavailable=evaluate_unavailable, optional=True),
    Stage("curve", "evaluate the AR's snapshots: quality against minutes of training",
          ("corpus", "codec", "decoder", "tokens", "align", "lm", "export", "evaluate"), home=lambda p: p.curve,
          outputs=lambda p: [p.curve / "learning_curve.json"], removes=lambda p: [p.curve], run=run_curve,
          settings=lambda c: asdict(c.evaluate), unavailable=evaluate_unavailable, optional=True),
    Stage("report", "write the report", (), home=lambda p: p.report,  # reads whatever the other stages left
          outputs=lambda p: [p.report], removes=lambda p: [p.report], run=run_report),
)
NAMES = [stage.name for stage in STAGES]
BY_NAME = {stage.name: stage for stage in STAGES}


def dependents(name: str) -> list[str]:
    """The stages that read `name`'s output, directly or not (and the report, which reads every stage)."""
    found = {name}
    for stage in STAGES:  # in order: a stage's inputs come before it
        if found & set(stage.needs):
            found.add(stage.name)
    if name != "report":
        found.add("report")
    return [n for n in NAMES if n in found and n != name]


# ---------------------------------------------------------------- the state file


def now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def plain(value: Any) -> Any:
    """What `value` reads back as from JSON (tuples become lists): settings are compared that way."""
    return json.loads(json.dumps(value))


def load_state(path: Path) -> dict[str, Any]:
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            print(f"warning: {path} is not valid JSON; every stage is checked again", flush=True)
    return {"stages": {}}


def save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def is_finished(stage: Stage, state: dict[str, Any], paths: Paths, config: QuickstartConfig) -> bool:
    record = state["stages"].get(stage.name)
    return (record is not None and record.get("status") == "completed"
            and record.get("settings") == plain(stage.settings(config))
            and all(path.exists() for path in stage.outputs(paths)))


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


# ---------------------------------------------------------------- the report


def write_report(paths: Paths, state: dict[str, Any]) -> None:
    """RUN/report.md: the time of every stage, what was skipped, the samples and where everything is."""
    run = state["last_run"]
    lines = [
        "# Echo quickstart report", "",
        f"Preset `{state['preset']}`, run directory `{paths.root}`, written {now()} by `{run['command']}`.", "",
        f"The model: `{paths.model}`.", "",
        "## Stages", "",
        "| stage | status | wall time | output |", "|---|---|---|---|",
    ]
    for stage in STAGES[:-1]:  # all but the report itself
        record = state["stages"].get(stage.name, {})
        status = record.get("status", "not run")
        if status == "skipped":
            status = f"skipped: {record.get('reason', '')}"
        elif status == "failed":
            status = f"failed: {record.get('error', '')}"
        elif status == "completed" and stage.name not in run["ran"]:
            status = "completed in an earlier run"
        seconds = format_seconds(record["seconds"]) if "seconds" in record else ""
        home = stage.home(paths).relative_to(paths.root).as_posix() + ("/" if not stage.home(paths).suffix else "")
        lines.append(f"| {stage.name} | {status} | {seconds} | `{home}` |")
    total = sum(r.get("seconds", 0.0) for r in state["stages"].values() if r.get("status") == "completed")
    lines += ["", f"Total wall time of the completed stages: **{format_seconds(total)}**.", ""]

    summary = paths.corpus / "summary.json"
    if summary.is_file():
        lines += ["## Corpus", "", "| split | hours | speakers | utterances |", "|---|---|---|---|"]
        for split, s in json.loads(summary.read_text()).items():
            lines.append(f"| {split} | {s['hours']:.3f} | {s['speakers']} | {s['utterances']} |")
        lines.append("")

    validation = state["stages"].get("lm", {}).get("validation", {})
    if validation:
        lines += ["## Language models on the dev set (last validation)", "",
                  "| run | step | model and codebook | top-1 | top-10 |", "|---|---|---|---|---|"]
        for stage, result in validation.items():
            for key, value in result.items():
                if key.endswith("/top1"):
                    name = key.removesuffix("/top1")
                    lines.append(f"| {stage} | {result.get('step', '')} | {name} | {value:.3f} "
                                 f"| {result.get(name + '/top10', float('nan')):.3f} |")
        reading = {k: v for result in validation.values() for k, v in result.items()
                   if k == "ar/reading_gap" or k.startswith("ar/attention/")}
        if reading:
            lines += ["", "Does the AR read? Top-1 with the real text minus top-1 with each item's text shuffled "
                      "(`reading_gap`), and its attention onto the text in its most focused layer: "
                      + ", ".join(f"{k.removeprefix('ar/')} {v:.3f}" for k, v in reading.items()) + "."]
        align = state["stages"].get("align", {})
        if "focus_rate" in align:
            lines += ["", f"The aligner: {align['frames_per_token']:.2f} frames per text token, soft-alignment "
                      f"focus rate {align['focus_rate']:.3f} (`{(paths.aligner / 'alignment.png').relative_to(paths.root)}`)."]
        lines.append("")

    samples = paths.samples / "samples.json"
    if samples.is_file():
        lines += ["## Samples: held-out sentences in held-out voices", "",
                  "Each voice is cloned from the `prompt`, one utterance of a speaker never trained on; `reference` is "
                  "that speaker reading the sentence itself.", "",
                  "| speaker | text | prompt | reference | cloned | cloned, given the prompt's text |",
                  "|---|---|---|---|---|---|"]
        for r in json.loads(samples.read_text()):
            cells = [f"[{r[k]}](samples/{r[k]})" if k in r else "failed"
                     for k in ("prompt", "reference", "cloned", "cloned_with_prompt_text")]
            lines.append(f"| {r['speaker']} | {r['text']} | " + " | ".join(cells) + " |")
        lines.append("")

    lines += ["## Evaluation", ""]
    evaluation = state["stages"].get("evaluate", {})
    if evaluation.get("status") == "completed":
        lines += [f"- {key}: {value}" for key, value in evaluation.get("metrics", {}).items()]
        tables = paths.evaluation / "tables.md"
        if tables.is_file():  # its tables, here; its figures stay behind the links below
            lines += ["#" + line if line.startswith("## ") else line for line in tables.read_text().splitlines()]
            lines.append("")
        files = sorted(f.relative_to(paths.root).as_posix() for f in paths.evaluation.rglob("*")
                       if f.is_file() and f.suffix in (".png", ".md", ".json"))
        lines += [f"- [{name}]({name})" for name in files] or ["(it wrote no files)"]
    else:
        why = evaluation.get("reason") or evaluation.get("error") or evaluation.get("status", "not reached")
        lines.append(f"Not run: {why}.")
    curve = paths.curve / "learning_curve.json"
    if curve.is_file():
        points = json.loads(curve.read_text())
        systems = [key for key in points[0] if key not in ("ar_step", "minutes")] if points else []
        lines += ["", "## Learning curve", "",
                  "Each AR snapshot with the final codec and NAR, on the same held-out sentences; minutes of training "
                  "of the codec, tokenization, aligner, NAR and the AR up to the snapshot.", "",
                  "| AR step | minutes | " + " | ".join(f"{s}: WER ÷ GT | similarity" for s in systems) + " |",
                  "|---|---|" + "---|---|" * len(systems)]
        for point in points:
            cells = [_figure(point[s]["wer_ratio"]) + " | " + _figure(point[s]["sim_own"]) for s in systems]
            lines.append(f"| {point['ar_step'] or 'final'} | {point['minutes']} | " + " | ".join(cells) + " |")
        lines += [""] + [f"![{f.stem}]({f.relative_to(paths.root).as_posix()})"
                         for f in sorted(paths.curve.glob("learning_curve_*.png"))]
    lines += [
        "", "## Use the model", "", "```bash",
        f'echo-tts synthesize --model {paths.model} --text "Hello there." --prompt voice.wav --out out.wav',
        "```", "", "```python", "from app import TTS", "",
        f'tts = TTS.from_pretrained("{paths.model}")',
        'wav, sr = tts.synthesize("Hello there.", "voice.wav", prompt_text="What voice.wav says.")',
        "```", "",
    ]
    paths.report.write_text("\n".join(lines))


def _figure(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--run-dir", type=Path, default=Path("runs/quickstart"), help="where everything goes")
    parser.add_argument("--preset", default="cpu",
                        help="cpu (the quickstart, at most 30 minutes on 2 cores), tiny (seconds, for tests) "
                             "or a YAML file like recipes/configs/quickstart/cpu.yaml")
    parser.add_argument("--hours", type=float,
                        help=f"hours of synthetic speech (default {SYNTHETIC_QUICKSTART_HOURS:g}; tiny: 0.01)")
    redo = parser.add_mutually_exclusive_group()
    redo.add_argument("--from-stage", choices=NAMES, help="redo this stage and every later one from scratch")
    redo.add_argument("--only", nargs="+", choices=NAMES, metavar="STAGE",
                      help=f"redo only these stages (then the report): {', '.join(NAMES)}")
    return parser


def check_run_dir(root: Path) -> None:
    """Redoing a stage deletes RUN/codec, RUN/model, ...: never in a source tree."""
    for marker in ("pyproject.toml", "setup.py", ".git"):
        if (root / marker).exists():
            raise SystemExit(f"{root} holds {marker}: choose a run directory of its own (default runs/quickstart)")


def corpus_voices(settings: dict[str, Any]) -> dict[str, Any]:
    return {key: settings.get(key) for key in ("speakers", "seed", "flite")}


def run_stage(stage: Stage, ctx: Context, redo: set[str], banner: str) -> float:
    """Clear what must go, run `stage`, record it; return its wall seconds (this attempt and earlier ones)."""
    paths, state = ctx.paths, ctx.state
    record = state["stages"].get(stage.name)
    settings = plain(stage.settings(ctx.config))
    changed = record is not None and record.get("settings") is not None and record["settings"] != settings
    if record is not None and (stage.name in redo or changed):  # redone from scratch: what it left goes first
        targets = stage.removes(paths)
        if stage.name == "corpus" and changed and corpus_voices(record["settings"]) != corpus_voices(settings):
            targets = [paths.corpus]  # other voices: the audio on disk cannot be reused (more hours can)
        for path in targets:
            if path.exists():
                print(f"removing {path} (the stage is redone from scratch)", flush=True)
                remove(path)
    for name in dependents(stage.name):  # built on what this stage is about to change
        for path in BY_NAME[name].removes(paths):
            if path.exists():
                print(f"removing {path} ({name} is redone after {stage.name})", flush=True)
                remove(path)
        state["stages"].pop(name, None)
    resuming = record is not None and record.get("status") in ("running", "interrupted", "failed") and not changed
    earlier = record.get("seconds", 0.0) if resuming and stage.name not in redo else 0.0  # before an interruption
    state["stages"][stage.name] = {"status": "running", "settings": settings, "started_at": now(), "seconds": earlier}
    save_state(paths.state, state)

    print(f"\n{'=' * 100}\n{banner}\n{'=' * 100}", flush=True)
    start = time.perf_counter()
    try:
        notes = stage.run(ctx)
    except BaseException as e:
        seconds = earlier + time.perf_counter() - start
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        error = f"{type(e).__name__}: {e}"[:1000]
        state["stages"][stage.name].update(status=status, seconds=round(seconds, 1), error=error)
        save_state(paths.state, state)
        print(f"\nstage {stage.name} {status} after {format_seconds(seconds)}; run the same command again to go on "
              "from there", file=sys.stderr, flush=True)
        if stage.optional and isinstance(e, Exception):
            traceback.print_exc()
            return seconds
        raise
    seconds = earlier + time.perf_counter() - start
    state["stages"][stage.name].update(status="completed", seconds=round(seconds, 1), finished_at=now(), **notes)
    return seconds


def main(argv: list[str] | None = None) -> Path:
    """Run the quickstart; return the final model directory."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    hours = {"corpus": {"hours": args.hours}} if args.hours is not None else {}
    config = load_config(QuickstartConfig, args.preset, hours, preset_dir=CONFIG_DIR / "quickstart")
    paths = Paths(args.run_dir)
    check_run_dir(paths.root)
    paths.root.mkdir(parents=True, exist_ok=True)
    state = load_state(paths.state)
    run = {"command": " ".join(["python recipes/quickstart.py", *argv]), "started_at": now(), "ran": [], "skipped": {}}
    state.update(preset=args.preset, config=config_to_dict(config), last_run=run)
    ctx = Context(paths, config, state)

    if args.only:
        selected, redo = set(args.only) | {"report"}, set(args.only)
        for name in args.only:
            missing = [need for need in BY_NAME[name].needs if not is_finished(BY_NAME[need], state, paths, config)]
            if missing:
                raise SystemExit(f"--only {name} reads the output of {', '.join(missing)}, which has not finished: "
                                 "run the quickstart without --only first")
    else:
        selected = set(NAMES)
        redo = set(NAMES[NAMES.index(args.from_stage):]) if args.from_stage else set()

    clock = time.perf_counter()
    print(f"Echo quickstart (preset {args.preset}) into {paths.root}", flush=True)
    for number, stage in enumerate(STAGES, start=1):
        if stage.name not in selected:
            continue
        banner = f"[{number}/{len(STAGES)}] {stage.name}: {stage.what}"
        if stage.name not in redo and is_finished(stage, state, paths, config):
            seconds = state["stages"][stage.name]["seconds"]
            print(f"\n{banner}\n    skipped: finished in an earlier run ({format_seconds(seconds)})", flush=True)
            run["skipped"][stage.name] = "finished"
            continue
        reason = stage.unavailable()
        if reason:
            print(f"\n{banner}\n    skipped: {reason}", flush=True)
            run["skipped"][stage.name] = reason
            state["stages"][stage.name] = {"status": "skipped", "reason": reason, "at": now()}
            save_state(paths.state, state)
            continue
        seconds = run_stage(stage, ctx, redo, banner)
        run["ran"].append(stage.name)
        save_state(paths.state, state)
        print(f"--- {stage.name}: {state['stages'][stage.name]['status']} in {format_seconds(seconds)} "
              f"(this run so far: {format_seconds(time.perf_counter() - clock)})", flush=True)

    run["seconds"] = round(time.perf_counter() - clock, 1)
    records = state["stages"]
    state["total_seconds"] = round(sum(r["seconds"] for r in records.values() if r.get("status") == "completed"), 1)
    save_state(paths.state, state)
    print(f"\n{'=' * 100}\nEcho quickstart: this run took {format_seconds(run['seconds'])}", flush=True)
    for stage in STAGES:
        record = records.get(stage.name, {})
        if stage.name in run["ran"]:
            what = f"{record['status']} in {format_seconds(record['seconds'])}"
        elif run["skipped"].get(stage.name) == "finished":
            what = f"skipped, finished in an earlier run ({format_seconds(record['seconds'])})"
        elif stage.name in run["skipped"]:
            what = f"skipped: {run['skipped'][stage.name]}"
        else:
            what = "not selected"
        print(f"  {stage.name:<9} {what}", flush=True)
    print(f"  {'total':<9} {format_seconds(state['total_seconds'])} (every completed stage)", flush=True)
    print(f"\nmodel:   {paths.model}\nsamples: {paths.samples}\nreport:  {paths.report}", flush=True)
    if records.get("evaluate", {}).get("status") == "completed":
        print(f"evaluation: {paths.evaluation}", flush=True)
    failed = [name for name in run["ran"] if records[name]["status"] == "failed"]
    if failed:
        raise SystemExit(f"the quickstart finished, but {', '.join(failed)} failed: {records[failed[0]]['error']}")
    return paths.model


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)  # the stage's record says where it stopped; the same command goes on from there

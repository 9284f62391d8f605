"""The quickstart: from nothing to a cloned voice on a laptop CPU in one command (25.8 minutes on the
2-core development machine, about twice that on a slow day).

    python recipes/quickstart.py                                   # everything, into runs/quickstart
    python recipes/quickstart.py --preset tiny --run-dir runs/qs-tiny   # the same path in seconds (tests)
    python recipes/quickstart.py --from-stage lm                   # redo the LM and every stage after it
    python recipes/quickstart.py --only samples                    # redo the samples (and the report)

Stages, each calling a recipe's `main(argv)` in this process (or its module under torchrun, for a training
stage given `processes`), into one run directory RUN:

    1 corpus    the built-in synthetic corpus               RUN/corpus/{train,dev,test}.jsonl
    2 codec     recipes/train_codec.py                      RUN/codec/model
    3 decoder   train_codec.py --decoder_only_from: the     RUN/decoder/model
                codec's decoder trains on, its tokens fixed
    4 tokens    recipes/tokenize_corpus.py (train + dev)    RUN/tokens
    5 align     recipes/align.py: each frame's phoneme      RUN/aligner, durations into RUN/tokens
    6 lm        recipes/train_lm.py, AR and NAR (a stage    RUN/lm/model (and RUN/lm/snapshots)
                may train in several processes: torchrun)
    7 export    the final model directory, with the         RUN/model (codec/, ar/, nar/, text/)
                decoder's codec
    8 samples   held-out sentences in held-out voices       RUN/samples/*.wav, samples.json
    9 evaluate  recipes/evaluate.py                         RUN/report/
   10 curve     the same on each AR snapshot                RUN/curve/learning_curve.json, *.png
   11 report    every stage's time and figures, as tables   RUN/report.md, RUN/quickstart.json
                (recipes/quickstart_report.py)

Rerun and resume. RUN/quickstart.json records each stage: its status, wall seconds and the
settings it ran with. A stage is finished when its record says "completed" with today's
settings and its output exists; a rerun skips finished stages. A stage that is not finished
runs again and continues where it stopped: the corpus build keeps the audio already written,
the codec and LM trainings pass `--resume` when they have checkpoints, tokenization skips
the utterances already done. A stage that runs invalidates the stages that read its output:
their outputs are deleted and they run again. `--from-stage S` redoes S and every later
stage from scratch; `--only S ...` redoes just those (their inputs must be finished). The
report is rewritten whenever a stage ran. The runner that does all this is recipes/stages.py;
this file holds the quickstart's settings and stage bodies. The sizes of each preset are in
recipes/configs/quickstart/ (the codec and LM sizes in their own cpu and tiny presets).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data.prepare import SYNTHETIC_HELD_OUT_SPEAKERS
from data.pretrained import write_directory
from data.synthetic import DEFAULT_NUM_SPEAKERS, SYNTHETIC_QUICKSTART_HOURS
from recipes.quickstart_report import write_report
from recipes.stages import Pipeline, Stage, load_state
from recipes.training import CONFIG_DIR, checkpoint_dirs, config_to_dict, load_config, run_recipe

STATE_FILE = "quickstart.json"


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
    # The training in this many processes of one torch thread each (torchrun, gloo), each with 1/processes
    # of the preset's batch, so that a step sees as much data as in one process (README, Figures: the quickstart).
    processes: int = 1


@dataclass
class DecoderSettings:
    # The codec's decoder trains on with its encoder and quantizer frozen (as Vocos renders EnCodec's
    # tokens): the tokens, hence the LMs, do not depend on this stage. The codec preset's settings but these.
    overrides: dict[str, Any] = field(default_factory=dict)
    processes: int = 1  # as CodecSettings.processes


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
    # Processes for each of those stages, as CodecSettings.processes: {"ar": 2}; a stage not named trains in one.
    processes: dict[str, int] = field(default_factory=dict)


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
    # Which targets the report judges against (app.evaluation.TARGETS): the quickstart's half hour
    # is held to 2.5 x the ground truth's WER, the long recipe to the release targets (1.5 x).
    targets: str = "quickstart"


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


def batch_shares(config: Any, keys: tuple[str, ...], processes: int) -> list[str]:
    """The overrides that give each of `processes` processes its share of `config`'s batch sizes `keys`."""
    argv = []
    for key in keys:
        size = getattr(config, key)
        if size % processes:
            raise SystemExit(f"{key}={size} cannot be shared by {processes} processes: set the stage's "
                             f"`processes` to a divisor of it, or {key} to a multiple of {processes}")
        argv += [f"--{key}", str(size // processes)]
    return argv


def _train_codec(ctx: Context, run_dir: Path, what: str, extra: list[str], processes: int) -> dict[str, Any]:
    """recipes/train_codec.py on the corpus into `run_dir`, resumed from its checkpoints if it has any."""
    from recipes.train_codec import TrainCodecConfig

    p, preset = ctx.paths, ctx.config.codec.preset
    overrides = ["--train_manifest", str(p.corpus / "train.jsonl"), "--dev_manifest", str(p.corpus / "dev.jsonl"),
                 "--run_dir", str(run_dir), *extra]
    argv = ["--preset", preset, *overrides]
    if processes > 1:
        config = load_config(TrainCodecConfig, preset, overrides, preset_dir=CONFIG_DIR / "codec")
        argv += batch_shares(config, ("batch_size", "phonetic_batch_size"), processes)
    resume = bool(checkpoint_dirs(run_dir))
    if resume:
        argv.append("--resume")
        print(f"continuing the {what} training from {checkpoint_dirs(run_dir)[-1]}", flush=True)
    run_recipe("recipes.train_codec", argv, processes)
    return {"resumed": resume}


def run_codec(ctx: Context) -> dict[str, Any]:
    c = ctx.config.codec
    return _train_codec(ctx, ctx.paths.codec, "codec", recipe_argv(c.overrides), c.processes)


def run_decoder(ctx: Context) -> dict[str, Any]:
    p, c = ctx.paths, ctx.config.decoder
    return _train_codec(ctx, p.decoder, "decoder", ["--decoder_only_from", str(p.codec_model), *recipe_argv(c.overrides)],
                        c.processes)


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
    from recipes.train_lm import TrainLMConfig

    p, c = ctx.paths, ctx.config.lm
    unknown = set(c.processes) - set(c.stages)
    if unknown:
        raise SystemExit(f"lm.processes names {sorted(unknown)}, which are not among the LM stages {list(c.stages)}")
    resumed = []
    for stage, overrides in c.stages.items():
        processes = c.processes.get(stage, 1)
        settings = ["--tokens", str(p.tokens), "--run_dir", str(p.lm), "--codec", str(p.codec_model), "--stage", stage,
                    *recipe_argv(c.overrides), *recipe_argv(overrides)]
        argv = ["--preset", c.preset, *settings]
        if processes > 1:
            config = load_config(TrainLMConfig, c.preset, settings, preset_dir=CONFIG_DIR / "lm")
            argv += batch_shares(config, ("max_frames",), processes)
        found = checkpoint_dirs(p.lm, f"checkpoints-{stage}")
        if found:
            argv.append("--resume")
            resumed.append(stage)
            print(f"continuing the {stage} training from {found[-1]}", flush=True)
        run_recipe("recipes.train_lm", argv, processes)
    validation = {}
    for stage in c.stages:
        path = p.lm / f"validation-{stage}.json"
        if path.is_file():
            validation[stage] = json.loads(path.read_text())
    return {"resumed": resumed, "validation": validation}


def run_export(ctx: Context) -> dict[str, Any]:
    p = ctx.paths

    def write(tmp: Path) -> None:
        shutil.copytree(p.lm / "model", tmp, dirs_exist_ok=True)
        shutil.rmtree(tmp / "codec")
        shutil.copytree(p.decoder_model, tmp / "codec")  # the same tokens as the LMs' codec, a better decoder

    # over an old model, text/ goes first and comes back last: TTS.from_pretrained refuses a model without it
    write_directory(p.model, write, marker="text")
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


def evaluate_model(ctx: Context, model: Path, out: Path, plot_runs: bool = True) -> dict[str, Any]:
    """recipes/evaluate.py on the held-out voices of the evaluated families -> its report.json."""
    from app.evaluation import read_voice_families
    from data.manifest import read_manifest
    from recipes import evaluate

    p, c = ctx.paths, ctx.config.evaluate
    argv = ["--model", str(model), "--manifest", str(p.corpus / "test.jsonl"), "--max-items", str(c.max_items),
            "--targets", c.targets, "--out", str(out)]
    if plot_runs:
        argv += ["--codec-run", str(p.codec), "--lm-run", str(p.lm)]
    held_out = {u.speaker for u in read_manifest(p.corpus / "test.jsonl")}
    engines = read_voice_families(p.corpus / "speakers.json")
    families = [f for f in c.families if any(engines.get(s) == f for s in held_out)]
    evaluate.main(argv + (["--families", *families] if families else []))
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
    write_report(p, ctx.state, {stage.name: stage.home(ctx) for stage in PIPELINE.stages if not stage.reads_all})
    print(f"report: {p.report}", flush=True)
    return {}


def training_settings(settings: Any) -> dict[str, Any]:
    """A training stage's settings as its record holds them: `processes` is left out when it is the default
    (one process), so that runs recorded before stages had it keep their stages."""
    recorded = asdict(settings)
    if recorded["processes"] in (1, {}):
        del recorded["processes"]
    return recorded


def corpus_removes_on_change(ctx: Context, recorded: dict[str, Any], settings: dict[str, Any]) -> list[Path]:
    """The corpus is rebuilt in place, reusing its audio (more hours can), unless its voices changed."""
    voices = ("speakers", "seed", "flite")
    return [ctx.paths.corpus] if any(recorded.get(k) != settings.get(k) for k in voices) else []


# The stages' functions are given the Context `c`.
PIPELINE: Pipeline[Context] = Pipeline([
    Stage("corpus", "build the built-in synthetic corpus", (), home=lambda c: c.paths.corpus,
          outputs=lambda c: [c.paths.corpus / f"{n}.jsonl" for n in ("train", "dev", "test")]
          + [c.paths.corpus / "summary.json"],
          removes=lambda c: [], removes_on_change=corpus_removes_on_change, run=run_corpus,
          settings=lambda c: {k: v for k, v in asdict(c.config.corpus).items() if k != "workers"}),
    Stage("codec", "train the neural codec", ("corpus",), home=lambda c: c.paths.codec_model,
          outputs=lambda c: [c.paths.codec_model / "config.json", c.paths.codec_model / "model.safetensors"],
          removes=lambda c: [c.paths.codec], run=run_codec, settings=lambda c: training_settings(c.config.codec)),
    Stage("decoder", "train the codec's decoder on, its tokens fixed", ("corpus", "codec"),
          home=lambda c: c.paths.decoder_model,
          outputs=lambda c: [c.paths.decoder_model / "config.json", c.paths.decoder_model / "model.safetensors"],
          removes=lambda c: [c.paths.decoder], run=run_decoder,
          settings=lambda c: training_settings(c.config.decoder)),
    Stage("tokens", "encode and phonemize the train and dev utterances", ("corpus", "codec"),
          home=lambda c: c.paths.tokens, outputs=lambda c: [c.paths.tokens / "header.json"],
          removes=lambda c: [c.paths.tokens], run=run_tokens, settings=lambda c: asdict(c.config.tokens)),
    Stage("align", "learn which phoneme each frame speaks (recipes/align.py)", ("tokens",),
          home=lambda c: c.paths.aligner, outputs=lambda c: [c.paths.aligner / "alignment.json"],
          removes=lambda c: [c.paths.aligner], run=run_align, settings=lambda c: asdict(c.config.align)),
    Stage("lm", "train the AR and NAR language models", ("codec", "tokens", "align"),
          home=lambda c: c.paths.lm / "model",
          outputs=lambda c: [c.paths.lm / "model" / part for part in ("ar", "nar", "text", "codec")],
          removes=lambda c: [c.paths.lm], run=run_lm, settings=lambda c: training_settings(c.config.lm)),
    Stage("export", "write the final model directory", ("lm", "decoder"), home=lambda c: c.paths.model,
          outputs=lambda c: [c.paths.model / "codec" / "config.json", c.paths.model / "ar" / "model.safetensors",
                             c.paths.model / "nar" / "model.safetensors", c.paths.model / "text" / "text_vocab.json"],
          removes=lambda c: [c.paths.model], run=run_export),
    Stage("samples", "speak held-out sentences in held-out voices", ("corpus", "export"),
          home=lambda c: c.paths.samples, outputs=lambda c: [c.paths.samples / "samples.json"],
          removes=lambda c: [c.paths.samples], run=run_samples, settings=lambda c: asdict(c.config.samples)),
    Stage("evaluate", "measure intelligibility and voice similarity (recipes/evaluate.py)",
          ("corpus", "codec", "decoder", "lm", "export"), home=lambda c: c.paths.evaluation,
          outputs=lambda c: [c.paths.evaluation], removes=lambda c: [c.paths.evaluation], run=run_evaluate,
          settings=lambda c: asdict(c.config.evaluate), optional=True),
    Stage("curve", "evaluate the AR's snapshots: quality against minutes of training",
          ("corpus", "codec", "decoder", "tokens", "align", "lm", "export", "evaluate"),
          home=lambda c: c.paths.curve, outputs=lambda c: [c.paths.curve / "learning_curve.json"],
          removes=lambda c: [c.paths.curve], run=run_curve, settings=lambda c: asdict(c.config.evaluate),
          optional=True),
    Stage("report", "write the report", (), home=lambda c: c.paths.report, outputs=lambda c: [c.paths.report],
          removes=lambda c: [c.paths.report], run=run_report, reads_all=True),
], title="Echo quickstart")
NAMES = PIPELINE.names


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--run-dir", type=Path, default=Path("runs/quickstart"), help="where everything goes")
    parser.add_argument("--preset", default="cpu",
                        help="cpu (the quickstart, about half an hour on 2 cores), tiny (seconds, for tests) "
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
    state.update(preset=args.preset, config=config_to_dict(config))
    ctx = Context(paths, config, state)

    print(f"Echo quickstart (preset {args.preset}) into {paths.root}", flush=True)
    failed = PIPELINE.run(ctx, state, paths.state, " ".join(["python recipes/quickstart.py", *argv]),
                          only=args.only, from_stage=args.from_stage)
    print(f"\nmodel:   {paths.model}\nsamples: {paths.samples}\nreport:  {paths.report}", flush=True)
    if state["stages"].get("evaluate", {}).get("status") == "completed":
        print(f"evaluation: {paths.evaluation}", flush=True)
    if failed:
        error = state["stages"][failed[0]]["error"]
        raise SystemExit(f"the quickstart finished, but {', '.join(failed)} failed: {error}")
    return paths.model


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)  # the stage's record says where it stopped; the same command goes on from there

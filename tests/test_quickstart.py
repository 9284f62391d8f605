"""The quickstart: its resumable runner (recipes/stages.py) on toy stages, then the whole quickstart on the
`tiny` preset: every stage, the report's figures, and reruns that skip, resume and redo.

The evaluate stage runs a fake `recipes.evaluate.main` that records its command line and writes a
report.json of the real one's shape: the real one has its own tests (tests/test_evaluate.py) and loads
its meters for tens of seconds.
"""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import soundfile as sf
import yaml

from recipes import evaluate, quickstart
from recipes.stages import Pipeline, Stage, format_seconds, load_state
from recipes.training import run_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- the runner, on two toy stages


def toy_pipeline(optional_b: bool = False) -> Pipeline:
    """a writes a.txt from its settings (then fails if told to); b copies it to b.txt; report lists them."""
    def run_a(ctx) -> dict:
        ctx.calls.append("a")
        ctx.a_found_its_output = (ctx.root / "a.txt").exists()
        (ctx.root / "a.txt").write_text(ctx.settings["a"])
        if ctx.fail == "a":
            raise ctx.error
        return {"wrote": "a.txt"}

    def run_b(ctx) -> dict:
        ctx.calls.append("b")
        if ctx.fail == "b":
            raise ctx.error
        (ctx.root / "b.txt").write_text((ctx.root / "a.txt").read_text())
        return {}

    def run_report(ctx) -> dict:
        ctx.calls.append("report")
        (ctx.root / "report.txt").write_text(" ".join(sorted(p.name for p in ctx.root.glob("?.txt"))))
        return {}

    return Pipeline([
        Stage("a", "write a", (), home=lambda c: c.root / "a.txt", outputs=lambda c: [c.root / "a.txt"],
              removes=lambda c: [c.root / "a.txt"], run=run_a, settings=lambda c: {"text": c.settings["a"]}),
        Stage("b", "copy a", ("a",), home=lambda c: c.root / "b.txt", outputs=lambda c: [c.root / "b.txt"],
              removes=lambda c: [c.root / "b.txt"], run=run_b, optional=optional_b),
        Stage("report", "list", (), home=lambda c: c.root / "report.txt", outputs=lambda c: [c.root / "report.txt"],
              removes=lambda c: [c.root / "report.txt"], run=run_report, reads_all=True),
    ], title="toy")


def toy_run(pipeline: Pipeline, root: Path, text: str = "x", fail: str | None = None,
            error: BaseException | None = None, **plan) -> tuple[SimpleNamespace, dict]:
    """One run of `pipeline` in `root` -> (the context, with the stages called; the state file). The stage
    `fail` raises `error` (default: RuntimeError("broken"))."""
    state_path = root / "state.json"
    state = load_state(state_path)
    ctx = SimpleNamespace(root=root, settings={"a": text}, calls=[], fail=fail, error=error or RuntimeError("broken"))
    ctx.failed = pipeline.run(ctx, state, state_path, "toy", **plan)
    return ctx, json.loads(state_path.read_text())


def test_the_runner_skips_finished_stages_and_redoes_what_reads_a_changed_one(tmp_path):
    pipeline = toy_pipeline()
    ctx, state = toy_run(pipeline, tmp_path)
    assert ctx.calls == ["a", "b", "report"] and state["last_run"]["ran"] == ctx.calls
    record = state["stages"]["a"]
    assert (record["status"], record["settings"], record["wrote"]) == ("completed", {"text": "x"}, "a.txt")
    assert state["total_seconds"] == pytest.approx(sum(r["seconds"] for r in state["stages"].values()), abs=0.2)

    ctx, state = toy_run(pipeline, tmp_path)
    assert ctx.calls == [] and state["last_run"]["skipped"] == {"a": "finished", "b": "finished", "report": "finished"}

    ctx, state = toy_run(pipeline, tmp_path, text="y")  # new settings: a from scratch, then all that reads it
    assert ctx.calls == ["a", "b", "report"] and not ctx.a_found_its_output
    assert (tmp_path / "b.txt").read_text() == "y"

    (tmp_path / "a.txt").unlink()  # a lost output: a runs again (resuming, not from scratch), and so does b
    ctx, state = toy_run(pipeline, tmp_path, text="y")
    assert ctx.calls == ["a", "b", "report"]


def test_from_stage_and_only_redo_what_they_name_and_drop_what_reads_it(tmp_path):
    pipeline = toy_pipeline()
    toy_run(pipeline, tmp_path)
    ctx, _ = toy_run(pipeline, tmp_path, from_stage="b")
    assert ctx.calls == ["b", "report"]
    ctx, _ = toy_run(pipeline, tmp_path, from_stage="a")
    assert ctx.calls == ["a", "b", "report"] and not ctx.a_found_its_output

    ctx, state = toy_run(pipeline, tmp_path, only=["a"])
    assert ctx.calls == ["a", "report"]
    assert "b" not in state["stages"] and not (tmp_path / "b.txt").exists()  # it read the old a
    assert (tmp_path / "report.txt").read_text() == "a.txt"
    ctx, _ = toy_run(pipeline, tmp_path)
    assert ctx.calls == ["b", "report"]

    with pytest.raises(SystemExit, match="--only b reads the output of a, which has not finished"):
        toy_run(pipeline, tmp_path / "fresh", only=["b"])
    with pytest.raises(ValueError, match="stage b needs \\['a'\\], which must be stages before it"):
        Pipeline([pipeline["b"], pipeline["a"]], title="wrong order")


def test_a_failed_stage_is_recorded_and_resumed_with_its_time(tmp_path):
    pipeline = toy_pipeline()
    with pytest.raises(RuntimeError, match="broken"):
        toy_run(pipeline, tmp_path, fail="a")
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["stages"]["a"]["status"] == "failed" and state["stages"]["a"]["error"] == "RuntimeError: broken"
    assert list(state["stages"]) == ["a"]

    state["stages"]["a"]["seconds"] = 100.0  # as a long attempt leaves it
    (tmp_path / "state.json").write_text(json.dumps(state))
    ctx, state = toy_run(pipeline, tmp_path)
    assert ctx.calls == ["a", "b", "report"] and ctx.a_found_its_output  # it goes on from what it left
    assert state["stages"]["a"]["status"] == "completed" and state["stages"]["a"]["seconds"] >= 100.0

    with pytest.raises(KeyboardInterrupt):
        toy_run(pipeline, tmp_path, fail="a", error=KeyboardInterrupt(), from_stage="a")
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["stages"]["a"]["status"] == "interrupted" and state["stages"]["a"]["seconds"] < 100.0


SLOW_STAGE = """
import sys, time
from pathlib import Path
from types import SimpleNamespace
from recipes.stages import Pipeline, Stage, load_state

root = Path(sys.argv[1])

def run_slow(ctx):
    (root / "started").write_text("yes")
    time.sleep(60)
    return {}

stage = Stage("slow", "sleep", (), home=lambda c: root / "out", outputs=lambda c: [root / "out"],
              removes=lambda c: [], run=run_slow)
Pipeline([stage], title="toy").run(SimpleNamespace(), load_state(root / "state.json"), root / "state.json", "toy")
"""


def test_a_kill_stops_a_run_as_ctrl_c_does_and_keeps_the_stages_time(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", SLOW_STAGE, str(tmp_path)], cwd=Path(__file__).parents[1],
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists():
        assert child.poll() is None and time.monotonic() < deadline, child.stderr.read() if child.poll() else "slow"
        time.sleep(0.05)
    time.sleep(0.5)
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=30)
    assert child.returncode != 0 and "stage slow interrupted" in stderr
    record = json.loads((tmp_path / "state.json").read_text())["stages"]["slow"]
    assert record["status"] == "interrupted" and 0.4 < record["seconds"] < 30
    assert "stopped by signal SIGTERM" in record["error"]


def test_an_optional_stage_that_fails_lets_the_run_go_on(tmp_path):
    pipeline = toy_pipeline(optional_b=True)
    ctx, state = toy_run(pipeline, tmp_path, fail="b")
    assert ctx.calls == ["a", "b", "report"] and ctx.failed == ["b"]
    assert state["stages"]["b"]["status"] == "failed" and state["stages"]["report"]["status"] == "completed"
    ctx, _ = toy_run(pipeline, tmp_path)
    assert ctx.calls == ["b", "report"] and ctx.failed == []


# ---------------------------------------------------------------- the tiny quickstart


def fake_evaluate(argv: list[str]) -> Path:
    """recipes/evaluate.py's main as far as the quickstart sees it: its argv, and a report.json of its shape."""
    out = Path(argv[argv.index("--out") + 1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "argv.json").write_text(json.dumps(argv))
    model = Path(argv[argv.index("--model") + 1])
    # A figure that tells the models apart: the curve must pair each snapshot with its own evaluation.
    wer_ratio = 0.5 if model.name == "model" and model.parent.name == "run" else 0.9
    row = {"items": 2, "cer": 0.25, "sim_prompt": 0.7, "duration": 2.0}
    summary = {"all": {
        "ground_truth": row | {"wer": 0.4, "sim_own": 0.9, "sim_others": 0.5, "separation": 0.4},
        "synthesis_with_text": row | {"wer": 0.4 * wer_ratio, "wer_ratio": wer_ratio,
                                      "wer_ratio_interval": [wer_ratio - 0.1, wer_ratio + 0.2],
                                      "sim_own": 0.8, "sim_others": 0.6, "separation": 0.2}}}
    targets = {"synthesis_with_text": {
        "wer_family": "all", "wer_ratio": wer_ratio, "wer_ratio_interval": [wer_ratio - 0.1, wer_ratio + 0.2],
        "wer_ratio_target": 1.5, "wer_ratio_met": True, "sim_own": 0.8, "sim_own_target": 0.75,
        "sim_own_met": True, "separation": 0.2, "ground_truth_separation": 0.4}}
    codec = {"summaries": [{"n_q": 2, "bitrate": 1000.0, "pesq": 1.5, "stoi": 0.8, "si_sdr": -20.0,
                            "mel_distance": 0.3, "decode_rtf": 0.1}],
             "usage": {"fraction_used": [0.5, 0.75], "perplexity": [10.0, 12.0], "codebook_size": 16}}
    report = {"command": "python recipes/evaluate.py " + " ".join(argv), "meters": {"asr": "fake", "speaker": "fake"},
              "summary": summary, "targets": targets, "codec": codec, "synthesis_rtf": 1.25,
              "attention": {"synthesis_with_text": {"focus_rate": 0.6, "monotonicity": 0.7, "alignment_error": 1.5}}}
    (out / "report.json").write_text(json.dumps(report))
    (out / "plots").mkdir(exist_ok=True)
    (out / "plots" / "attention.png").write_bytes(b"")
    return out


def run_quickstart(run_dir: Path, *args: str, evaluate_main=fake_evaluate) -> dict:
    """quickstart.main on the tiny preset -> the run's quickstart.json."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate, "main", evaluate_main)
        assert quickstart.main(["--preset", "tiny", "--run-dir", str(run_dir), *args]) == run_dir / "model"
    return json.loads((run_dir / "quickstart.json").read_text())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, one_thread) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("quickstart") / "run"
    return run_dir, run_quickstart(run_dir)


def copy_of(tiny_run, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run[0], run_dir)
    return run_dir


def markdown_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Each table of a markdown text, under the heading above it -> its rows, as {column: cell}."""
    tables, heading, header = {}, None, None
    for line in text.splitlines():
        if line.startswith("#"):
            heading, header = line.lstrip("# "), None
        elif line.startswith("|") and header is None:
            header = [cell.strip() for cell in line.strip("|").split(" | ")]
            tables.setdefault(heading, [])
        elif line.startswith("|") and not line.startswith("|---"):
            tables[heading].append(dict(zip(header, (cell.strip() for cell in line.strip("|").split(" | ")))))
        elif not line.startswith("|"):
            header = None
    return tables


def test_the_tiny_quickstart_leaves_a_model_samples_and_a_report(tiny_run):
    run_dir, state = tiny_run
    assert state["last_run"]["ran"] == quickstart.NAMES
    for name in quickstart.NAMES:
        record = state["stages"][name]
        assert record["status"] == "completed", (name, record)
        assert record["seconds"] >= 0.0
    assert state["total_seconds"] == pytest.approx(sum(r["seconds"] for r in state["stages"].values()), abs=0.5)
    assert state["paths"]["model"] == str(run_dir / "model")

    from app import TTS

    tts = TTS.from_pretrained(run_dir / "model")
    assert tts.codec.n_q == 2

    samples = json.loads((run_dir / "samples" / "samples.json").read_text())
    assert len(samples) == 1
    sample = samples[0]
    for key in ("prompt", "reference", "cloned", "cloned_with_prompt_text"):
        info = sf.info(str(run_dir / "samples" / sample[key]))
        assert info.samplerate == tts.sample_rate and info.frames > 0, key
    assert sample["cloned_ended_by_model"], "the tiny AR model must end the utterance itself"
    assert sample["speaker"] in (run_dir / "corpus" / "test.jsonl").read_text()  # a held-out voice

    argv = json.loads((run_dir / "report" / "argv.json").read_text())
    assert argv[argv.index("--model") + 1] == str(run_dir / "model")
    assert argv[argv.index("--manifest") + 1] == str(run_dir / "corpus" / "test.jsonl")
    assert argv[argv.index("--max-items") + 1] == "2"
    assert argv[argv.index("--lm-run") + 1] == str(run_dir / "lm")
    assert state["stages"]["evaluate"]["metrics"] == {"synthesis_with_text wer_ratio": 0.5,
                                                      "synthesis_with_text sim_own": 0.8,
                                                      "synthesis_with_text separation": 0.2}

    # The learning curve: the AR snapshot of step 200 evaluated with the final NAR, then the final model.
    curve = json.loads((run_dir / "curve" / "learning_curve.json").read_text())
    assert [point["ar_step"] for point in curve] == [200, 400]
    assert [point["synthesis_with_text"]["wer_ratio"] for point in curve] == [0.9, 0.5]
    assert 0 < curve[0]["minutes"] < curve[1]["minutes"]
    snapshot_argv = json.loads((run_dir / "curve" / "ar-step-200" / "report" / "argv.json").read_text())
    assert snapshot_argv[snapshot_argv.index("--model") + 1] == str(run_dir / "curve" / "ar-step-200" / "model")
    assert (run_dir / "curve" / "learning_curve_wer_ratio.png").is_file()
    assert not (run_dir / "curve" / "ar-step-200" / "model").exists()  # only the snapshot's evaluation stays


def test_the_report_holds_the_figures_in_its_tables(tiny_run):
    run_dir, state = tiny_run
    report = (run_dir / "report.md").read_text()
    tables = markdown_tables(report)

    stages = {row["stage"]: row for row in tables["Stages"]}
    assert list(stages) == quickstart.NAMES[:-1]
    for name, row in stages.items():
        assert row["status"] == "completed" and row["wall time"] == format_seconds(state["stages"][name]["seconds"])
    assert stages["lm"]["output"] == "`lm/model/`"

    corpus = json.loads((run_dir / "corpus" / "summary.json").read_text())
    assert {row["split"]: int(row["utterances"]) for row in tables["Corpus"]} == {
        split: s["utterances"] for split, s in corpus.items()}
    validation = state["stages"]["lm"]["validation"]
    top1 = {row["model and codebook"]: row["top-1"]
            for row in tables["Language models on the dev set (last validation)"]}
    assert top1["ar/codebook_1"] == f"{validation['ar']['ar/codebook_1/top1']:.3f}" and "nar/codebook_2" in top1
    assert {row["measure"] for row in tables["Does the AR read the dev set?"]} >= {"reading_gap",
                                                                                 "attention/focus_rate"}
    assert {row["measure"] for row in tables["The aligner"]} >= {"frames_per_token", "focus_rate"}

    [sample] = tables["Samples: held-out sentences in held-out voices"]
    seconds = json.loads((run_dir / "samples" / "samples.json").read_text())[0]["cloned_seconds"]
    assert sample["cloned"].startswith(f"[{seconds:.2f} s](samples/00_") and ", RTF " in sample["cloned"]

    assert tables["Zero-shot synthesis on held-out voices"] == [
        {"voices": "all", "system": "`ground_truth`", "items": "2", "WER": "40.0 %", "CER": "25.0 %",
         "WER ÷ GT": "–", "sim own voice": "0.90", "sim prompt": "0.70", "sim others": "0.50"},
        {"voices": "all", "system": "`synthesis_with_text`", "items": "2", "WER": "20.0 %", "CER": "25.0 %",
         "WER ÷ GT": "0.50 [0.40–0.70]", "sim own voice": "0.80", "sim prompt": "0.70", "sim others": "0.60"}]
    [target] = tables["Against the targets"]
    assert target["WER ÷ GT"] == "0.50 [0.40–0.70] (≤ 1.5: met)" and target["similarity to own voice"] == (
        "0.80 (≥ 0.75: met)") and target["own − others"] == "0.20"
    assert tables["Does the AR read the held-out sentences?"][0]["focus rate"] == "0.60"
    assert "Synthesis real-time factor: 1.25" in report
    codec = tables["The model's codec on the same recordings"]
    assert codec[0] == {"codebooks": "2", "kbps": "1.00", "PESQ": "1.50", "STOI": "0.800", "mel distance": "0.300",
                        "SI-SDR (dB)": "-20.0"}
    assert codec[1] == {"codebook": "codes used", "1": "50%", "2": "75%"}
    assert "[attention.png](report/plots/attention.png)" in report  # the plots stay links

    curve = tables["Learning curve"]
    assert [(row["AR step"], row["`synthesis_with_text` WER ÷ GT"]) for row in curve] == [("200", "0.90"),
                                                                                         ("400", "0.50")]


def test_a_rerun_skips_every_stage(tiny_run, capsys):
    run_dir, _ = tiny_run
    model_time = (run_dir / "model" / "ar" / "model.safetensors").stat().st_mtime_ns
    state = run_quickstart(run_dir)
    assert state["last_run"]["ran"] == []
    assert state["last_run"]["skipped"] == {name: "finished" for name in quickstart.NAMES}
    assert state["last_run"]["seconds"] < 5
    assert (run_dir / "model" / "ar" / "model.safetensors").stat().st_mtime_ns == model_time
    assert capsys.readouterr().out.count("skipped: finished in an earlier run") == len(quickstart.NAMES)


def test_a_deleted_lm_output_redoes_the_lm_and_what_follows(tiny_run, tmp_path):
    run_dir = copy_of(tiny_run, tmp_path)
    shutil.rmtree(run_dir / "lm" / "model")
    state = run_quickstart(run_dir)
    assert state["last_run"]["ran"] == ["lm", "export", "samples", "evaluate", "curve", "report"]
    assert list(state["last_run"]["skipped"]) == ["corpus", "codec", "decoder", "tokens", "align"]
    assert state["stages"]["lm"]["resumed"] == ["ar", "nar"]  # from the final checkpoints: nothing retrained
    assert (run_dir / "model" / "nar" / "model.safetensors").is_file()


def test_a_new_decoder_is_exported_without_training_the_lms_again(tiny_run, tmp_path):
    run_dir = copy_of(tiny_run, tmp_path)
    decoder = run_dir / "decoder" / "model" / "model.safetensors"
    assert (run_dir / "model" / "codec" / "model.safetensors").read_bytes() == decoder.read_bytes()
    shutil.rmtree(run_dir / "decoder")
    state = run_quickstart(run_dir)
    assert state["last_run"]["ran"] == ["decoder", "export", "samples", "evaluate", "curve", "report"]
    assert (run_dir / "model" / "codec" / "model.safetensors").read_bytes() == decoder.read_bytes()


def test_a_decoder_trained_in_two_processes_takes_half_the_batch_in_each(tiny_run, tmp_path):
    run_dir = copy_of(tiny_run, tmp_path)
    preset = tmp_path / "two.yaml"
    settings = yaml.safe_load((quickstart.CONFIG_DIR / "quickstart" / "tiny.yaml").read_text())
    settings["decoder"]["processes"] = 2
    preset.write_text(yaml.safe_dump(settings))
    shutil.rmtree(run_dir / "decoder")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate, "main", fake_evaluate)
        quickstart.main(["--preset", str(preset), "--run-dir", str(run_dir), "--only", "decoder"])
    state = json.loads((run_dir / "quickstart.json").read_text())
    assert state["stages"]["decoder"]["status"] == "completed"
    config = yaml.safe_load((run_dir / "decoder" / "config.yaml").read_text())
    assert (config["batch_size"], config["phonetic_batch_size"]) == (1, 2)  # tiny's 2 and 4, shared by two
    assert (run_dir / "decoder" / "model" / "model.safetensors").is_file()


def test_a_batch_that_processes_cannot_share_is_refused():
    config = SimpleNamespace(batch_size=16, max_frames=3001)
    assert quickstart.batch_shares(config, ("batch_size",), 2) == ["--batch_size", "8"]
    with pytest.raises(SystemExit, match="max_frames=3001 cannot be shared by 2 processes"):
        quickstart.batch_shares(config, ("max_frames",), 2)


def test_ctrl_c_stops_a_training_in_two_processes_and_its_workers(tiny_run, tmp_path):
    corpus, run_dir = tiny_run[0] / "corpus", tmp_path / "codec"
    argv = ["--preset", "tiny", "--train_manifest", str(corpus / "train.jsonl"), "--dev_manifest",
            str(corpus / "dev.jsonl"), "--run_dir", str(run_dir), "--steps", "100000", "--checkpoint_every", "2",
            "--val_every", "100000"]
    script = f"from recipes.training import run_recipe; run_recipe('recipes.train_codec', {argv!r}, 2)"
    parent = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 120
    while not list((run_dir / "checkpoints").glob("step-*")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert list((run_dir / "checkpoints").glob("step-*")), "the two processes wrote no checkpoint"
    parent.send_signal(signal.SIGINT)  # Ctrl-C, to the quickstart's process alone
    assert parent.wait(timeout=90) != 0
    left = subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True, text=True).stdout.split()
    assert not left, f"training processes outlived the launcher: {left}"


def test_processes_for_an_lm_stage_that_does_not_run_are_refused(tmp_path):
    config = quickstart.QuickstartConfig()
    config.lm.stages = {"ar": {}, "nar": {}}
    config.lm.processes = {"both": 2}
    ctx = quickstart.Context(quickstart.Paths(tmp_path), config, {"stages": {}})
    with pytest.raises(SystemExit, match=r"lm.processes names \['both'\], which are not among the LM stages"):
        quickstart.run_lm(ctx)


def test_a_recipe_that_fails_in_two_processes_raises_with_its_status():
    with pytest.raises(RuntimeError, match="recipes.train_codec in 2 processes exited with status"):
        run_recipe("recipes.train_codec", ["--preset", "tiny", "--no_such_setting", "1"], processes=2)


def test_from_stage_and_only_redo_what_they_name(tiny_run, tmp_path):
    run_dir = copy_of(tiny_run, tmp_path)
    state = run_quickstart(run_dir, "--from-stage", "samples")
    assert state["last_run"]["ran"] == ["samples", "evaluate", "curve", "report"]

    state = run_quickstart(run_dir, "--only", "samples")
    assert state["last_run"]["ran"] == ["samples", "report"]
    assert state["stages"]["evaluate"]["status"] == "completed"  # nothing of evaluate reads the samples


def test_an_interrupted_stage_is_recorded_and_resumed(tiny_run, tmp_path):
    run_dir = copy_of(tiny_run, tmp_path)
    from app.tts import TTS

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TTS, "generate", interrupt)
        with pytest.raises(KeyboardInterrupt):
            run_quickstart(run_dir, "--from-stage", "samples")
    state = json.loads((run_dir / "quickstart.json").read_text())
    assert state["stages"]["samples"]["status"] == "interrupted"
    assert "report" not in state["stages"] and not (run_dir / "report.md").exists()  # it reads the samples

    state = run_quickstart(run_dir)
    assert state["last_run"]["ran"] == ["samples", "report"]
    assert state["stages"]["samples"]["status"] == "completed"


def test_an_interrupted_curve_keeps_the_snapshots_it_evaluated(tiny_run, tmp_path):
    run_dir = copy_of(tiny_run, tmp_path)
    evaluated = run_dir / "curve" / "ar-step-200" / "report" / "argv.json"
    before = evaluated.stat().st_mtime_ns
    state = json.loads((run_dir / "quickstart.json").read_text())
    state["stages"]["curve"]["status"] = "interrupted"  # as a kill after the first snapshot's evaluation leaves it
    (run_dir / "quickstart.json").write_text(json.dumps(state))
    (run_dir / "curve" / "learning_curve.json").unlink()

    state = run_quickstart(run_dir)
    assert state["last_run"]["ran"] == ["curve", "report"]
    assert evaluated.stat().st_mtime_ns == before  # not evaluated again
    curve = json.loads((run_dir / "curve" / "learning_curve.json").read_text())
    assert [point["synthesis_with_text"]["wer_ratio"] for point in curve] == [0.9, 0.5]


def test_a_failed_evaluation_is_recorded_and_the_report_still_written(tiny_run, tmp_path):
    run_dir = copy_of(tiny_run, tmp_path)

    def no_meters(argv):
        raise RuntimeError("no ASR here")

    with pytest.raises(SystemExit, match="evaluate, curve failed: RuntimeError: no ASR here"):
        run_quickstart(run_dir, "--from-stage", "evaluate", evaluate_main=no_meters)
    state = json.loads((run_dir / "quickstart.json").read_text())
    assert state["last_run"]["ran"] == ["evaluate", "curve", "report"]
    assert state["stages"]["evaluate"]["error"] == "RuntimeError: no ASR here"
    assert state["stages"]["curve"]["status"] == "failed"  # it has no evaluation to start from
    report = (run_dir / "report.md").read_text()
    assert "| evaluate | failed: RuntimeError: no ASR here |" in report
    assert "Not run: RuntimeError: no ASR here." in report and "## Learning curve" not in report

    state = run_quickstart(run_dir)  # the meters are back: the same command goes on
    assert state["last_run"]["ran"] == ["evaluate", "curve", "report"]
    assert state["stages"]["curve"]["status"] == "completed"


def test_an_old_state_file_resumes(tiny_run, tmp_path):
    """quickstart.json as the quickstart wrote it before its runner was split out (runs/long3 resumes from
    one, killed while its decoder trained): that stage goes on, then what reads it; the finished ones stay."""
    run_dir = copy_of(tiny_run, tmp_path)
    state = json.loads((run_dir / "quickstart.json").read_text())
    kept = ("corpus", "codec", "tokens", "align", "lm")
    old = {"stages": {name: state["stages"][name] for name in kept}, "preset": "tiny", "config": state["config"],
           "last_run": {"command": "python recipes/quickstart.py --preset tiny",
                        "started_at": "2026-12-01T15:25:55+00:00", "ran": [], "skipped": {}}}
    old["stages"]["codec"]["settings"] = {"preset": "tiny", "overrides": {}}  # before stages had `processes`
    old["stages"]["decoder"] = {"status": "running", "settings": state["stages"]["decoder"]["settings"],
                                "started_at": "2026-12-01T18:49:40+00:00", "seconds": 12.5}
    (run_dir / "quickstart.json").write_text(json.dumps(old))
    state = run_quickstart(run_dir)
    assert list(state["last_run"]["skipped"]) == list(kept)
    assert state["last_run"]["ran"] == ["decoder", "export", "samples", "evaluate", "curve", "report"]
    assert state["stages"]["decoder"]["seconds"] >= 12.5  # the time before the kill counts


def test_only_needs_the_stages_it_reads_and_a_run_directory_of_its_own(tmp_path):
    with pytest.raises(SystemExit, match="reads the output of codec, tokens"):
        quickstart.main(["--preset", "tiny", "--run-dir", str(tmp_path / "run"), "--only", "lm"])
    with pytest.raises(SystemExit, match="pyproject.toml"):
        quickstart.main(["--preset", "tiny", "--run-dir", str(Path(__file__).resolve().parents[1]), "--only", "lm"])


def test_the_report_says_how_well_a_pitch_codecs_nar_says_the_pitch():
    from recipes.quickstart_report import _language_models

    validation = {"nar": {"step": 300, "nar/codebook_2/top1": 0.5, "nar/codebook_2/top10": 0.9,
                          "nar/pitch/voicing": 0.777, "nar/pitch/within_semitone": 0.371}}
    tables = markdown_tables("\n".join(_language_models({"stages": {"lm": {"validation": validation}}})))
    assert {row["measure"]: row["value"] for row in tables["Does the NAR say the pitch?"]} == {
        "voicing": "0.777", "within_semitone": "0.371"}
    without = {"nar": {"step": 300, "nar/codebook_2/top1": 0.5, "nar/codebook_2/top10": 0.9}}
    assert "Does the NAR say the pitch?" not in "\n".join(_language_models({"stages": {"lm": {"validation": without}}}))

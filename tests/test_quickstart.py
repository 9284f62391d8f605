"""The quickstart end to end on the `tiny` preset: every stage, then reruns that skip, resume and redo.

The evaluate stage runs a stub of recipes/evaluate.py that records its command line: the real
one has its own tests (tests/test_evaluate.py) and loads its meters for tens of seconds.
"""

import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from recipes import quickstart

pytestmark = pytest.mark.usefixtures("one_thread")

STUB = '''
import json
from pathlib import Path


def main(argv):
    out = Path(argv[argv.index("--out") + 1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "argv.json").write_text(json.dumps(argv))
    model = Path(argv[argv.index("--model") + 1])
    # A figure that tells the models apart: the curve must pair each snapshot with its own evaluation.
    wer_ratio = 0.5 if model.name == "model" and model.parent.name == "run" else 0.9
    targets = {"synthesis_with_text": {"wer_ratio": wer_ratio, "sim_own": 0.8, "separation": 0.2, "met": False}}
    (out / "report.json").write_text(json.dumps({"targets": targets}))
    return out
'''


@pytest.fixture(scope="module")
def evaluate_stub(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipes") / "evaluate.py"
    path.write_text(STUB)
    return path


def run_quickstart(run_dir: Path, *args: str, evaluate: Path) -> dict:
    """quickstart.main on the tiny preset -> the run's quickstart.json."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quickstart, "EVALUATE_SCRIPT", evaluate)
        assert quickstart.main(["--preset", "tiny", "--run-dir", str(run_dir), *args]) == run_dir / "model"
    return json.loads((run_dir / "quickstart.json").read_text())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, evaluate_stub, one_thread) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("quickstart") / "run"
    return run_dir, run_quickstart(run_dir, evaluate=evaluate_stub)


def copy_of(tiny_run, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run[0], run_dir)
    return run_dir


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

    report = (run_dir / "report.md").read_text()
    for name in quickstart.NAMES[:-1]:
        assert f"| {name} | completed |" in report
    assert "samples/00_" in report and "report/argv.json" in report and "wer_ratio: 0.5" in report
    assert "## Learning curve" in report and "| 200 |" in report


def test_a_rerun_skips_every_stage(tiny_run, evaluate_stub, capsys):
    run_dir, _ = tiny_run
    model_time = (run_dir / "model" / "ar" / "model.safetensors").stat().st_mtime_ns
    state = run_quickstart(run_dir, evaluate=evaluate_stub)
    assert state["last_run"]["ran"] == []
    assert state["last_run"]["skipped"] == {name: "finished" for name in quickstart.NAMES}
    assert state["last_run"]["seconds"] < 5
    assert (run_dir / "model" / "ar" / "model.safetensors").stat().st_mtime_ns == model_time
    assert capsys.readouterr().out.count("skipped: finished in an earlier run") == len(quickstart.NAMES)


def test_a_deleted_lm_output_redoes_the_lm_and_what_follows(tiny_run, evaluate_stub, tmp_path):
    run_dir = copy_of(tiny_run, tmp_path)
    shutil.rmtree(run_dir / "lm" / "model")
    state = run_quickstart(run_dir, evaluate=evaluate_stub)
    assert state["last_run"]["ran"] == ["lm", "export", "samples", "evaluate", "curve", "report"]
    assert list(state["last_run"]["skipped"]) == ["corpus", "codec", "decoder", "tokens", "align"]
    assert state["stages"]["lm"]["resumed"] == ["ar", "nar"]  # from the final checkpoints: nothing retrained
    assert (run_dir / "model" / "nar" / "model.safetensors").is_file()


def test_a_new_decoder_is_exported_without_training_the_lms_again(tiny_run, evaluate_stub, tmp_path):
    run_dir = copy_of(tiny_run, tmp_path)
    decoder = run_dir / "decoder" / "model" / "model.safetensors"
    assert (run_dir / "model" / "codec" / "model.safetensors").read_bytes() == decoder.read_bytes()
    shutil.rmtree(run_dir / "decoder")
    state = run_quickstart(run_dir, evaluate=evaluate_stub)
    assert state["last_run"]["ran"] == ["decoder", "export", "samples", "evaluate", "curve", "report"]
    assert (run_dir / "model" / "codec" / "model.safetensors").read_bytes() == decoder.read_bytes()


def test_from_stage_and_only_redo_what_they_name(tiny_run, evaluate_stub, tmp_path):
    run_dir = copy_of(tiny_run, tmp_path)
    state = run_quickstart(run_dir, "--from-stage", "samples", evaluate=evaluate_stub)
    assert state["last_run"]["ran"] == ["samples", "evaluate", "curve", "report"]

    state = run_quickstart(run_dir, "--only", "samples", evaluate=evaluate_stub)
    assert state["last_run"]["ran"] == ["samples", "report"]
    assert state["stages"]["evaluate"]["status"] == "completed"  # nothing of evaluate reads the samples


def test_an_interrupted_stage_is_recorded_and_resumed(tiny_run, evaluate_stub, tmp_path):
    run_dir = copy_of(tiny_run, tmp_path)
    from app.tts import TTS

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TTS, "generate", interrupt)
        with pytest.raises(KeyboardInterrupt):
            run_quickstart(run_dir, "--from-stage", "samples", evaluate=evaluate_stub)
    state = json.loads((run_dir / "quickstart.json").read_text())
    assert state["stages"]["samples"]["status"] == "interrupted"
    assert "report" not in state["stages"] and not (run_dir / "report.md").exists()  # it reads the samples

    state = run_quickstart(run_dir, evaluate=evaluate_stub)
    assert state["last_run"]["ran"] == ["samples", "report"]
    assert state["stages"]["samples"]["status"] == "completed"


def test_an_interrupted_curve_keeps_the_snapshots_it_evaluated(tiny_run, evaluate_stub, tmp_path):
    run_dir = copy_of(tiny_run, tmp_path)
    evaluated = run_dir / "curve" / "ar-step-200" / "report" / "argv.json"
    before = evaluated.stat().st_mtime_ns
    state = json.loads((run_dir / "quickstart.json").read_text())
    state["stages"]["curve"]["status"] = "interrupted"  # as a kill after the first snapshot's evaluation leaves it
    (run_dir / "quickstart.json").write_text(json.dumps(state))
    (run_dir / "curve" / "learning_curve.json").unlink()

    state = run_quickstart(run_dir, evaluate=evaluate_stub)
    assert state["last_run"]["ran"] == ["curve", "report"]
    assert evaluated.stat().st_mtime_ns == before  # not evaluated again
    curve = json.loads((run_dir / "curve" / "learning_curve.json").read_text())
    assert [point["synthesis_with_text"]["wer_ratio"] for point in curve] == [0.9, 0.5]


def test_without_evaluate_py_the_stage_is_skipped_with_its_reason(tiny_run, tmp_path):
    run_dir = copy_of(tiny_run, tmp_path)
    missing = tmp_path / "evaluate.py"
    state = run_quickstart(run_dir, "--from-stage", "evaluate", evaluate=missing)
    assert state["last_run"]["skipped"] == {"evaluate": f"{missing} does not exist",
                                            "curve": f"{missing} does not exist"} | {
        name: "finished" for name in quickstart.NAMES[:8]}
    assert state["stages"]["evaluate"]["status"] == "skipped"
    assert f"Not run: {missing} does not exist" in (run_dir / "report.md").read_text()


def test_only_needs_the_stages_it_reads_and_a_run_directory_of_its_own(tmp_path):
    with pytest.raises(SystemExit, match="reads the output of codec, tokens"):
        quickstart.main(["--preset", "tiny", "--run-dir", str(tmp_path / "run"), "--only", "lm"])
    with pytest.raises(SystemExit, match="pyproject.toml"):
        quickstart.main(["--preset", "tiny", "--run-dir", str(Path(__file__).resolve().parents[1]), "--only", "lm"])

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from codec.loading import load_codec
from conftest import launch_two_processes, recorded
from data.prepare import write_corpus
from data.synthetic import build_synthetic_corpus
from recipes.train_codec import TrainCodecConfig
from recipes.training import (
    CONFIG_DIR, checkpoint_dirs, load_config, lr_at, parse_overrides, resume_from_checkpoint, save_checkpoint,
)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    utterances = build_synthetic_corpus(out, hours=0.01, num_speakers=4, sample_rate=16000, workers=1, use_flite=False)
    write_corpus(out, utterances, {}, min_duration=0.3, max_duration=20, dev_fraction=0.2, held_out_speakers=0, seed=0)
    return out


def train(corpus: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    args = [
        sys.executable, str(RECIPES / "train_codec.py"), "--preset", "tiny",
        "--train_manifest", str(corpus / "train.jsonl"), "--dev_manifest", str(corpus / "dev.jsonl"),
        "--run_dir", str(run_dir), *extra,
    ]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    return output


def test_presets_load_with_typed_overrides():
    cfg = load_config(TrainCodecConfig, "cpu", ["--steps", "7", "--model.n_q=2", "--betas", "[0.5, 0.9]"],
                      preset_dir=CONFIG_DIR / "codec")
    assert cfg.steps == 7 and cfg.model.n_q == 2 and cfg.betas == (0.5, 0.9)
    assert cfg.model.sample_rate == 16000  # from the preset
    with pytest.raises(ValueError, match="unknown config key 'model.n_codebooks'"):
        load_config(TrainCodecConfig, "tiny", ["--model.n_codebooks", "4"], preset_dir=CONFIG_DIR / "codec")
    with pytest.raises(ValueError, match="steps must be int"):
        load_config(TrainCodecConfig, "tiny", ["--steps", "many"], preset_dir=CONFIG_DIR / "codec")
    with pytest.raises(ValueError, match="not a multiple of the hop length"):
        load_config(TrainCodecConfig, "tiny", ["--model.strides", "[3, 7]"], preset_dir=CONFIG_DIR / "codec")
    with pytest.raises(FileNotFoundError, match="available: base, cpu, tiny"):
        load_config(TrainCodecConfig, "huge", [], preset_dir=CONFIG_DIR / "codec")
    assert parse_overrides(["--a.b-c=1"]) == {"a": {"b_c": 1}}


def test_lr_schedule_warms_up_then_decays():
    lrs = [lr_at(step, 1.0, warmup_steps=10, total_steps=100) for step in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] == pytest.approx(0.1, abs=0.01)


def test_train_is_killed_resumes_and_exports(corpus, tmp_path):
    run_dir = tmp_path / "run"
    process = train(corpus, run_dir, "--steps", "1000", "--checkpoint_every", "2", "--val_every", "1000")
    deadline = time.time() + 240
    while not checkpoint_dirs(run_dir) or checkpoint_dirs(run_dir)[-1].name == "step-2":  # kill after a rotation
        assert process.poll() is None, process.stdout.read()
        assert time.time() < deadline, "no second checkpoint within 240 s"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # wherever it is: mid-step or mid-save
    process.wait()
    saved = checkpoint_dirs(run_dir)
    assert saved, "the kill must leave the last complete checkpoint behind"
    last_step = json.loads((saved[-1] / "trainer_state.json").read_text())["step"]

    refused = train(corpus, run_dir, "--steps", "8")
    output, _ = refused.communicate(timeout=300)
    assert refused.returncode != 0 and "pass --resume" in output

    output = finish(train(corpus, run_dir, "--steps", str(last_step + 4), "--checkpoint_every", "2", "--resume"))
    assert f"resumed from step {last_step}" in output
    assert json.loads((checkpoint_dirs(run_dir)[-1] / "trainer_state.json").read_text())["step"] == last_step + 4
    assert len(checkpoint_dirs(run_dir)) <= 2  # old checkpoints are rotated out
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))  # a save torn by the kill is cleaned up

    codec = load_codec(run_dir / "model")
    wav = torch.randn(1, 1, 3200) * 0.1
    assert codec.decode(codec.encode(wav)).shape == (1, 1, 3200)
    assert (run_dir / "config.yaml").is_file() and list((run_dir / "logs").rglob("events.out.tfevents*"))
    assert list((run_dir / "samples").glob("*.wav"))


class _Trap:
    """Unpickling this creates `marker`: what a checkpoint file crafted by someone else could do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (str(self.marker),)


def test_resume_never_runs_code_pickled_into_a_checkpoint(tmp_path):
    """Accelerate's checkpoint keeps the optimizer and RNG states as torch pickles; resuming reads them weights-only."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(2, 2)
    model, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters()))
    saved = save_checkpoint(accelerator, tmp_path, 3, {"epoch": 0})
    marker = tmp_path / "code-ran"

    torch.save({"torch_manual_seed": _Trap(marker)}, saved / "random_states_0.pkl")
    assert resume_from_checkpoint(accelerator, tmp_path)["step"] == 3  # the RNG state is skipped, not run
    torch.save({"state": {}, "param_groups": _Trap(marker)}, saved / "optimizer.bin")
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        resume_from_checkpoint(accelerator, tmp_path)
    assert not marker.exists()


def test_decoder_only_training_changes_the_decoder_and_keeps_the_tokens(corpus, tmp_path):
    finish(train(corpus, tmp_path / "base", "--steps", "3", "--val_every", "3"))
    base_dir = str(tmp_path / "base" / "model")
    refused = train(corpus, tmp_path / "refused", "--decoder_only_from", base_dir, "--model.n_q", "1")
    output, _ = refused.communicate(timeout=300)
    assert refused.returncode != 0 and "drop the --model.* overrides" in output

    finish(train(corpus, tmp_path / "decoder", "--steps", "3", "--val_every", "3", "--decoder_only_from", base_dir))
    base, tuned = load_codec(base_dir), load_codec(tmp_path / "decoder" / "model")
    assert tuned.config == base.config
    wav = torch.randn(1, 1, 3200) * 0.1
    codes = base.encode(wav)
    assert torch.equal(tuned.encode(wav), codes)  # token shards and LMs made with the base codec stay valid
    assert not torch.allclose(tuned.decode(codes), base.decode(codes))
    for name, value in base.state_dict().items():
        if not name.startswith("decoder."):
            assert torch.equal(tuned.state_dict()[name], value), f"{name} changed"


def test_decoder_only_training_adds_a_pitch_stream_and_keeps_the_codebooks(corpus, tmp_path):
    istft = ["--model.architecture", "istft", "--model.strides", "[160]", "--model.n_fft", "400",
             "--model.width", "16", "--model.depth", "1"]
    finish(train(corpus, tmp_path / "base", "--steps", "3", "--val_every", "3", *istft))
    base_dir = str(tmp_path / "base" / "model")
    finish(train(corpus, tmp_path / "pitch", "--steps", "3", "--val_every", "3", "--decoder_only_from", base_dir,
                 "--add_pitch_stream", "8"))
    base, tuned = load_codec(base_dir), load_codec(tmp_path / "pitch" / "model")
    assert tuned.config.pitch_bins == 8 and tuned.n_q == base.n_q + 1
    t = torch.arange(3200) / 16000
    wav = (0.3 * torch.sin(2 * math.pi * 180 * t))[None, None]
    codes = tuned.encode(wav)
    assert torch.equal(codes[:, [0, 2]], base.encode(wav))  # the codebooks are the base codec's: row 2 is F0
    assert torch.all(codes[0, 1, 2:-2] > 0)  # a voiced tone
    assert tuned.decoder.source.gain.abs().sum() > 0  # the harmonic source trained


def test_bf16_autocast_trains_on_cpu(corpus, tmp_path):
    output = finish(train(corpus, tmp_path / "run", "--steps", "2", "--val_every", "2", "--precision", "bf16"))
    assert "bf16 autocast" in output
    codec = load_codec(tmp_path / "run" / "model")
    assert all(torch.isfinite(p).all() for p in codec.parameters())


def test_two_processes_train_different_segments_into_the_same_weights(corpus, tmp_path):
    run_dir = tmp_path / "run"
    finish(launch_two_processes("codec", tmp_path / "record", "--preset", "tiny", "--train_manifest",
                                str(corpus / "train.jsonl"), "--dev_manifest", str(corpus / "dev.jsonl"),
                                "--run_dir", str(run_dir), "--steps", "4", "--checkpoint_every", "2"))
    events = recorded(tmp_path / "record")
    items = [[e["item"] for e in events[rank] if "item" in e] for rank in (0, 1)]
    batch_size = load_config(TrainCodecConfig, "tiny", preset_dir=CONFIG_DIR / "codec").batch_size
    assert not set(items[0][:batch_size]) & set(items[1][:batch_size])  # each process its own first batch
    # Weights and the codebooks' statistics (buffers) stay identical in both processes.
    weights = [{e["checkpoint"]: e["weights"] for e in events[rank] if "checkpoint" in e} for rank in (0, 1)]
    assert weights[0] == weights[1] and set(weights[0]) == {2, 4}
    assert (run_dir / "model" / "config.json").is_file()

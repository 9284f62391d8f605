import contextlib
import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from codec.model import CodecConfig, EchoCodec
from data.frontend import TextFrontend
from data.manifest import read_manifest
from data.prepare import write_corpus
from data.synthetic import build_synthetic_corpus
from data.tokenize import tokenize_corpus
from data.tokens import TokenCorpus
from lm.ar import ARModel
from lm.nar import NARModel
from conftest import launch_two_processes, recorded
from data.lm_data import LMDataset
from recipes.train_lm import TrainLMConfig, build_models, run_models, target_count, train_step
from recipes.training import CONFIG_DIR, checkpoint_dirs, load_config

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def tiny_codec(seed: int = 0, n_q: int = 3) -> EchoCodec:
    torch.manual_seed(seed)
    config = CodecConfig(sample_rate=16000, channels=4, strides=(4, 5, 8), dilations=(1,), latent_dim=8,
                         n_q=n_q, codebook_size=16)
    return EchoCodec(config).eval()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lm")
    corpus = root / "corpus"
    utterances = build_synthetic_corpus(corpus, hours=0.01, num_speakers=4, sample_rate=16000, workers=1, use_flite=False)
    write_corpus(corpus, utterances, {}, min_duration=0.3, max_duration=20, dev_fraction=0.2, held_out_speakers=0, seed=0)
    codec = tiny_codec()
    codec.save_pretrained(root / "codec")
    manifests = {split: read_manifest(corpus / f"{split}.jsonl") for split in ("train", "dev")}
    utterances = manifests["train"] + manifests["dev"]
    frontend = TextFrontend.build([u.text for u in utterances])
    tokenize_corpus(codec, frontend, utterances, root / "tokens",
                    splits=["train"] * len(manifests["train"]) + ["dev"] * len(manifests["dev"]))
    return root


def train(workspace: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    args = [
        sys.executable, str(RECIPES / "train_lm.py"), "--preset", "tiny", "--tokens", str(workspace / "tokens"),
        "--run_dir", str(run_dir), *extra,
    ]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    return output


def test_presets_load():
    for preset in ("tiny", "cpu", "base"):
        cfg = load_config(TrainLMConfig, preset, ["--prompt.mode", "prefix"], preset_dir=CONFIG_DIR / "lm")
        assert cfg.prompt.mode == "prefix"
    base = load_config(TrainLMConfig, "base", [], preset_dir=CONFIG_DIR / "lm")
    assert (base.ar.n_layers, base.ar.n_heads, base.ar.d_model, base.ar.ffn_dim) == (12, 16, 1024, 4096)
    assert (base.nar.n_layers, base.nar.n_heads, base.nar.d_model, base.nar.ffn_dim) == (12, 16, 1024, 4096)
    with pytest.raises(ValueError, match="stage must be one of"):
        load_config(TrainLMConfig, "tiny", ["--stage", "all"], preset_dir=CONFIG_DIR / "lm")
    with pytest.raises(ValueError, match="unknown config key 'ar.layers'"):
        load_config(TrainLMConfig, "tiny", ["--ar.layers", "3"], preset_dir=CONFIG_DIR / "lm")


def test_both_stages_are_killed_resume_and_export(workspace, tmp_path):
    run_dir = tmp_path / "run"
    process = train(workspace, run_dir, "--steps", "1000", "--checkpoint_every", "2", "--val_every", "1000",
                    "--snapshot_every", "2", "--codec", str(workspace / "codec"))
    deadline = time.time() + 240
    folder = "checkpoints-both"
    while not checkpoint_dirs(run_dir, folder) or checkpoint_dirs(run_dir, folder)[-1].name == "step-2":
        assert process.poll() is None, process.stdout.read()
        assert time.time() < deadline, "no second checkpoint within 240 s"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    saved = checkpoint_dirs(run_dir, folder)
    assert saved, "the kill must leave the last complete checkpoint behind"
    state = json.loads((saved[-1] / "trainer_state.json").read_text())
    assert {"epoch", "position"} <= set(state["sampler"])

    refused = train(workspace, run_dir, "--steps", "8")
    output, _ = refused.communicate(timeout=300)
    assert refused.returncode != 0 and "pass --resume" in output

    last = state["step"]
    output = finish(train(workspace, run_dir, "--steps", str(last + 4), "--resume", "--snapshot_every", "2",
                          "--codec", str(workspace / "codec")))
    assert f"resumed from step {last}" in output

    # Snapshots (learning curves): every 2 steps, with the training time counted across the kill.
    from recipes.train_lm import snapshots

    found = snapshots(run_dir, "ar+nar")
    steps = [info["step"] for _, info in found]
    assert steps[-3:] == [last, last + 2, last + 4] and steps == sorted(steps)
    seconds = [info["seconds"] for _, info in found]
    assert seconds == sorted(seconds) and seconds[-1] > state["seconds"] > 0
    assert (found[-1][0] / "ar" / "model.safetensors").is_file() and (found[-1][0] / "nar" / "config.json").is_file()
    final = checkpoint_dirs(run_dir, folder)[-1]
    assert json.loads((final / "trainer_state.json").read_text())["step"] == last + 4

    # The export holds the final weights, and loads back with the corpus' codec and vocabulary.
    corpus = TokenCorpus.open(workspace / "tokens")
    model_dir = run_dir / "model"
    ar = ARModel.from_pretrained(model_dir / "ar", expect_codec=corpus.codec_identity)
    nar = NARModel.from_pretrained(model_dir / "nar", expect_codec=corpus.codec_identity)
    for model, weights in ((ar, "model.safetensors"), (nar, "model_1.safetensors")):
        saved_weights = load_file(final / weights)
        for name, value in model.state_dict().items():
            assert torch.equal(value, saved_weights[name]), name
    assert (model_dir / "text" / "text_vocab.json").is_file()
    assert (model_dir / "codec" / "config.json").is_file()
    assert (run_dir / "validation-both.json").is_file()
    assert list((run_dir / "logs").rglob("events.out.tfevents*"))


def test_stages_one_after_the_other_and_fine_tuning(workspace, tmp_path):
    run_dir = tmp_path / "run"
    finish(train(workspace, run_dir, "--stage", "ar", "--steps", "3"))
    finish(train(workspace, run_dir, "--stage", "nar", "--steps", "3"))
    assert (run_dir / "model" / "ar" / "model.safetensors").is_file()
    assert (run_dir / "model" / "nar" / "model.safetensors").is_file()

    before = ARModel.from_pretrained(run_dir / "model" / "ar")
    tuned_dir = tmp_path / "tuned"
    output = finish(train(workspace, tuned_dir, "--stage", "ar", "--steps", "2", "--init_from", str(run_dir / "model")))
    assert "M parameters" in output
    after = ARModel.from_pretrained(tuned_dir / "model" / "ar")
    assert before.config == after.config
    assert any(not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))


def test_a_codec_other_than_the_tokens_is_refused(workspace, tmp_path):
    other = tiny_codec(seed=1, n_q=2)
    other.save_pretrained(tmp_path / "other_codec")
    process = train(workspace, tmp_path / "run", "--steps", "1", "--codec", str(tmp_path / "other_codec"))
    output, _ = process.communicate(timeout=300)
    assert process.returncode != 0 and "different codec" in output


def test_model_sections_are_the_models_configs_fitted_to_the_corpus(workspace, tmp_path):
    cfg = load_config(TrainLMConfig, "tiny", ["--ar.n_q", "2"], preset_dir=CONFIG_DIR / "lm")
    corpus = TokenCorpus.open(workspace / "tokens", splits="train")
    with pytest.raises(SystemExit, match="ar.n_q is 2 but the tokens .* fix it to 3"):
        build_models(cfg, corpus, ["ar"])

    finish(train(workspace, tmp_path / "run", "--stage", "ar", "--steps", "1"))
    saved = yaml.safe_load((tmp_path / "run" / "config-ar.yaml").read_text())
    ar = ARModel.from_pretrained(tmp_path / "run" / "model" / "ar")
    assert saved["ar"] == {k: v for k, v in ar.config.to_dict().items() if k != "model_type"}
    assert saved["ar"]["text_vocab_size"] == len(corpus.vocab) and saved["ar"]["d_model"] == 32
    # the saved config trains the same model again: its corpus fields agree with the tokens
    finish(train(workspace, tmp_path / "again", "--preset", str(tmp_path / "run" / "config-ar.yaml"),
                 "--run_dir", str(tmp_path / "again"), "--steps", "1"))


def test_gradient_accumulation_equals_the_larger_batch(workspace):
    """Micro-batches of unequal sizes weigh by their target tokens: one step on [A, B] is the step on A + B."""
    from accelerate import Accelerator

    cfg = load_config(TrainLMConfig, "tiny", [], preset_dir=CONFIG_DIR / "lm")
    corpus = TokenCorpus.open(workspace / "tokens", splits="train")
    dataset = LMDataset(corpus, cfg.prompt, seed=0)
    items = [dataset[i] for i in range(4)]
    whole, parts = dataset.collate(items), [dataset.collate(items[:1]), dataset.collate(items[1:])]
    assert 3 * int(parts[0].code_lengths.sum()) != int(parts[1].code_lengths.sum())  # unequal: the test can fail
    torch.manual_seed(0)
    models = build_models(cfg, corpus, ["ar", "nar"])
    accelerator = Accelerator(cpu=True)

    def weights_after(step) -> torch.Tensor:
        copies = {stage: copy.deepcopy(model) for stage, model in models.items()}
        optimizer = torch.optim.SGD([p for m in copies.values() for p in m.parameters()], lr=1.0)
        step(copies, optimizer, torch.Generator().manual_seed(0))
        return torch.cat([p.detach().flatten() for m in copies.values() for p in m.parameters()])

    def accumulate(batches):
        return lambda m, o, g: train_step(accelerator, m, batches, o, corpus.n_q, g, grad_clip=1e9)

    def averaged(m, optimizer, generator):  # what equal-batch accumulation would do
        for batch in parts:
            sum(out.loss for out in run_models(m, batch, corpus.n_q, generator).values()).div(len(parts)).backward()
        optimizer.step()

    for stage, out in run_models(models, whole, corpus.n_q, torch.Generator().manual_seed(0)).items():
        assert int(out.n_tokens) == target_count(stage, whole)  # the weights count what the losses average over
    one_batch = weights_after(accumulate([whole]))
    assert torch.allclose(weights_after(accumulate(parts)), one_batch, atol=1e-6)
    assert not torch.allclose(weights_after(averaged), one_batch, atol=1e-4)


def test_bf16_autocast_trains_on_cpu(workspace, tmp_path):
    output = finish(train(workspace, tmp_path / "run", "--steps", "2", "--val_every", "2", "--precision", "bf16"))
    assert "bf16" in output
    validation = json.loads((tmp_path / "run" / "validation-both.json").read_text())
    assert all(math.isfinite(v) for k, v in validation.items() if k.endswith("/loss"))
    assert (tmp_path / "run" / "model" / "nar" / "model.safetensors").is_file()


def test_two_processes_train_different_batches_into_the_same_weights_and_resume_after_a_kill(workspace, tmp_path):
    run_dir = tmp_path / "run"
    args = ["--preset", "tiny", "--tokens", str(workspace / "tokens"), "--run_dir", str(run_dir),
            "--checkpoint_every", "2", "--val_every", "1000"]
    process = launch_two_processes("lm", tmp_path / "first", *args, "--steps", "1000")
    deadline = time.time() + 240
    while not checkpoint_dirs(run_dir, "checkpoints-both") or checkpoint_dirs(run_dir, "checkpoints-both")[-1].name == "step-2":
        assert process.poll() is None, process.stdout.read()
        assert time.time() < deadline, "no second checkpoint within 240 s"
        time.sleep(0.05)
    first = recorded(tmp_path / "first")
    for pid in [process.pid] + [e["pid"] for events in first.values() for e in events if "pid" in e]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()

    first = recorded(tmp_path / "first")
    batches = [[e["batch"] for e in first[rank] if "batch" in e] for rank in (0, 1)]
    assert batches[0] and batches[1] and not set(batches[0][0]) & set(batches[1][0])
    weights = [{e["checkpoint"]: e["weights"] for e in first[rank] if "checkpoint" in e} for rank in (0, 1)]
    common = weights[0].keys() & weights[1].keys()
    assert common and all(weights[0][step] == weights[1][step] for step in common)

    last = json.loads((checkpoint_dirs(run_dir, "checkpoints-both")[-1] / "trainer_state.json").read_text())["step"]
    output = finish(launch_two_processes("lm", tmp_path / "second", *args, "--steps", str(last + 2), "--resume"))
    assert f"resumed from step {last}" in output
    second = recorded(tmp_path / "second")
    final = [{e["checkpoint"]: e["weights"] for e in second[rank] if "checkpoint" in e} for rank in (0, 1)]
    assert final[0][last + 2] == final[1][last + 2]
    assert (run_dir / "model" / "ar" / "model.safetensors").is_file()


def test_a_pitch_codecs_nar_predicts_relative_pitch_and_validates_it(workspace, tmp_path):
    """Tokens of a codec with a pitch stream: the NAR learns the codec's pitch_bins from them, and its
    validation reports how well it says the pitch."""
    torch.manual_seed(0)
    codec = EchoCodec(CodecConfig(sample_rate=16000, architecture="istft", strides=(160,), n_fft=400, width=16,
                                  depth=1, latent_dim=8, n_q=2, codebook_size=16, pitch_bins=8)).eval()
    codec.save_pretrained(tmp_path / "codec")
    manifests = {split: read_manifest(workspace / "corpus" / f"{split}.jsonl") for split in ("train", "dev")}
    utterances = manifests["train"] + manifests["dev"]
    tokenize_corpus(codec, TokenCorpus.open(workspace / "tokens").frontend, utterances, tmp_path / "tokens",
                    splits=["train"] * len(manifests["train"]) + ["dev"] * len(manifests["dev"]))
    run_dir = tmp_path / "run"
    finish(subprocess.Popen(
        [sys.executable, str(RECIPES / "train_lm.py"), "--preset", "tiny", "--tokens", str(tmp_path / "tokens"),
         "--run_dir", str(run_dir), "--stage", "nar", "--steps", "2", "--val_every", "2",
         "--codec", str(tmp_path / "codec")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    validation = json.loads((run_dir / "validation-nar.json").read_text())
    assert 0 <= validation["nar/pitch/voicing"] <= 1 and 0 <= validation["nar/pitch/within_semitone"] <= 1
    nar = NARModel.from_pretrained(run_dir / "model" / "nar", expect_codec=codec.identity)
    assert nar.pitch_bins == 8

"""The phonetic loss on codebook 1: its phoneme table, its probe, its data, and the recipe that uses it."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from codec.model import CodecConfig, EchoCodec
from codec.phonetic import BLANK, PhonemeTable, PhoneticProbe, quantizer_frozen
from data.manifest import Utterance
from data.segments import PhonemizedUtterances, collate_phonemized

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_the_table_keeps_sounds_and_leaves_out_marks():
    table = PhonemeTable([["h", "ə", "ˈ", "l", "oʊ", "|", ",", "w"], ["ɜː", "l", "d", "."]])
    assert table.symbols == sorted(["h", "ə", "l", "oʊ", "w", "ɜː", "d"])
    assert BLANK not in table.index.values() and len(table) == 7
    assert table.encode(["h", "|", "ˈ", "ə", "?", "x"]) == [table.index["h"], table.index["ə"]]
    with pytest.raises(ValueError, match="no phonemes"):
        PhonemeTable([["|", "."]])


def test_the_probe_learns_to_read_phonemes_and_scores_them():
    torch.manual_seed(0)
    targets = torch.tensor([[1, 2, 3, 0], [3, 1, 0, 0]])
    target_lengths = torch.tensor([3, 2])
    frames = torch.tensor([8, 6])
    z = torch.randn(2, 6, 8)  # one fixed "codebook 1" per item
    probe = PhoneticProbe(latent_dim=6, n_phonemes=3)
    opt = torch.optim.Adam(probe.parameters(), lr=0.05)
    first = float(probe(z, frames, targets, target_lengths).detach())
    for _ in range(200):
        loss = probe(z, frames, targets, target_lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first
    assert probe.phoneme_error_rate(z, frames, targets, target_lengths) == 0.0


def test_the_ctc_gradient_reaches_the_encoder_through_the_quantizer():
    codec = EchoCodec(CodecConfig(sample_rate=16000, architecture="istft", strides=(320,), n_fft=640, width=16,
                                  depth=1, latent_dim=8, n_q=2, codebook_size=16))
    probe = PhoneticProbe(8, n_phonemes=5)
    z_q = codec(torch.randn(2, 1, 3200) * 0.1, n_q=1, decode=False).quantizer.z_q
    probe(z_q, torch.tensor([10, 8]), torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor([3, 2])).backward()
    assert codec.encoder.project.weight.grad.abs().sum() > 0


def test_the_probes_pass_leaves_the_quantizer_statistics_and_codebooks_alone():
    codec = EchoCodec(CodecConfig(sample_rate=16000, architecture="istft", strides=(320,), n_fft=640, width=16,
                                  depth=1, latent_dim=8, n_q=2, codebook_size=16)).train()
    codec(torch.randn(2, 1, 6400) * 0.1)  # a reconstruction step: initializes the codebooks and statistics
    before = {name: buffer.clone() for name, buffer in codec.quantizer.named_buffers()}
    padded = torch.cat([torch.randn(2, 1, 3200) * 0.1, torch.zeros(2, 1, 6400)], -1)  # mostly padding
    probe = PhoneticProbe(8, n_phonemes=5)
    with quantizer_frozen(codec.quantizer):
        z_q = codec(padded, n_q=1, decode=False).quantizer.z_q
    probe(z_q, torch.tensor([10, 8]), torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor([3, 2])).backward()
    assert codec.quantizer.training and codec.encoder.project.weight.grad.abs().sum() > 0
    for name, buffer in codec.quantizer.named_buffers():
        assert torch.equal(buffer, before[name]), name
    codec(padded)  # outside the block the same batch moves them: the test would see a leak
    assert not torch.equal(codec.quantizer.running_std, before["running_std"])


def test_phonemized_utterances_pad_to_whole_frames(tmp_path):
    import soundfile as sf

    utterances = []
    for i, seconds in enumerate((0.5, 1.03, 9.0)):
        path = tmp_path / f"{i}.wav"
        sf.write(path, 0.1 * torch.randn(int(seconds * 16000)).numpy(), 16000)
        utterances.append(Utterance(f"u{i}", str(path), "text", "s", seconds))
    data = PhonemizedUtterances(utterances, [[1, 2], [3], [1]], 16000, max_seconds=6.0)
    assert len(data) == 2  # the 9 s utterance is left out
    wav, frames, targets, lengths = collate_phonemized([data[0], data[1]], hop_length=320)
    assert wav.shape == (2, 1, 52 * 320) and frames.tolist() == [25, 52]
    assert targets.tolist() == [[1, 2], [3, 0]] and lengths.tolist() == [2, 1]
    cached = PhonemizedUtterances(utterances, [[1, 2], [3], [1]], 16000, max_seconds=6.0, cache=True)
    for _ in range(2):  # decoded once, then from memory: the same samples to 16-bit precision
        torch.testing.assert_close(cached[1][0], data[1][0], atol=1 / 32767, rtol=0)
    assert list(cached.cache) == [1]
    with pytest.raises(ValueError, match="phonemes"):
        PhonemizedUtterances(utterances, [[], [], []], 16000, max_seconds=6.0)


def test_the_recipe_trains_with_the_phonetic_loss_and_resumes(tmp_path):
    from data.prepare import write_corpus
    from data.synthetic import build_synthetic_corpus

    corpus = tmp_path / "corpus"
    utterances = build_synthetic_corpus(corpus, hours=0.01, num_speakers=3, sample_rate=16000, workers=1,
                                        use_flite=False)
    write_corpus(corpus, utterances, {}, min_duration=0.3, max_duration=20, dev_fraction=0.3, held_out_speakers=0,
                 seed=0)
    run = tmp_path / "run"
    args = [sys.executable, str(RECIPES / "train_codec.py"), "--preset", "tiny", "--train_manifest",
            str(corpus / "train.jsonl"), "--dev_manifest", str(corpus / "dev.jsonl"), "--run_dir", str(run),
            "--loss_weights.phonetic", "1.0", "--phonetic_batch_size", "2", "--phonetic_max_seconds", "20",
            "--model.architecture", "istft", "--model.strides", "[320]", "--model.n_fft", "640",
            "--model.width", "16", "--model.depth", "1"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "phonetic loss on codebook 1" in done.stdout and "phoneme error rate from codebook 1" in done.stdout
    from app.figures import read_scalars

    scalars = read_scalars(run)
    assert "train/phonetic" in scalars and "val/phoneme_error_rate_q1" in scalars
    resumed = subprocess.run(args + ["--steps", "6", "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and "resumed from step 4" in resumed.stdout, resumed.stdout + resumed.stderr

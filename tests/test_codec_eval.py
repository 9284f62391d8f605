import ast
import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from codec.evaluation import audio_files, evaluate_codec
from codec.metrics import bitrate, codebook_usage, pesq_wb, si_sdr, stoi
from codec.model import CodecConfig, EchoCodec
from data.audio import resample, write_audio
from data.plots import plot_curves, plot_spectrograms, spectrogram_image

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def speech_like(seconds: float, sr: int, f0: float = 140.0, seed: int = 0) -> np.ndarray:
    """Harmonics of a vibrato f0 under a syllable-rate envelope: PESQ and STOI treat it as speech."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    f = f0 * (1 + 0.05 * np.sin(2 * math.pi * 5 * t + rng.uniform(0, 2 * math.pi)))
    phase = 2 * math.pi * np.cumsum(f) / sr
    harmonics = sum(np.sin(h * phase) / h for h in range(1, 20) if h * f0 < 0.45 * sr)
    envelope = 0.5 * (1 - np.cos(2 * math.pi * 3 * t))
    x = harmonics * envelope
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def noisy(x: np.ndarray, snr_db: float, seed: int = 1) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(len(x)).astype(np.float32)
    noise *= np.sqrt(np.mean(x**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return x + noise


# --- metrics -----------------------------------------------------------------------------


@pytest.mark.parametrize("sr", [16000, 24000])
def test_identical_signal_scores_perfectly(sr):
    x = speech_like(2.0, sr)
    assert stoi(x, x, sr) == pytest.approx(1.0, abs=1e-6)
    assert si_sdr(x, x) > 80
    assert pesq_wb(x, x, sr) > 4.0  # 24 kHz is resampled to PESQ's 16 kHz


def test_noise_lowers_every_score():
    sr = 16000
    x = speech_like(2.0, sr)
    y = noisy(x, snr_db=10)
    assert pesq_wb(x, y, sr) < pesq_wb(x, x, sr) - 1
    assert stoi(x, y, sr) < 0.99
    assert si_sdr(x, y) == pytest.approx(10.0, abs=0.5)
    assert si_sdr(x, noisy(x, snr_db=0)) < si_sdr(x, y)


def test_si_sdr_ignores_gain_and_offset_and_accepts_torch():
    x = speech_like(1.0, 16000)
    y = noisy(x, snr_db=5)
    reference = si_sdr(x, y)
    assert si_sdr(x, 0.1 * y) == pytest.approx(reference, abs=1e-6)
    assert si_sdr(x, y + 0.2) == pytest.approx(reference, abs=1e-6)  # zero-mean
    assert si_sdr(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None]) == pytest.approx(reference, abs=1e-4)


def test_lengths_are_trimmed_to_the_shorter():
    sr = 16000
    x = speech_like(1.0, sr)
    padded = np.concatenate([x, np.zeros(320, dtype=np.float32)])  # a codec pads to whole frames
    assert si_sdr(x, padded) > 80
    assert stoi(padded, x, sr) == pytest.approx(1.0, abs=1e-6)


def test_unscoreable_audio_gives_nan_not_an_exception(caplog):
    sr = 16000
    with caplog.at_level(logging.WARNING, logger="codec.metrics"):
        assert math.isnan(pesq_wb(np.zeros(sr), np.zeros(sr), sr))  # silence
        short = speech_like(0.1, sr)
        assert math.isnan(pesq_wb(short, short, sr))  # under PESQ's quarter second
        assert math.isnan(stoi(short, short, sr))  # under STOI's 30 frames
    assert len(caplog.records) == 3


def test_bitrate_formula():
    assert bitrate({"frame_rate": 75, "codebook_size": 1024}, 8) == pytest.approx(6000.0)
    codec_like = SimpleNamespace(frame_rate=75.0, codebook_size=1024, n_q=32)
    assert bitrate(codec_like) == pytest.approx(24000.0)  # n_q defaults to the codec's own
    assert bitrate(codec_like, 1) == pytest.approx(750.0)
    with pytest.raises(KeyError, match="codebook_size"):
        bitrate({"frame_rate": 75}, 8)


def test_codebook_usage_of_uniform_and_constant_codes():
    K, size = 2, 16
    uniform = torch.arange(size).repeat(3, K, 4)  # [N=3, K, F=64]: every code equally often
    constant = torch.full((3, K, 64), 5)
    usage = codebook_usage(uniform, size)
    assert usage.fraction_used == pytest.approx([1.0] * K)
    assert usage.perplexity == pytest.approx([float(size)] * K)
    assert usage.frames == 3 * 64
    usage = codebook_usage(constant, size)
    assert usage.fraction_used == pytest.approx([1 / size] * K)
    assert usage.perplexity == pytest.approx([1.0] * K)
    # A list of items of different lengths counts the same as their concatenation.
    parts = [uniform[0, :, :10], uniform[1:2, :, 10:], uniform[2]]
    assert codebook_usage(parts, size) == codebook_usage(torch.cat([p.reshape(K, -1) for p in parts], 1), size)
    with pytest.raises(ValueError, match="lie in"):
        codebook_usage(torch.full((1, K, 4), size), size)


# --- plots -------------------------------------------------------------------------------


def test_plots_write_png_files(tmp_path):
    sr = 16000
    x = speech_like(1.0, sr)
    waves = {"original": x, "n_q=1": torch.from_numpy(noisy(x, 5))[None]}
    path = plot_spectrograms(waves, sr, tmp_path / "s.png", title="t")
    assert path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 1000
    curves = {"train": [(i, 1 / (i + 1)) for i in range(20)], "val": [(0, 1.0), (10, math.nan), (19, 0.1)]}
    path = plot_curves(curves, tmp_path / "sub" / "c.png", "loss", log_y=True)
    assert path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 1000


def test_spectrogram_image_is_hwc_uint8():
    sr = 16000
    image = spectrogram_image(speech_like(1.0, sr), sr)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[0] == 80 and image.shape[2] == 3
    assert image.shape[1] > 10 and image.std() > 0


def test_plots_import_matplotlib_only_inside_functions():
    # Statically, since a subprocess would spend seconds importing torch to check the same thing.
    module = ast.parse((ROOT / "data" / "plots.py").read_text())
    top_level = [node for node in module.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = [alias.name for node in top_level for alias in node.names] + [
        node.module for node in top_level if isinstance(node, ast.ImportFrom) and node.module
    ]
    assert names and not any(name.startswith("matplotlib") for name in names)


# --- evaluation on a real tiny codec --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_codec_dir(tmp_path_factory) -> Path:
    model = yaml.safe_load((ROOT / "recipes" / "configs" / "codec" / "tiny.yaml").read_text())["model"]
    torch.manual_seed(0)
    return EchoCodec(CodecConfig(**model)).save_pretrained(tmp_path_factory.mktemp("codec"))


@pytest.fixture(scope="module")
def wav_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("wavs")
    for i, (seconds, f0) in enumerate([(1.0, 120.0), (0.8, 180.0), (1.2, 220.0)]):
        write_audio(directory / f"spk{i % 2}" / f"utt{i}.wav", speech_like(seconds, 22050, f0, seed=i), 22050)
    return directory


def test_evaluate_codec_report(tiny_codec_dir, wav_dir):
    codec = EchoCodec.from_pretrained(tiny_codec_dir).train()
    items = audio_files(wav_dir)
    assert [item_id for item_id, _ in items] == ["spk0/utt0", "spk0/utt2", "spk1/utt1"]

    report = evaluate_codec(codec, items, max_items=2, keep_examples=1)

    assert codec.training  # the codec's mode is given back
    assert report.items == 2 and report.total_duration == pytest.approx(2.2, abs=0.01)
    assert [s.n_q for s in report.summaries] == [codec.n_q, 1]  # full, then the first codebook alone
    assert report.summary(1).bitrate == pytest.approx(codec.frame_rate * math.log2(codec.codebook_size))
    assert len(report.rows) == 2 * 2
    for s in report.summaries:
        assert all(math.isfinite(v) for v in (s.stoi, s.si_sdr, s.mel_distance, s.decode_rtf))
    assert math.isfinite(report.encode_rtf) and report.encode_rtf > 0
    assert len(report.usage.perplexity) == codec.n_q and report.usage.frames > 0
    (example,) = report.examples.values()
    assert list(example) == ["original", "n_q=2 (0.8 kbps)", "n_q=1 (0.4 kbps)"]

    d = json.loads(report.to_json())
    assert {"codec", "device", "items", "total_duration", "summaries", "rows", "usage", "encode_rtf"} <= set(d)
    assert "examples" not in d
    summary = d["summaries"][0]
    assert {"n_q", "kbps", "bitrate", "pesq", "stoi", "si_sdr", "mel_distance", "decode_rtf"} <= set(summary)
    assert summary["kbps"] == pytest.approx(0.8)
    assert summary["pesq"] is None or 1.0 <= summary["pesq"] <= 4.7
    assert {"id", "n_q", "duration", "pesq", "stoi", "si_sdr", "mel_distance"} <= set(d["rows"][0])
    assert d["codec"]["name"] == "echo" and d["codec"]["codebook_size"] == codec.codebook_size

    markdown = report.to_markdown()
    assert "| n_q | kbps | PESQ | STOI | mel dist | SI-SDR (dB) |" in markdown
    assert "| 2 | 0.80 |" in markdown and "| 1 | 0.40 |" in markdown


def test_evaluate_codec_rejects_bad_n_q(tiny_codec_dir):
    codec = EchoCodec.from_pretrained(tiny_codec_dir)
    with pytest.raises(ValueError, match="n_q values"):
        evaluate_codec(codec, [("a", speech_like(1.0, codec.sample_rate))], n_q_values=[codec.n_q + 1])


def test_recipe_writes_report_and_examples(tiny_codec_dir, wav_dir, tmp_path, capsys):
    from recipes import evaluate_codec as recipe

    corpus = tmp_path / "corpus"
    for path in wav_dir.rglob("*.wav"):
        (corpus / path.relative_to(wav_dir)).parent.mkdir(parents=True, exist_ok=True)
        (corpus / path.relative_to(wav_dir)).write_bytes(path.read_bytes())
    (corpus / "broken.wav").write_bytes(b"not audio")  # one unreadable file must not stop the run

    out = recipe.main(["--codec", str(tiny_codec_dir), "--wav-dir", str(corpus), "--n-q", "1", "--examples", "1"])

    assert out == tiny_codec_dir / "eval"
    report = json.loads((out / "report.json").read_text())
    assert report["items"] == 3 and list(report["skipped"]) == ["broken"]
    assert [s["n_q"] for s in report["summaries"]] == [1]
    assert "| 1 | 0.40 |" in (out / "report.md").read_text()
    assert "| 1 | 0.40 |" in capsys.readouterr().out
    assert (out / "examples" / "broken.png").exists() is False
    png = out / "examples" / "spk0" / "utt0.png"
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in (out / "examples" / "spk0" / "utt0").iterdir()) == ["n_q1.wav", "original.wav"]


def test_recipe_measures_word_errors_of_each_rendering(tiny_codec_dir, wav_dir, tmp_path, monkeypatch, capsys):
    from data.manifest import Utterance, write_manifest

    from recipes import evaluate_codec as recipe

    utterances = [Utterance(p.stem, str(p), "hello there world", p.parent.name, 1.0)
                  for p in sorted(wav_dir.rglob("*.wav"))]
    write_manifest(tmp_path / "test.jsonl", utterances)
    (tmp_path / "speakers.json").write_text(json.dumps({"speakers": [{"id": "spk0", "engine": "flite"},
                                                                    {"id": "spk1", "engine": "espeak"}]}))
    heard = []

    class OneWordShort:
        name = "fake"

        def transcribe(self, wav, sample_rate):
            heard.append(len(wav))
            return "hello world"

    monkeypatch.setattr(recipe, "load_asr", lambda spec, language, device: OneWordShort())
    out = recipe.main(["--codec", str(tiny_codec_dir), "--manifest", str(tmp_path / "test.jsonl"), "--asr", "fake",
                       "--families", "flite", "--examples", "1", "--out", str(tmp_path / "eval")])
    report = json.loads((out / "report.json").read_text())
    assert report["items"] == 2  # the flite speaker's two utterances
    assert report["word_error_rates"] == {"original": pytest.approx(1 / 3), "n_q=2 (0.8 kbps)": pytest.approx(1 / 3),
                                          "n_q=1 (0.4 kbps)": pytest.approx(1 / 3)}
    assert len(heard) == 2 * 3  # each utterance: the recording and both reconstructions
    assert "| n_q=1 (0.4 kbps) | 33.3 % | 1.00 |" in capsys.readouterr().out
    assert len(list((out / "examples").rglob("*.png"))) == 1
    with pytest.raises(SystemExit):
        recipe.main(["--codec", str(tiny_codec_dir), "--wav-dir", str(wav_dir), "--asr", "pocketsphinx"])


def test_diagnose_codec_recombines_magnitude_and_phase():
    from recipes.diagnose_codec import recombinations

    g = torch.Generator().manual_seed(0)
    recording = torch.randn(8000, generator=g) * 0.1
    coded = -recording  # the same magnitudes, every phase off by pi
    parts = recombinations(recording, coded, 16000, g)
    assert set(parts) >= {"codec", "codec magnitude, true phase", "true magnitude, codec phase"}
    assert all(p.shape == recording.shape for p in parts.values())
    assert torch.allclose(parts["codec magnitude, true phase"], recording, atol=1e-5)
    assert torch.allclose(parts["true magnitude, codec phase"], coded, atol=1e-5)
    assert not torch.allclose(parts["true magnitude, random phase"], recording, atol=1e-2)


def test_diagnose_codec_recipe_scores_each_rendering(tiny_codec_dir, wav_dir, tmp_path, capsys):
    from recipes.diagnose_codec import main

    table = main(["--codec", str(tiny_codec_dir), "--wav-dir", str(wav_dir), "--out", str(tmp_path / "d.json")])
    assert json.loads((tmp_path / "d.json").read_text()) == table
    assert table["recording low-passed to 4 kHz"]["stoi"] > table["codec"]["stoi"]  # an untrained codec codes nothing
    pitch = table.pop("pitch")
    assert set(pitch) == {"within_a_semitone", "log_f0_spread_recording", "log_f0_spread_codec"}
    assert all(row["files"] == len(audio_files(wav_dir)) for row in table.values())
    assert "| codec magnitude, true phase |" in capsys.readouterr().out


def test_diagnose_codec_counts_the_words_each_rendering_loses(wav_dir, tmp_path, monkeypatch, capsys):
    from data.manifest import Utterance, write_manifest

    from recipes import diagnose_codec as recipe

    torch.manual_seed(0)
    pitched = EchoCodec(CodecConfig(sample_rate=16000, architecture="istft", strides=(160,), n_fft=400, width=16,
                                    depth=1, latent_dim=8, n_q=2, codebook_size=16, pitch_bins=8))
    pitched = pitched.save_pretrained(tmp_path / "codec")
    utterances = [Utterance(p.stem, str(p), "hello there world", p.parent.name, 1.0)
                  for p in sorted(wav_dir.rglob("*.wav"))]
    write_manifest(tmp_path / "test.jsonl", utterances)
    (tmp_path / "speakers.json").write_text(json.dumps({"speakers": [{"id": "spk0", "engine": "flite"},
                                                                    {"id": "spk1", "engine": "flite"}]}))

    class RecordingsBetter:  # hears one word too few in a recording, two in anything the codec rendered
        name = "fake"

        def transcribe_many(self, clips):
            batches.append(len(clips))
            return ["hello world"] + ["world"] * (len(clips) - 1)  # the recording comes first

    batches = []
    monkeypatch.setattr(recipe, "load_asr", lambda spec, language, device: RecordingsBetter())
    table = recipe.main(["--codec", str(pitched), "--manifest", str(tmp_path / "test.jsonl"), "--families", "flite",
                         "--per-speaker", "1", "--asr", "fake", "--out", str(tmp_path / "d.json")])
    words = table["words"]
    assert {"recording", "codec", "latent unquantized", "codes without F0", "true magnitude, codec phase"} <= set(words)
    assert words["recording"]["wer"] == pytest.approx(1 / 3) and words["codec"]["wer"] == pytest.approx(2 / 3)
    assert words["codec"]["ratio"] == pytest.approx(2.0) and words["recording"]["ratio"] == 1.0
    assert batches == [len(words)] * 2  # each utterance: its recording and every rendering in one call
    assert set(words["codec"]["by_speaker"]) == {"spk0", "spk1"}  # one utterance of each
    assert table["codec"]["files"] == 2 and table["latent unquantized"]["files"] == 2
    assert "| codes without F0 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        recipe.main(["--codec", str(pitched), "--wav-dir", str(wav_dir), "--asr", "pocketsphinx"])


def test_pitch_agreement_counts_frames_whose_f0_the_codec_keeps():
    from recipes.diagnose_codec import pitch_agreement

    sr = 16000
    t = torch.arange(sr) / sr
    glide = torch.sin(2 * math.pi * (120 * t + 40 * t**2))  # 120 -> 200 Hz
    kept = pitch_agreement(glide, glide.clone(), sr)
    assert kept["within_a_semitone"] == 1.0
    assert kept["log_f0_spread_codec"] == pytest.approx(kept["log_f0_spread_recording"])
    assert kept["log_f0_spread_recording"] > 0.1
    # the tracker itself: a 4 kHz low-pass (Codec 2's band) and a little noise keep every frame's F0
    band_limited = resample(resample(glide, sr, 8000), 8000, sr)[: len(glide)]
    noisy = glide + 0.03 * torch.randn(glide.shape, generator=torch.Generator().manual_seed(0))
    assert pitch_agreement(glide, band_limited, sr)["within_a_semitone"] == 1.0
    assert pitch_agreement(glide, noisy, sr)["within_a_semitone"] == 1.0
    level = pitch_agreement(glide, torch.sin(2 * math.pi * 160 * t), sr)  # the mean pitch, none of the glide
    assert level["within_a_semitone"] < 0.3 and level["log_f0_spread_codec"] < 0.01
    assert math.isnan(pitch_agreement(glide, torch.zeros(sr), sr)["within_a_semitone"])

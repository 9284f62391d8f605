"""The Codec 2 baseline: the wrapper around c2enc / c2dec, and its rows in the codec evaluation.

The plumbing is tested with stand-in programs that pass the 8 kHz samples through unchanged (so
the round trip is exactly the resampling down and back); the real codec, when installed
(`apt-get install codec2`), must keep the length and most of the waveform's energy.
"""

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from codec.codec2 import CODEC2_SAMPLE_RATE, Codec2Unavailable, codec2_roundtrip
from codec.evaluation import evaluate_codec2
from data.audio import resample, write_audio
from codec.model import CodecConfig, EchoCodec
from test_codec_eval import speech_like

ROOT = Path(__file__).resolve().parents[1]
PASS_THROUGH = "#!/bin/sh\n# usage: <program> MODE IN OUT\ncp \"$2\" \"$3\"\n"


@pytest.fixture
def tiny_codec_dir(tmp_path) -> Path:
    torch.manual_seed(0)
    config = CodecConfig(sample_rate=16000, architecture="istft", strides=(320,), n_fft=640, width=16, depth=1,
                         latent_dim=8, n_q=2, codebook_size=16)
    return EchoCodec(config).save_pretrained(tmp_path / "codec")


@pytest.fixture
def pass_through_codec2(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("c2enc", "c2dec"):
        program = folder / name
        program.write_text(PASS_THROUGH)
        program.chmod(program.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return folder


def test_the_round_trip_is_narrowband_and_keeps_the_length(pass_through_codec2):
    sr = 16000
    wav = torch.from_numpy(speech_like(0.73, sr, f0=150.0))
    out = codec2_roundtrip(wav, sr, "1200")
    assert out.shape == wav.shape and out.dtype == torch.float32
    narrowband = resample(resample(wav[None], sr, CODEC2_SAMPLE_RATE), CODEC2_SAMPLE_RATE, sr)[0]
    # 16-bit PCM in between: equal to the resampled signal within one quantization step
    torch.testing.assert_close(out[: narrowband.shape[0]], narrowband[: out.shape[0]], rtol=0, atol=2e-4)


def test_bad_input_and_missing_programs_get_clear_errors(pass_through_codec2, monkeypatch, tmp_path):
    wav = torch.zeros(1600)
    with pytest.raises(ValueError, match="unknown Codec 2 mode '999'"):
        codec2_roundtrip(wav, 16000, "999")
    with pytest.raises(ValueError, match="mono waveform"):
        codec2_roundtrip(torch.zeros(2, 100), 16000, "1200")
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(Codec2Unavailable, match="apt-get install codec2"):
        codec2_roundtrip(wav, 16000, "1200")


def test_evaluate_codec2_scores_each_mode(pass_through_codec2):
    items = [("a", speech_like(1.0, 16000, 120.0)), ("b", speech_like(0.8, 16000, 200.0, seed=1))]
    rows = evaluate_codec2(items, ["3200", "700C"], 16000)
    assert [(r["mode"], r["kbps"]) for r in rows] == [("3200", 3.2), ("700C", 0.7)]
    for r in rows:  # a pass-through keeps the band below 4 kHz: good, but not perfect, scores
        assert 0.8 < r["stoi"] < 1.0 and r["mel_distance"] > 0


def test_the_recipe_prints_codec2_beside_the_codec(pass_through_codec2, tiny_codec_dir, tmp_path, capsys):
    from recipes import evaluate_codec as recipe

    write_audio(tmp_path / "wavs" / "one.wav", speech_like(1.0, 22050), 22050)
    out = recipe.main(["--codec", str(tiny_codec_dir), "--wav-dir", str(tmp_path / "wavs"), "--n-q", "1",
                       "--codec2", "1200", "--out", str(tmp_path / "eval")])
    report = json.loads((out / "report.json").read_text())
    assert [row["mode"] for row in report["codec2"]] == ["1200"]
    assert "| 1200 | 1.20 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        recipe.main(["--codec", str(tiny_codec_dir), "--wav-dir", str(tmp_path / "wavs"), "--codec2", "1201"])
    assert "unknown Codec 2 modes ['1201']" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("c2enc") is None, reason="Codec 2 is not installed (apt-get install codec2)")
def test_the_real_codec2_codes_speech():
    sr = 16000
    wav = torch.from_numpy(speech_like(1.0, sr, f0=130.0))
    for mode in ("3200", "450"):
        out = codec2_roundtrip(wav, sr, mode)
        assert out.shape == wav.shape and torch.isfinite(out).all()
        energy = float(out.pow(2).mean() / wav.pow(2).mean())
        assert 0.05 < energy < 5.0, (mode, energy)
        assert not np.allclose(out.numpy(), 0.0)

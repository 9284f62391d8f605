import math

import numpy as np
import pytest
import soundfile as sf
import torch

from data.audio import AudioError, audio_duration, load_audio, normalize_loudness, prepare_audio, trim_silence, write_audio


def tone(seconds: float, sr: int, freq: float = 220.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * math.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg"])
def test_reads_every_format_as_mono_float(tmp_path, suffix):
    stereo = np.stack([tone(1.0, 16000), tone(1.0, 16000, 330.0)], axis=1)  # [T, 2]
    path = tmp_path / f"a{suffix}"
    sf.write(path, stereo, 16000)
    wav, sr = load_audio(path)
    assert sr == 16000 and wav.dtype == torch.float32
    assert wav.shape[0] == 1 and abs(wav.shape[1] - 16000) <= 1024  # ogg pads to its frame size
    assert audio_duration(path) == pytest.approx(1.0, abs=0.07)


def test_resamples_to_the_requested_rate(tmp_path):
    path = write_audio(tmp_path / "a.wav", tone(2.0, 22050), 22050)
    wav, sr = load_audio(path, sample_rate=16000)
    assert sr == 16000 and wav.shape == (1, 32000)
    spectrum = torch.fft.rfft(wav[0]).abs()
    assert int(spectrum.argmax()) * 16000 / 32000 == pytest.approx(220.0, abs=1.0)  # the pitch survives


def test_trim_removes_silence_but_keeps_a_margin():
    sr = 16000
    wav = torch.from_numpy(np.concatenate([np.zeros(sr), tone(1.0, sr), np.zeros(2 * sr)])).unsqueeze(0)
    trimmed = trim_silence(wav, sr, keep_s=0.1)
    assert trimmed.shape[-1] == pytest.approx(1.2 * sr, abs=0.04 * sr)


def test_loudness_normalisation_hits_the_target_without_clipping():
    sr = 16000
    wav = torch.from_numpy(tone(3.0, sr, amplitude=0.01)).unsqueeze(0)
    louder = normalize_loudness(wav, sr, -23.0)
    import torchaudio.functional as AF

    assert float(AF.loudness(louder, sr)) == pytest.approx(-23.0, abs=0.3)
    assert louder.abs().max() <= 0.99 + 1e-6
    capped = normalize_loudness(wav, sr, 0.0)  # +23 dB more would clip: the peak limit wins
    assert float(capped.abs().max()) == pytest.approx(0.99, abs=1e-4)


def test_write_then_read_round_trip(tmp_path):
    x = tone(0.5, 24000)
    wav, sr = load_audio(write_audio(tmp_path / "x.flac", x, 24000))
    assert sr == 24000
    assert torch.allclose(wav[0], torch.from_numpy(x), atol=1e-4)  # 16-bit PCM


def test_unreadable_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF this is not audio" * 10)
    with pytest.raises(AudioError, match="cannot read audio file .*bad.wav"):
        load_audio(bad)
    with pytest.raises(AudioError, match="cannot read"):
        audio_duration(bad)
    with pytest.raises(AudioError, match="cannot read"):
        load_audio(tmp_path / "missing.wav")


def test_empty_file_is_a_clear_error(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="empty"):
        load_audio(path)
    with pytest.raises(AudioError, match="empty"):
        audio_duration(path)


def test_nan_silent_and_short_audio_are_rejected():
    sr = 16000
    bad = tone(1.0, sr)
    bad[100] = np.nan
    with pytest.raises(AudioError, match="NaN or infinite"):
        prepare_audio(bad, sr)
    with pytest.raises(AudioError, match="silent"):
        prepare_audio(np.zeros(sr, dtype=np.float32), sr)
    with pytest.raises(AudioError, match=r"0\.50 s long .* at least 3 s"):
        prepare_audio(tone(0.5, sr), sr, min_duration=3.0)
    with pytest.raises(AudioError, match="expected a waveform"):
        prepare_audio(np.zeros((2, 2, 2), dtype=np.float32), sr)


def test_write_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"\.wav, \.flac or \.ogg"):
        write_audio(tmp_path / "x.mp4", tone(0.1, 16000), 16000)

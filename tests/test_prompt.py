import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from app.prompt import PromptError, best_span, prepare_prompt


def speech_like(seconds: float, sr: int = 16000, seed: int = 0, amplitude: float = 0.3) -> np.ndarray:
    """Voiced 'syllables' (a gliding harmonic tone, ~4 a second) with short gaps and a faint noise floor."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 30 * np.sin(2 * math.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * math.pi * np.cumsum(f0) / sr
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    syllables = np.clip(np.sin(2 * math.pi * 4 * t + rng.uniform(0, 6)), 0, None) ** 0.5
    wav = amplitude * voice * syllables / 2 + 0.002 * rng.standard_normal(t.shape)
    return wav.astype(np.float32)


def lufs(wav: torch.Tensor, sr: int) -> float:
    return float(AF.loudness(wav.reshape(1, -1), sr))


def test_prepares_mono_audio_at_the_codec_rate_trimmed_and_normalised(tmp_path):
    sr = 22050
    speech = speech_like(4.0, sr, amplitude=0.05)
    padded = np.concatenate([np.zeros(sr), speech, np.zeros(sr)])
    path = tmp_path / "me.wav"
    sf.write(path, np.stack([padded, 0.5 * padded], axis=1), sr)  # stereo
    prompt = prepare_prompt(path, 16000)
    assert prompt.wav.dtype == torch.float32 and prompt.wav.dim() == 1 and prompt.sample_rate == 16000
    assert prompt.source == str(path) and not prompt.cropped
    assert prompt.original_duration == pytest.approx(6.0, abs=0.01)
    assert 4.0 <= prompt.duration <= 4.3  # the silence is gone, a margin is kept
    assert lufs(prompt.wav, 16000) == pytest.approx(-20.0, abs=0.5)


@pytest.mark.parametrize("layout", ["mono", "channels_first", "channels_last", "tensor", "int16", "gradio"])
def test_accepts_waveforms_with_their_rate(layout):
    sr = 16000
    wav = speech_like(3.0, sr)
    prompt = {
        "mono": lambda: (wav, sr),
        "channels_first": lambda: (np.stack([wav, wav]), sr),
        "channels_last": lambda: (np.stack([wav, wav], axis=1), sr),
        "tensor": lambda: (torch.from_numpy(wav)[None, None], sr),
        "int16": lambda: ((wav * 32767).astype(np.int16), sr),
        "gradio": lambda: (sr, (wav * 32767).astype(np.int16)),
    }[layout]()
    prepared = prepare_prompt(prompt, 24000)
    assert prepared.sample_rate == 24000 and prepared.source == "audio"
    assert prepared.duration == pytest.approx(3.0, abs=0.15)


def test_a_long_recording_keeps_its_best_span_cut_at_quiet_points():
    sr = 16000
    rng = np.random.default_rng(1)
    sparse = speech_like(12.0, sr, seed=2)
    sparse[: int(12 * sr)] *= np.repeat(rng.random(12) < 0.25, sr)  # mostly long pauses
    dense = speech_like(11.0, sr, seed=3)  # talking all along: the best 10 s lie in here
    wav = np.concatenate([sparse, dense, np.zeros(3 * sr, dtype=np.float32)])
    prepared = prepare_prompt((wav, sr), sr)
    assert prepared.cropped and prepared.original_duration == pytest.approx(26.0)
    assert 8.5 <= prepared.duration <= 10.0

    start, end = best_span(torch.from_numpy(wav), sr, 10.0)
    assert 12 * sr - 0.1 * sr <= start and end <= 23 * sr + 0.1 * sr
    hop = int(0.02 * sr)
    frame_energy = lambda at: float(np.mean(wav[at - hop // 2 : at + hop // 2] ** 2))  # noqa: E731
    typical = float(np.mean(dense**2))
    assert frame_energy(start + hop // 2) < 0.1 * typical and frame_energy(end - hop // 2) < 0.1 * typical


def test_a_transcript_sized_prompt_is_not_cropped():
    prepared = prepare_prompt((speech_like(9.5, 16000), 16000), 16000)
    assert not prepared.cropped


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda sr: speech_like(1.2, sr), "at least 2 s"),
        (lambda sr: np.concatenate([np.zeros(3 * sr), speech_like(1.0, sr), np.zeros(3 * sr)]), "after trimming"),
        (lambda sr: np.zeros(3 * sr, dtype=np.float32), "silent"),
        (lambda sr: np.full(3 * sr, 3e-4, dtype=np.float32) * np.sign(speech_like(3.0, sr)), "nearly silent"),
        (lambda sr: np.clip(speech_like(4.0, sr) * 20, -1, 1), "clipped"),
        (lambda sr: np.where(np.arange(3 * sr) == 100, np.nan, speech_like(3.0, sr)), "NaN"),
        (lambda sr: np.zeros(0, dtype=np.float32), "empty"),
    ],
    ids=["too_short", "short_after_trimming", "silent", "nearly_silent", "clipped", "nan", "empty"],
)
def test_unusable_prompts_say_what_is_wrong(make, message):
    sr = 16000
    with pytest.raises(PromptError, match=message) as info:
        prepare_prompt((make(sr), sr), sr)
    assert isinstance(info.value, ValueError)


def test_a_little_clipping_is_tolerated():
    wav = speech_like(4.0, 16000)
    wav[::500] = 1.0  # 0.2 % of the samples at full scale
    prepare_prompt((wav, 16000), 16000)


def test_unreadable_and_missing_files(tmp_path):
    garbage = tmp_path / "notes.wav"
    garbage.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(PromptError, match="cannot read the voice prompt .*notes.wav"):
        prepare_prompt(garbage, 16000)
    with pytest.raises(PromptError, match="does not exist"):
        prepare_prompt(tmp_path / "missing.wav", 16000)
    with pytest.raises(PromptError, match=r"pass \(waveform, sample_rate\)"):
        prepare_prompt(speech_like(3.0), 16000)
    with pytest.raises(PromptError, match="sample rate must be a positive integer"):
        prepare_prompt((speech_like(3.0), 0), 16000)

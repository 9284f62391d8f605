import numpy as np
import pytest
import soundfile as sf
import torch

from data.manifest import Utterance
from data.segments import AudioSegments

SR = 16000


def tone(tmp_path, hz: float, seconds: float = 2.0) -> Utterance:
    t = np.arange(int(seconds * SR)) / SR
    path = tmp_path / f"tone{hz:g}.wav"
    sf.write(path, (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32), SR)
    return Utterance(id=path.stem, audio_path=str(path), text="a tone", speaker="s", duration=seconds)


def peak_hz(wav: torch.Tensor) -> float:
    spectrum = np.abs(np.fft.rfft(wav[0].numpy() * np.hanning(wav.shape[-1])))
    return float(np.argmax(spectrum) * SR / wav.shape[-1])


@pytest.mark.parametrize("cache", [True, False])
def test_crops_have_the_segment_length(tmp_path, cache):
    segments = AudioSegments([tone(tmp_path, 400)], SR, 0.5, cache=cache)
    torch.manual_seed(0)
    wav = segments[0]
    assert wav.shape == (1, 8000) and wav.dtype == torch.float32
    assert abs(peak_hz(wav) - 400) < 5


def test_shorter_utterances_are_padded_and_validation_takes_the_start(tmp_path):
    short = tone(tmp_path, 400, seconds=0.3)
    wav = AudioSegments([short], SR, 0.5)[0]
    assert wav.shape == (1, 8000) and wav[0, 4800:].abs().max() == 0 and wav[0, :4800].abs().max() > 0.3
    long = tone(tmp_path, 300, seconds=2.0)
    fixed = AudioSegments([long], SR, 0.5, random_crop=False)
    assert torch.equal(fixed[0], fixed[0])  # the first segment, every time

import json

import numpy as np
import pytest

import app.tts
from app.prompt import PromptError
from app.streaming import FADE_SECONDS, KEEP_SECONDS, EdgeTrimmer, block_bounds
from app.tts import TTS
from lm.ar import ARConfig, ARModel

from conftest import PROMPT_TEXT, SR, TEXT, build_tiny_model
from test_prompt import speech_like

pytestmark = pytest.mark.usefixtures("one_thread")

STORY = "The children found a tiny kite. We waited almost twenty minutes for the bus.\n\nThen it rained."


@pytest.fixture(scope="module")
def tts(tiny_model_dir) -> TTS:
    return TTS.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def prompt() -> tuple[np.ndarray, int]:
    return speech_like(3.0, SR, seed=7), SR


# -- the pieces --------------------------------------------------------------------------------------


def test_blocks_cover_the_frames_once_in_order():
    assert block_bounds(0, 10, 50) == []
    assert block_bounds(7, 10, 50) == [(0, 7)]
    assert block_bounds(125, 10, 50) == [(0, 10), (10, 60), (60, 110), (110, 125)]
    with pytest.raises(ValueError, match="at least one frame"):
        block_bounds(10, 0, 50)


def trimmed_whole(wav: np.ndarray) -> np.ndarray:
    trimmer = EdgeTrimmer(SR)
    return np.concatenate([trimmer.push(wav), trimmer.finish()])


def trimmed_in_pieces(wav: np.ndarray, sizes: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    trimmer, out, start = EdgeTrimmer(SR), [], 0
    for size in sizes:
        out.append(trimmer.push(wav[start:start + size]))
        start += size
    out.append(trimmer.push(wav[start:]))
    out.append(trimmer.finish())
    return np.concatenate(out), out


def test_the_trimmer_drops_silent_edges_and_fades_the_ends():
    speech = speech_like(1.0, SR, seed=1)
    wav = np.concatenate([np.zeros(SR // 2, np.float32), speech, np.zeros(SR // 2, np.float32)])
    out = trimmed_whole(wav)
    keep = int(KEEP_SECONDS * SR)
    assert 0.8 * len(speech) <= len(out) <= len(speech) + 2 * keep + 2 * int(0.02 * SR)  # the silences are gone
    assert out[0] == 0 and out[-1] == 0  # faded in and out
    middle = slice(int(FADE_SECONDS * SR) + keep, len(out) - int(FADE_SECONDS * SR) - keep)
    assert np.abs(out[middle]).max() > 0.1


def test_all_silence_is_kept_whole():
    quiet = np.full(SR // 4, 1e-5, np.float32)
    out = trimmed_whole(quiet)
    assert len(out) == len(quiet)


@pytest.mark.parametrize("sizes", [[1], [160, 161, 3000], [320] * 60, [7] * 500, [24000]])
def test_the_trimmer_gives_the_same_samples_whatever_the_pieces(sizes):
    rng = np.random.default_rng(0)
    wav = np.concatenate([np.zeros(3000, np.float32), speech_like(0.8, SR, seed=2), np.zeros(500, np.float32),
                          speech_like(0.3, SR, seed=3), np.zeros(4000, np.float32)])
    wav += 1e-6 * rng.standard_normal(len(wav)).astype(np.float32)
    whole = trimmed_whole(wav)
    joined, pieces = trimmed_in_pieces(wav, sizes)
    assert np.array_equal(joined, whole)
    if len(sizes) > 10:  # it releases speech while the chunk is still arriving, not only at the end
        assert sum(len(p) for p in pieces[:-1]) > len(whole) // 2


def test_a_finished_trimmer_takes_no_more_audio():
    trimmer = EdgeTrimmer(SR)
    trimmer.finish()
    with pytest.raises(RuntimeError, match="finished"):
        trimmer.push(np.zeros(10, np.float32))


# -- TTS.stream --------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt_text", [None, PROMPT_TEXT])
def test_a_stream_joins_into_the_whole_synthesis(tts, prompt, prompt_text):
    whole, sr = tts.synthesize(STORY, prompt, prompt_text=prompt_text, seed=5)
    pieces = list(tts.stream(STORY, prompt, prompt_text=prompt_text, seed=5))
    assert sr == tts.sample_rate
    assert all(p.dtype == np.float32 and p.ndim == 1 and p.size for p in pieces)
    streamed = np.concatenate(pieces)
    assert streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, atol=1e-5)
    assert len(pieces) > 3 * 2  # sentence after sentence, several blocks each, with the pauses between


def test_a_guided_ar_streams_the_same_audio(tmp_path, prompt):
    model_dir = build_tiny_model(tmp_path)
    config = json.loads((model_dir / "ar" / "config.json").read_text())
    ARModel(ARConfig.from_dict({**config, "duration_guided": True})).save_pretrained(model_dir / "ar")
    tts = TTS.from_pretrained(model_dir)
    whole, _ = tts.synthesize(TEXT, prompt, prompt_text=PROMPT_TEXT, seed=2)
    np.testing.assert_allclose(np.concatenate(list(tts.stream(TEXT, prompt, prompt_text=PROMPT_TEXT, seed=2))),
                               whole, atol=1e-5)


def test_audio_comes_while_the_ar_model_is_still_writing(tts, prompt, monkeypatch):
    steps = []
    real = app.tts.iter_ar

    def counting(*args, **kwargs):
        loop = real(*args, **kwargs)
        while True:
            try:
                progress = next(loop)
            except StopIteration as stop:
                steps.append("done")
                return stop.value
            steps.append(int(progress.lengths[0]))
            yield progress

    monkeypatch.setattr(app.tts, "iter_ar", counting)
    stream = tts.stream(TEXT, prompt, seed=5)
    first = next(stream)
    assert first.size and "done" not in steps  # heard before the AR model finished the sentence
    first_block, _ = tts._block_frames()
    lookahead = round(app.tts.LOOKAHEAD_SECONDS * tts.frame_rate)
    assert steps[-1] <= first_block + lookahead  # as soon as the first block's window was written
    stream.close()


def test_bad_input_fails_at_the_first_next_with_a_clear_error(tts, prompt):
    with pytest.raises(PromptError):
        next(tts.stream(TEXT, (np.zeros(SR, np.float32), SR)))
    with pytest.raises(ValueError, match="nothing to say"):
        next(tts.stream("...", prompt))
    with pytest.raises(ValueError, match="seed"):
        next(tts.stream(TEXT, prompt, seed=1.5))
    with pytest.raises(ValueError, match="prompt_wav"):
        next(tts.stream(TEXT))


def test_closing_a_stream_early_leaves_the_model_ready(tts, prompt):
    stream = tts.stream(STORY, prompt, seed=9)
    next(stream)
    stream.close()
    whole, _ = tts.synthesize(TEXT, prompt, seed=9)
    np.testing.assert_allclose(np.concatenate(list(tts.stream(TEXT, prompt, seed=9))), whole, atol=1e-5)

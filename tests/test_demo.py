"""The Gradio demo, served on 127.0.0.1 with the tiny model and driven through gradio_client."""

import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")

import gradio as gr  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image  # noqa: E402

import app.demo  # noqa: E402
from app.demo import build_demo, build_parser, example_prompts  # noqa: E402
from app.prompt import prepare_prompt  # noqa: E402
from app.tts import TTS  # noqa: E402
from lm.sampling import SamplingConfig  # noqa: E402

from conftest import PROMPT_TEXT, SR, TEXT  # noqa: E402
from test_prompt import speech_like  # noqa: E402

API = "/synthesize"
# Gradio's queue statistics use pandas options that pandas 3 deprecates; nothing of the demo's.
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]




@pytest.fixture(scope="module")
def tts(tiny_model_dir) -> TTS:
    return TTS.from_pretrained(tiny_model_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tts):
    demo = build_demo(tts)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True)
    yield demo
    demo.close()


@pytest.fixture(scope="module")
def client(served, tmp_path_factory) -> Client:
    return Client(served.local_url, verbose=False, analytics_enabled=False,
                  download_files=str(tmp_path_factory.mktemp("downloads")))


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> dict[str, Path]:
    """Voice prompt files: a good one, a silent one and one too short to clone."""
    folder = tmp_path_factory.mktemp("prompts")
    files = {"good": speech_like(3.0, SR, seed=7), "silent": np.zeros(3 * SR, np.float32),
             "short": speech_like(1.0, SR, seed=8)}
    for name, wav in files.items():
        sf.write(folder / f"{name}.wav", wav, SR)
    return {name: folder / f"{name}.wav" for name in files}


def ask(client: Client, prompt: Path | None, text: str = TEXT, **settings):
    inputs = dict(prompt_wav=handle_file(str(prompt)) if prompt else None, prompt_text="", text=text,
                  language="en-us", temperature=1.0, top_k=0, top_p=0.9, cfg_scale=1.0, seed=0, best_of=1,
                  rerank=["logprob"])
    return client.predict(**{**inputs, **settings}, api_name=API)


def test_a_request_returns_the_speech_of_the_pipeline_and_its_spectrogram(client, tts, prompts):
    audio, image, info = ask(client, prompts["good"], prompt_text=PROMPT_TEXT, seed=5, best_of=2, temperature=0.8)
    wav, sr = sf.read(audio, dtype="float32")
    expected = tts.generate(TEXT, str(prompts["good"]), PROMPT_TEXT, seed=5, best_of=2,
                            sampling=SamplingConfig(temperature=0.8, top_k=0, top_p=0.9))
    assert sr == SR and wav.ndim == 1 and 0 < len(wav) / sr < 20
    assert len(wav) == len(expected.wav)  # the settings reach the pipeline: the same seed gives the same audio
    np.testing.assert_allclose(wav, np.clip(expected.wav, -1, 1), atol=2 / 32767)
    with Image.open(image) as picture:
        assert picture.mode == "RGB" and picture.width > 2 * picture.height > 100
    assert f"{expected.duration:.2f} s of speech" in info and "real-time factor" in info
    assert "best of 2: kept candidate" in info and "with its transcript" in info


@pytest.mark.parametrize("name, message", [
    ("silent", "the voice prompt silent.wav is silent"),
    ("short", "the voice prompt short.wav holds 1.0 s of sound after trimming silence; Echo needs at least 2 s"),
    (None, "Upload or record a voice prompt first"),
])
def test_unusable_prompts_are_explained(client, prompts, name, message):
    with pytest.raises(AppError) as error:
        ask(client, prompts.get(name))
    text = str(error.value)
    assert message in text  # PromptError's message, naming the upload by its file name, not its server path
    assert "Traceback" not in text and "/tmp" not in text


@pytest.mark.parametrize("text, message", [
    ("   ", "Type the text to speak: the text box is empty."),
    (" ... ", "there is nothing to say in '...'"),
    ("a" * 1001, "the demo speaks up to 1000 at a time"),
])
def test_texts_without_words_are_explained(client, prompts, text, message):
    with pytest.raises(AppError, match=re.escape(message)) as error:
        ask(client, prompts["good"], text=text)
    assert "Traceback" not in str(error.value)


def test_settings_out_of_range_are_explained(client, prompts):
    # Gradio 6 checks the sliders' bounds itself; where it does not, SamplingConfig says which setting is wrong.
    with pytest.raises(AppError, match="0.0 is less than minimum value 0.05|top_p must be in"):
        ask(client, prompts["good"], top_p=0.0)


def test_an_unexpected_failure_is_one_line_in_the_page(client, tts, prompts, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the codec ran out of memory")

    monkeypatch.setattr(tts, "generate", broken)
    with pytest.raises(AppError) as error:
        ask(client, prompts["good"])
    assert "Synthesis failed unexpectedly (RuntimeError: the codec ran out of memory)" in str(error.value)
    assert "Traceback" not in str(error.value)


def test_the_candidates_are_scored_the_way_the_page_asks(client, prompts):
    pytest.importorskip("resemblyzer")
    _, _, info = ask(client, prompts["good"], best_of=2, rerank=["logprob", "speaker"])
    assert "best of 2: kept candidate" in info and "(logprob+speaker)" in info
    with pytest.raises(AppError, match="Tick at least one way to score the candidates"):
        ask(client, prompts["good"], best_of=2, rerank=[])


def test_details_name_each_sentence(client, prompts):
    _, _, info = ask(client, prompts["good"], text="The children found a tiny kite. My sister painted the door.")
    assert "2 sentences" in info and "scores " in info and "without a transcript" in info


STORY = "The children found a tiny kite. Then it rained."


def test_the_stream_handler_yields_the_synthesis_chunk_by_chunk(tts, prompts):
    """Without Gradio's encoder (which needs ffmpeg): the chunks the Stream button sends, and its details."""
    updates = list(app.demo._stream(tts, str(prompts["good"]), PROMPT_TEXT, STORY, "en-us", 1.0, 0, 0.9, 1.0, 5))
    chunks = [audio for audio, _ in updates[:-1]]
    assert len(chunks) > 2 and all(sr == SR and pcm.dtype == np.int16 for sr, pcm in chunks)
    whole, _ = tts.synthesize(STORY, str(prompts["good"]), PROMPT_TEXT, seed=5)
    streamed = np.concatenate([pcm for _, pcm in chunks]).astype(np.float32) / 32767
    np.testing.assert_allclose(streamed, np.clip(whole, -1, 1), atol=2 / 32767)
    assert "streaming: first audio after" in updates[0][1]
    assert f"{len(whole) / SR:.2f} s of speech streamed" in updates[-1][1]
    with pytest.raises(gr.Error, match="text box is empty"):
        next(app.demo._stream(tts, str(prompts["good"]), "", "  ", "en-us", 1.0, 0, 0.9, 1.0, 5))


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="Gradio encodes streamed audio with ffmpeg")
def test_the_stream_button_streams_through_the_page(client, tts, prompts):
    inputs = dict(prompt_wav=handle_file(str(prompts["good"])), prompt_text="", text=STORY, language="en-us",
                  temperature=1.0, top_k=0, top_p=0.9, cfg_scale=1.0, seed=5)
    job = client.submit(**inputs, api_name="/stream")
    _, details = job.result()
    updates = job.outputs()
    assert len(updates) > 2 and all(str(audio).endswith(".m3u8") for audio, _ in updates[:-1])  # an HLS stream
    whole, _ = tts.synthesize(STORY, str(prompts["good"]), seed=5)
    assert f"{len(whole) / SR:.2f} s of speech streamed" in details and "first audio after" in details


def test_without_ffmpeg_the_page_has_no_stream_button(tts, monkeypatch):
    monkeypatch.setattr(app.demo.shutil, "which", lambda name: None)
    demo = build_demo(tts, examples=False)
    assert "/stream" not in {fn.api_name and f"/{fn.api_name}" for fn in demo.fns.values()}
    assert "/synthesize" in {f"/{fn.api_name}" for fn in demo.fns.values()}


def test_serves_this_machine_only_by_default(served, tiny_model_dir, monkeypatch):
    assert served.server_name == "127.0.0.1" and served.local_url.startswith("http://127.0.0.1:")
    defaults = build_parser().parse_args(["--model", "m"])
    assert (defaults.host, defaults.port, defaults.share) == ("127.0.0.1", 7860, False)
    assert build_parser().parse_args(["--model", "m", "--share"]).share is True
    assert build_parser().parse_args(["--model", "m", "--share", "false"]).share is False

    launched = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda demo, **kwargs: launched.update(kwargs, demo=demo))
    monkeypatch.setattr(app.demo, "build_demo", lambda tts, **kwargs: gr.Blocks())  # nothing to serve
    app.demo.main(["--model", str(tiny_model_dir)])
    assert launched["server_name"] == "127.0.0.1" and launched["server_port"] == 7860 and launched["share"] is False


def test_main_reports_a_missing_model_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        app.demo.main(["--model", str(tmp_path / "missing")])
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip().startswith("echo-tts demo: error: model directory")


def test_example_prompts_are_usable_voice_prompts(tmp_path):
    prompts = example_prompts(tmp_path)
    if not prompts:
        pytest.skip("eSpeak NG cannot speak here")
    assert [transcript for _, transcript in prompts] == list(app.demo.EXAMPLE_PROMPT_TEXTS)
    for path, _ in prompts:
        assert 3.0 <= prepare_prompt(path, SR).duration <= 10.0

"""The web demo: clone a voice from a few seconds of speech, in the browser (Gradio).

    echo-tts demo                                             # the bundled model, http://127.0.0.1:7860
    echo-tts demo --model runs/lm/model                       # a model you trained
    python -m app.demo --model runs/lm/model --port 8000 --share     # --share: a public gradio.live link too

`build_demo(tts)` builds the page around a loaded `TTS` and returns the `gr.Blocks`, queued so
that one synthesis runs at a time while the next requests wait in line; `main(argv)` loads the
model and serves the page. The page's endpoint `/synthesize` takes the form's inputs:

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    wav_path, spectrogram_path, info = client.predict(
        prompt_wav=handle_file("me.wav"), text="Hello there.", api_name="/synthesize")

A second endpoint, `/stream` (the Stream button), sends the audio chunk by chunk while the
model is still writing it (`TTS.stream`), so the page starts playing before the sentence is done.
Gradio encodes streamed audio with ffmpeg: without it (`apt-get install ffmpeg`) the page has no
Stream button.

Every mistake (a silent or too short prompt, no text, a sampling setting out of range) comes
back as a `gr.Error` whose message says what to do; an unexpected failure is logged on the
server with its traceback and reported in the page in one line.

Gradio is optional: pip install 'echo-tts[demo]'.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import gradio as gr
import numpy as np

from app.cli import add_serving_arguments
from app.meters import MeterUnavailable
from app.scoring import SCORER_NAMES

if TYPE_CHECKING:
    from app.tts import TTS, Synthesis
    from lm.sampling import SamplingConfig

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"  # this machine only; 0.0.0.0 serves the network
DEFAULT_PORT = 7860
QUEUE_SIZE = 16  # requests waiting behind the one being synthesized; more are turned away
MAX_TEXT_CHARS = 1000  # a few paragraphs; longer texts belong to `echo-tts synthesize --text-file`
MAX_BEST_OF = 8
MAX_MESSAGE_CHARS = 300  # of an unexpected error's message shown in the page; the log has all of it
MAX_UPLOAD = "20mb"  # a 10 s prompt is well under 5 MB even as 48 kHz stereo float

EXAMPLE_TEXTS = (
    "The children found a tiny kite near the bridge.",
    "Would you like some tea with your cake? I baked it this morning.",
)
# Read by two eSpeak NG voices planned with another seed than the synthetic corpus' (0): their pitch,
# rate and timbre are no corpus speaker's, so for a model trained on it each prompt is a zero-shot example.
EXAMPLE_PROMPT_TEXTS = (
    "We waited almost twenty minutes for the bus, and then two of them came at once.",
    "My older sister painted the garage door a bright shade of green last summer.",
)
EXAMPLE_VOICE_SEED = 2024

INTRO = """\
# Echo: zero-shot voice cloning
Upload or record **3-10 seconds** of one person speaking clearly, type what they should say, and press
**Synthesize**. The transcript of the recording is optional; giving it usually makes the voice closer.
Clone only voices whose owners have agreed to it.
"""


def build_demo(tts: "TTS", *, examples: bool = True, queue_size: int = QUEUE_SIZE,
               streaming: bool | None = None) -> gr.Blocks:
    """The demo page for `tts`, queued (one synthesis at a time, `queue_size` waiting); not launched.

    examples: offer example texts, and two example voice prompts spoken by eSpeak NG when it is
    installed (written into a temporary folder that goes with the returned Blocks).
    streaming: offer the Stream button; None offers it when ffmpeg is installed (Gradio encodes
    streamed audio with it).
    """
    from app.tts import DEFAULT_SAMPLING
    from lm.generation import cfg_scale_for

    if streaming is None:
        streaming = shutil.which("ffmpeg") is not None
        if not streaming:
            logger.warning("ffmpeg is not installed: the demo's Stream button is off (apt-get install ffmpeg)")

    languages = list(tts.frontend.languages) or ["en-us"]
    with gr.Blocks(title="Echo voice cloning", analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column():
                prompt_wav = gr.Audio(sources=["upload", "microphone"], type="filepath",
                                      label="Voice prompt: 3-10 s of clear speech (wav, flac, ogg or mp3)")
                prompt_text = gr.Textbox(label="What the prompt says (optional)", lines=2,
                                         placeholder="The words spoken in the recording, if you know them")
                voices = _bundled_voice_names(tts)
                voice = gr.Dropdown(choices=voices, value=voices[0] if voices else None, visible=bool(voices),
                                    label="Or a voice bundled with Echo (speaks when no prompt is given)")
                text = gr.Textbox(label="Text to speak", lines=4, placeholder="Type a sentence or two")
                language = gr.Dropdown(choices=languages, value="en-us" if "en-us" in languages else languages[0],
                                       label="Language of the text", visible=len(languages) > 1)
                with gr.Accordion("Sampling", open=True):
                    with gr.Row():
                        temperature = gr.Slider(0.0, 1.5, value=DEFAULT_SAMPLING.temperature, step=0.05,
                                                label="Temperature", info="0 always picks the likeliest code")
                        top_p = gr.Slider(0.05, 1.0, value=DEFAULT_SAMPLING.top_p, step=0.05, label="Top-p",
                                          info="sample from the likeliest codes that make up p")
                    with gr.Row():
                        top_k = gr.Slider(0, tts.codec.codebook_size, value=DEFAULT_SAMPLING.top_k, step=1,
                                          label="Top-k", info="sample from the k likeliest codes (0: all)")
                        cfg_scale = gr.Slider(1.0, 5.0, value=cfg_scale_for(tts.ar, DEFAULT_SAMPLING), step=0.25,
                                              label="Text guidance", visible=tts.ar.config.guidable,
                                              info="above 1 the words come out more clearly, at some cost to the "
                                                   "voice (1: off)")
                    with gr.Row():
                        best_of = gr.Slider(1, MAX_BEST_OF, value=1, step=1, label="Best of N",
                                            info="candidates per sentence; the best-scored one is kept")
                    rerank = gr.CheckboxGroup(list(SCORER_NAMES), value=["logprob"], label="Score the candidates by",
                                              info="logprob: the model's confidence; asr: the text an ASR hears; "
                                                   "speaker: how close the voice is to the prompt's")
                    seed = gr.Number(value=0, precision=0, label="Seed", info="the same seed gives the same audio")
                with gr.Row():
                    button = gr.Button("Synthesize", variant="primary")
                    stream_button = gr.Button("Stream", variant="secondary", visible=streaming)
            with gr.Column():
                streamed = gr.Audio(label="Speech, heard while it is written (Stream; one candidate per sentence)",
                                    streaming=True, autoplay=True, interactive=False, visible=streaming)
                audio = gr.Audio(label="Speech", type="numpy", format="wav", interactive=False)
                spectrogram = gr.Image(label="Log-mel spectrogram", type="numpy", format="png", interactive=False)
                info = gr.Textbox(label="Details", interactive=False, lines=2)
        if examples:
            _add_examples(demo, prompt_wav, prompt_text, text)

        def synthesize(prompt_wav: str | None, prompt_text: str, text: str, language: str, temperature: float,
                       top_k: float, top_p: float, cfg_scale: float, seed: float, best_of: float, rerank: list[str],
                       voice: str | None = None):
            with _page_errors(prompt_wav):
                return _synthesize(tts, prompt_wav, prompt_text, text, language, temperature, top_k, top_p,
                                   cfg_scale, seed, best_of, rerank, voice=voice)

        def stream(prompt_wav: str | None, prompt_text: str, text: str, language: str, temperature: float,
                   top_k: float, top_p: float, cfg_scale: float, seed: float, voice: str | None = None):
            with _page_errors(prompt_wav):
                yield from _stream(tts, prompt_wav, prompt_text, text, language, temperature, top_k, top_p, cfg_scale,
                                   seed, voice=voice)

        form = [prompt_wav, prompt_text, text, language, temperature, top_k, top_p, cfg_scale, seed]
        bundled_voice = [voice] if voices else []  # only the bundled model's endpoints take a voice name
        button.click(synthesize, inputs=[*form, best_of, rerank, *bundled_voice], outputs=[audio, spectrogram, info],
                     api_name="synthesize")
        if streaming:
            stream_button.click(stream, inputs=[*form, *bundled_voice], outputs=[streamed, info], api_name="stream")
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    return demo


@contextmanager
def _page_errors(prompt_wav: str | None) -> Iterator[None]:
    """Every failure inside becomes a one-line gr.Error; unexpected ones are logged with their traceback."""
    try:
        yield
    except gr.Error:
        raise
    except (ValueError, MeterUnavailable) as error:  # PromptError, VoiceError, EmptyTextError, bad settings
        raise gr.Error(_tidy_message(str(error), prompt_wav), print_exception=False) from None
    except Exception as error:  # noqa: BLE001 - the page shows one line; the log keeps the traceback
        logger.exception("synthesis failed")
        message = _tidy_message(str(error), prompt_wav)
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        raise gr.Error(f"Synthesis failed unexpectedly ({type(error).__name__}: {message}). "
                       "The server's log has the details.", print_exception=False) from None


def _synthesize(tts: "TTS", prompt_wav: str | None, prompt_text: str | None, text: str | None, language: str,
                temperature: float, top_k: float, top_p: float, cfg_scale: float, seed: float | None, best_of: float,
                rerank: Sequence[str] | None = ("logprob",), voice: str | None = None
                ) -> tuple[tuple[int, np.ndarray], np.ndarray, str]:
    """One request of the form -> ((sample_rate, int16 [T]), spectrogram RGB [H, W, 3], details).
    Without a prompt, the bundled `voice` speaks."""
    from app.prompt import MAX_SECONDS

    text, sampling = _checked_request(prompt_wav, text, temperature, top_k, top_p, cfg_scale, voice)
    best_of = int(round(best_of))
    if not 1 <= best_of <= MAX_BEST_OF:
        raise ValueError(f"best of N must be between 1 and {MAX_BEST_OF}, got {best_of}")
    start = time.perf_counter()
    if not rerank:
        raise gr.Error("Tick at least one way to score the candidates (logprob scores them without listening).",
                       print_exception=False)
    result = tts.generate(text, **_voice_inputs(prompt_wav, prompt_text, voice), seed=int(seed or 0),
                          sampling=sampling, best_of=best_of, language=language or "en-us",
                          scorers=",".join(rerank) if best_of > 1 else None)
    elapsed = time.perf_counter() - start
    if result.wav.size == 0:
        raise gr.Error("The model wrote no audio for this text; try another seed or a higher temperature.",
                       print_exception=False)
    if prompt_text and prompt_text.strip() and result.voice.prompt_text is None:
        if any(ch.isalnum() for ch in prompt_text):
            reason = (f"the recording was longer than {MAX_SECONDS:g} s and only its best part was kept, which the "
                      "transcript no longer matches.")
        else:
            reason = "it has no words."
        gr.Warning(f"The transcript was not used: {reason}")
    pcm = (np.clip(result.wav, -1.0, 1.0) * 32767).round().astype(np.int16)
    image = spectrogram_image(result.wav, result.sample_rate, f"synthesis ({result.duration:.2f} s)")
    return (result.sample_rate, pcm), image, describe(result, elapsed, best_of)


def _stream(tts: "TTS", prompt_wav: str | None, prompt_text: str | None, text: str | None, language: str,
            temperature: float, top_k: float, top_p: float, cfg_scale: float, seed: float | None,
            voice: str | None = None) -> Iterator[tuple]:
    """One streamed request -> ((sample_rate, int16 chunk), details) per chunk, as `TTS.stream` writes them."""
    text, sampling = _checked_request(prompt_wav, text, temperature, top_k, top_p, cfg_scale, voice)
    start = time.perf_counter()
    first, samples = None, 0
    for piece in tts.stream(text, **_voice_inputs(prompt_wav, prompt_text, voice), seed=int(seed or 0),
                            sampling=sampling, language=language or "en-us"):
        first = time.perf_counter() - start if first is None else first
        samples += len(piece)
        pcm = (np.clip(piece, -1.0, 1.0) * 32767).round().astype(np.int16)
        yield (tts.sample_rate, pcm), f"streaming: first audio after {first:.2f} s"
    elapsed = time.perf_counter() - start
    duration = samples / tts.sample_rate
    yield gr.skip(), (f"{duration:.2f} s of speech streamed in {elapsed:.2f} s (real-time factor "
                      f"{elapsed / max(duration, 1e-9):.2f}); first audio after {first:.2f} s")


def _bundled_voice_names(tts: "TTS") -> list[str]:
    """The bundled voices, the default first, when `tts` is the bundled model (they fit no other)."""
    from app.bundled import bundled_voices

    if tts.default_voice is None:
        return []
    names = list(bundled_voices())
    default = Path(tts.default_voice).stem
    return sorted(names, key=lambda name: name != default)


def _voice_inputs(prompt_wav: str | None, prompt_text: str | None, voice: str | None) -> dict[str, str | None]:
    """The voice arguments of a TTS call: the uploaded prompt when there is one, else the bundled voice."""
    if prompt_wav:
        return {"prompt_wav": prompt_wav, "prompt_text": (prompt_text or "").strip() or None}
    return {"voice": voice}


def _checked_request(prompt_wav: str | None, text: str | None, temperature: float, top_k: float,
                     top_p: float, cfg_scale: float, voice: str | None = None) -> tuple[str, "SamplingConfig"]:
    """The form's text and sampling settings, or a gr.Error that says what to fix."""
    from lm.sampling import SamplingConfig

    text = (text or "").strip()
    if not text:
        raise gr.Error("Type the text to speak: the text box is empty.", print_exception=False)
    if len(text) > MAX_TEXT_CHARS:
        raise gr.Error(f"The text is {len(text)} characters long; the demo speaks up to {MAX_TEXT_CHARS} at a "
                       "time. Shorten it, or use `echo-tts synthesize --text-file` for long texts.",
                       print_exception=False)
    if not prompt_wav and not voice:
        raise gr.Error("Upload or record a voice prompt first: 3-10 s of one person speaking clearly.",
                       print_exception=False)
    return text, SamplingConfig(temperature=float(temperature), top_k=int(round(top_k)), top_p=float(top_p),
                                cfg_scale=float(cfg_scale))


def spectrogram_image(wav: np.ndarray, sample_rate: int, label: str) -> np.ndarray:
    """The log-mel spectrogram of wav [T], drawn with data.plots (axes in seconds and mel bands) -> RGB [H, W, 3]."""
    from PIL import Image

    from data.plots import mel_settings, plot_spectrograms

    n_fft = mel_settings(sample_rate)["n_fft"]
    if len(wav) < n_fft:  # the STFT needs one full window
        wav = np.pad(wav, (0, n_fft - len(wav)))
    with tempfile.TemporaryDirectory(prefix="echo-demo-") as tmp:
        path = plot_spectrograms({label: wav}, sample_rate, Path(tmp) / "spectrogram.png")
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))


def describe(result: "Synthesis", elapsed: float, best_of: int) -> str:
    """One line about a synthesis: how long, how fast, which candidates were kept and their scores."""
    duration = result.duration
    parts = [f"{duration:.2f} s of speech in {elapsed:.2f} s (real-time factor {elapsed / duration:.2f})"]
    segments = result.segments
    scores = [segment.scores[segment.best]["total"] for segment in segments]
    scorers = "+".join(name for name in segments[0].scores[segments[0].best] if name != "total")
    score = f"score{'s' if len(scores) > 1 else ''} {', '.join(f'{s:.2f}' for s in scores)} ({scorers})"
    if best_of > 1:
        kept = ", ".join(str(segment.best + 1) for segment in segments)
        parts.append(f"best of {best_of}: kept candidate {kept}, {score}")
    else:
        parts.append(score)
    parts.append(f"{len(segments)} sentence{'s' if len(segments) != 1 else ''}")
    voice = result.voice
    recorded = voice.metadata.get("original_duration", voice.duration)
    of = f" (of a {recorded:.1f} s recording)" if recorded > voice.duration + 0.5 else ""
    parts.append(f"voice prompt {voice.duration:.1f} s{of}, "
                 + ("with its transcript" if voice.prompt_text else "without a transcript"))
    return " · ".join(parts)


def _tidy_message(message: str, prompt_wav: str | None) -> str:
    """An error message in one line, naming an uploaded prompt by its file name, not its server path."""
    if prompt_wav:
        message = message.replace(str(prompt_wav), Path(prompt_wav).name)
    return " ".join(message.split())


def example_prompts(directory: str | Path) -> list[tuple[Path, str]]:
    """Write two voice prompts (a male and a female eSpeak NG voice) into `directory` -> [(wav, transcript)].

    Returns [] (and logs why) when eSpeak NG cannot speak here. Takes a fraction of a second.
    """
    from data.audio import write_audio
    from data.synthetic import SYNTHETIC_SAMPLE_RATE, plan_speakers, render

    try:
        speakers = plan_speakers(len(EXAMPLE_PROMPT_TEXTS), seed=EXAMPLE_VOICE_SEED)
        prompts = []
        for speaker, transcript in zip(speakers, EXAMPLE_PROMPT_TEXTS):
            wav = render(speaker, transcript)
            path = write_audio(Path(directory) / f"{speaker.gender}-voice.wav", wav, SYNTHETIC_SAMPLE_RATE)
            prompts.append((path, transcript))
        return prompts
    except (RuntimeError, OSError, ValueError) as error:
        logger.warning("the demo has no example voice prompts: eSpeak NG could not speak them (%s)", error)
        return []


def _add_examples(demo: gr.Blocks, prompt_wav: gr.Audio, prompt_text: gr.Textbox, text: gr.Textbox) -> None:
    directory = tempfile.mkdtemp(prefix="echo-demo-examples-")
    weakref.finalize(demo, shutil.rmtree, directory, True)  # when the demo goes, or at exit
    prompts = example_prompts(directory)
    if prompts:
        rows = [[str(path), transcript, sentence] for (path, transcript), sentence in zip(prompts, EXAMPLE_TEXTS)]
        gr.Examples(rows, inputs=[prompt_wav, prompt_text, text], cache_examples=False,
                    label="Examples: two eSpeak NG voices made for the demo, not in the synthetic corpus "
                          "(click one to fill in)")
    else:
        gr.Examples([[sentence] for sentence in EXAMPLE_TEXTS], inputs=[text], cache_examples=False,
                    label="Example texts")


def _on_off(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="echo-tts demo",
        description="Serve the Echo voice-cloning demo (Gradio) for an exported model.",
        epilog="examples:\n  echo-tts demo --port 7860                     # the bundled model\n"
               "  echo-tts demo --model runs/lm/model --port 7860",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_serving_arguments(parser, DEFAULT_HOST, DEFAULT_PORT)
    parser.add_argument("--share", type=_on_off, nargs="?", const=True, default=False, metavar="true|false",
                        help="also serve through a public gradio.live link (default off; anyone with the link can "
                             "use the demo)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--asr", default=None,
                        help="a Whisper directory or hub id: transcribes prompts given without a transcript "
                             "and scores best-of-N candidates")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    from app.tts import TTS

    try:
        tts = TTS.from_pretrained(args.model, args.device, asr=args.asr)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(1, f"{parser.prog}: error: {' '.join(str(error).split())}\n")
    demo = build_demo(tts)
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, max_file_size=MAX_UPLOAD)
    except OSError as error:  # the port is taken, or the address is not this machine's
        parser.exit(1, f"{parser.prog}: error: cannot serve on {args.host}:{args.port} ({error}); "
                       "choose another --port or --host\n")


if __name__ == "__main__":
    main()

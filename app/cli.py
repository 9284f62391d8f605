"""The `echo-tts` command."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import importlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.tts import TTS
    from lm.sampling import SamplingConfig

EPILOG = """\
examples:
  echo-tts synthesize --text "Hello there." --out hello.wav            # the bundled model and voice
  echo-tts voices                                                       # the bundled voices
  echo-tts synthesize --voice NAME --text "Hello there." --out hello.wav
  echo-tts synthesize --prompt me.wav --prompt-text "What I say in me.wav." \\
      --text-file story.txt --best-of 4 --out story.wav
  echo-tts voice --prompt me.wav --out me.voice
  echo-tts synthesize --voice me.voice --text "Hello again." --stream --out - | aplay -f S16_LE -r 16000 -c 1
  echo-tts synthesize --model runs/quickstart/model --prompt me.wav --text "Hello there." --out hello.wav
  echo-tts prepare-data synthetic --out runs/quickstart/corpus
  echo-tts demo --port 7860
  echo-tts serve --port 8000 --voices-dir voices

Run `echo-tts COMMAND --help` for a command's options.
"""


class CommandError(Exception):
    """A mistake in how a command was called; reported in one line."""


def build_parser() -> argparse.ArgumentParser:
    from data import prepare

    parser = argparse.ArgumentParser(
        prog="echo-tts",
        description="Echo: zero-shot voice-cloning text-to-speech (a neural codec + VALL-E language models).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    prepare_parser = commands.add_parser(
        "prepare-data",
        help="build the synthetic corpus or read a real one into manifests",
        description=prepare.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prepare.add_arguments(prepare_parser)
    prepare_parser.set_defaults(handler=prepare.run)

    synth = commands.add_parser(
        "synthesize",
        help="speak a text in the voice of a recording or of a voice preset",
        description="Speak --text (or --text-file) in the voice of --prompt (3-10 s of speech) or of a --voice "
                    "preset, and write the audio to --out (.wav, .flac or .ogg; - for raw 16-bit PCM on stdout).",
        epilog="examples:\n"
               '  echo-tts synthesize --text "Hello there." --out hello.wav     # the bundled model and voice\n'
               '  echo-tts synthesize --prompt me.wav --text "Hello there." --out hello.wav\n'
               '  echo-tts synthesize --model runs/lm/model --voice me.voice --text "Hi." --stream --out - \\\n'
               "      | aplay -f S16_LE -r 16000 -c 1      # -r: the model's sample rate",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _model_arguments(synth)
    text = synth.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help="the text to speak")
    text.add_argument("--text-file", type=Path, help="a UTF-8 text file to speak (long texts are split into sentences)")
    _voice_arguments(synth, preset=True)
    synth.add_argument("--out", type=Path, required=True,
                       help="where to write the audio (.wav, .flac or .ogg), or - for raw 16-bit little-endian mono "
                            "PCM at the model's sample rate on stdout")
    synth.add_argument("--stream", action="store_true",
                       help="write the audio as it is made, sentence by sentence and block by block (one candidate "
                            "per sentence: no --best-of)")
    synth.add_argument("--seed", type=int, default=0, help="the same seed gives the same audio (default 0)")
    synth.add_argument("--temperature", type=float, default=None,
                       help="AR sampling temperature (default 1.0; 0 is greedy)")
    synth.add_argument("--top-k", type=int, default=None, help="sample from the k most likely codes (default 0: all)")
    synth.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold (default 0.9)")
    synth.add_argument("--cfg-scale", type=float, default=None,
                       help="classifier-free guidance on the text: above 1 the words come out more clearly, at some "
                            "cost to the voice; 1 turns it off (default: the model's own, lm/sampling.py's "
                            "DEFAULT_CFG_SCALE for a model trained with text dropout, else 1)")
    synth.add_argument("--best-of", type=int, default=1, help="candidates per sentence; the best-scored one is kept")
    synth.add_argument("--rerank", default=None,
                       help="how --best-of candidates are scored: one or more of logprob, asr, speaker, e.g. "
                            "asr,speaker (asr: pocketsphinx, or the --asr model; speaker: resemblyzer; default: "
                            "logprob, and asr when --asr is given)")
    synth.set_defaults(handler=run_synthesize)

    voice = commands.add_parser(
        "voice",
        help="save a voice preset: a recording cleaned and encoded once",
        description="Clean and encode --prompt once and save it as a voice preset (a small safetensors file) "
                    "for `echo-tts synthesize --voice`.",
        epilog="example:\n"
               '  echo-tts voice --prompt me.wav --prompt-text "What I say." --out me.voice',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _model_arguments(voice)
    _voice_arguments(voice, preset=False)
    voice.add_argument("--out", type=Path, required=True, help="where to write the preset (e.g. me.voice)")
    voice.set_defaults(handler=run_voice)

    voices = commands.add_parser(
        "voices",
        help="list the voices bundled with Echo",
        description="List the voice presets bundled with Echo, for `echo-tts synthesize --voice NAME` (with the "
                    "bundled model).",
    )
    voices.set_defaults(handler=run_voices)

    _passthrough(commands, "demo", run_demo, "start the web demo (Gradio)",
                 "Start the Gradio demo; its options are app.demo's (run `echo-tts demo --help`).",
                 "[--model DIR --host 127.0.0.1 --port 7860 --share false]",
                 "echo-tts demo --host 127.0.0.1 --port 7860 --share false")
    _passthrough(commands, "serve", run_serve, "serve an OpenAI-style speech API over HTTP (FastAPI)",
                 "Serve an exported model over HTTP; its options are app.server's (run `echo-tts serve --help`).",
                 "[--model DIR --host 127.0.0.1 --port 8000 --api-key KEY --voices-dir DIR --max-queue N]",
                 "echo-tts serve --host 127.0.0.1 --port 8000")
    return parser


def _passthrough(commands, name: str, handler, summary: str, description: str, usage: str, example: str) -> None:
    """A command whose arguments belong to another module's parser (the demo's, the server's)."""
    command = commands.add_parser(name, help=summary, description=description, epilog=f"example:\n  {example}",
                                  formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    command.add_argument("args", nargs=argparse.REMAINDER, help=usage)
    command.set_defaults(handler=handler)


def add_serving_arguments(parser: argparse.ArgumentParser, default_host: str, default_port: int) -> None:
    """--model, --host and --port, as the demo and the server take them."""
    add_model_argument(parser)
    parser.add_argument("--host", default=default_host,
                        help=f"address to serve on (default {default_host}: this machine only; 0.0.0.0: the network)")
    parser.add_argument("--port", type=int, default=default_port, help=f"port to serve on (default {default_port})")


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """--model: a model directory or hub id; without it, the bundled model."""
    parser.add_argument("--model", default=None, metavar="DIR",
                        help="an exported model directory (codec/, ar/, nar/, text/) or a hub id (default: the "
                             "model bundled with Echo)")


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--asr", default=None,
                        help="a Whisper directory or hub id: transcribes prompts given without --prompt-text")


def _voice_arguments(parser: argparse.ArgumentParser, preset: bool) -> None:
    if preset:
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--prompt", type=Path, help="a recording of the voice to clone: 3-10 s of clear speech")
        group.add_argument("--voice", metavar="PRESET|NAME",
                           help="a voice preset saved by `echo-tts voice`, or the name of a bundled voice (`echo-tts "
                                "voices` lists them); with neither --prompt nor --voice the bundled model's default "
                                "voice speaks")
    else:
        parser.add_argument("--prompt", type=Path, required=True,
                            help="a recording of the voice to clone: 3-10 s of clear speech")
    parser.add_argument("--prompt-text", default=None, help="what the prompt says (optional; improves the cloning)")
    parser.add_argument("--language", default="en-us", help="language of the text (default en-us)")


def _load(args: argparse.Namespace):
    from app.tts import TTS

    return TTS.from_pretrained(args.model, args.device, asr=args.asr)


def run_synthesize(args: argparse.Namespace) -> Path | None:
    from app.tts import DEFAULT_SAMPLING
    from lm.sampling import SamplingConfig

    if args.prompt_text is not None and args.prompt is None:
        raise CommandError("--prompt-text goes with --prompt; a --voice preset carries its own transcript")
    if args.stream and args.best_of != 1:
        raise CommandError("--stream speaks one candidate per sentence (choosing the best of several needs them all "
                           "first): drop --best-of or --stream")
    if args.text_file is not None:
        try:
            text = args.text_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise CommandError(f"cannot read --text-file {args.text_file}: {error}") from None
    else:
        text = args.text
    given = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "cfg_scale": args.cfg_scale}
    sampling = SamplingConfig(**{**vars(DEFAULT_SAMPLING), **{k: v for k, v in given.items() if v is not None}})
    tts = _load(args)
    if args.prompt is None and args.voice is None and tts.default_voice is None:
        raise CommandError(f"the model {args.model} has no default voice: give a recording to clone (--prompt "
                           "VOICE.wav) or a voice preset (--voice PRESET)")
    if args.stream:
        return _stream(tts, text, sampling, args)
    wav, sample_rate = tts.synthesize(text, args.prompt, args.prompt_text, voice=args.voice, seed=args.seed,
                                      sampling=sampling, best_of=args.best_of, language=args.language,
                                      scorers=args.rerank)
    if _to_stdout(args):
        from app.audio_formats import pcm16

        _write_stdout(pcm16(wav))
        print(f"wrote {len(wav) / sample_rate:.2f} s of 16-bit PCM at {sample_rate} Hz to stdout", file=sys.stderr)
        return None
    from data.audio import write_audio

    path = write_audio(args.out, wav, sample_rate)
    print(f"wrote {path} ({len(wav) / sample_rate:.2f} s at {sample_rate} Hz)")
    return path


def _stream(tts: TTS, text: str, sampling: SamplingConfig, args: argparse.Namespace) -> Path | None:
    """`TTS.stream` to stdout (raw PCM, flushed piece by piece) or into --out as the pieces come."""
    from app.audio_formats import ProgressiveAudioFile, pcm16

    to_stdout, rate = _to_stdout(args), tts.sample_rate
    start, first_audio, samples = time.perf_counter(), None, 0
    with contextlib.ExitStack() as stack:
        pieces = stack.enter_context(contextlib.closing(tts.stream(
            text, args.prompt, args.prompt_text, voice=args.voice, seed=args.seed, sampling=sampling,
            language=args.language)))
        out = None if to_stdout else stack.enter_context(ProgressiveAudioFile(args.out, rate))
        for piece in pieces:
            if first_audio is None:
                first_audio = time.perf_counter() - start
            if out is None:
                _write_stdout(pcm16(piece))
            else:
                out.write(piece)
            samples += len(piece)
    latency = f"first audio after {first_audio:.2f} s" if first_audio is not None else "no audio"
    if to_stdout:
        print(f"wrote {samples / rate:.2f} s of 16-bit PCM at {rate} Hz to stdout ({latency})", file=sys.stderr)
        return None
    print(f"wrote {args.out} ({samples / rate:.2f} s at {rate} Hz, {latency})")
    return args.out


def _to_stdout(args: argparse.Namespace) -> bool:
    return str(args.out) == "-"


def _write_stdout(data: bytes) -> None:
    """Write audio bytes to stdout now; a reader that went away (aplay stopped, `| head -c`) ends the command."""
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):  # no second BrokenPipeError when Python flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise CommandError("stdout was closed by its reader before the audio ended") from None


def run_voices(args: argparse.Namespace) -> list[str]:
    from app.bundled import bundled_voices, read_card
    from app.voice import load_voice

    voices, card = bundled_voices(), read_card()
    if not voices:
        raise CommandError("this installation of Echo has no bundled voices; make a preset with: echo-tts voice "
                           "--prompt VOICE.wav --out PRESET.voice")
    described = card.get("voices", {})
    print("bundled voices (echo-tts synthesize --voice NAME):")
    width = max(len(name) for name in voices)
    for name, path in voices.items():
        voice = load_voice(path)
        default = " (default)" if name == card.get("default_voice") else ""
        about = described.get(name, {}).get("description", voice.source)
        print(f"  {name:<{width}}  {voice.duration:4.1f} s  {about}{default}")
        if voice.prompt_text:
            print(f"  {'':<{width}}  says: {voice.prompt_text}")
    return list(voices)


def run_voice(args: argparse.Namespace) -> Path:
    tts = _load(args)
    voice = tts.prepare_voice(args.prompt, args.prompt_text, args.language)
    path = voice.save(args.out)
    transcript = f'transcript "{voice.prompt_text}"' if voice.prompt_text else "no transcript"
    print(f"wrote {path} ({voice.duration:.2f} s of prompt, {transcript})")
    return path


def run_demo(args: argparse.Namespace) -> None:
    try:
        demo = importlib.import_module("app.demo")
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] == "gradio":
            raise CommandError("the demo needs Gradio: pip install 'echo-tts[demo]' (or pip install gradio)") from None
        if error.name == "app.demo":
            raise CommandError("this installation of Echo has no demo (app/demo.py is missing)") from None
        raise
    return demo.main(args.args)


def run_serve(args: argparse.Namespace) -> None:
    try:
        server = importlib.import_module("app.server")
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] in ("fastapi", "uvicorn", "starlette", "pydantic", "multipart"):
            raise CommandError("the server needs FastAPI and uvicorn: pip install 'echo-tts[server]' "
                               f"({error.name} is missing)") from None
        if error.name == "app.server":
            raise CommandError("this installation of Echo has no server (app/server.py is missing)") from None
        raise
    return server.main(args.args)


def main(argv: list[str] | None = None) -> None:
    parser, args = parse(argv)
    handle(parser, args)


def parse(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The command line -> (parser, args); `--help` and usage errors exit here."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv[:1] in (["demo"], ["serve"]):  # everything after the command is app.demo's or app.server's to parse
        return parser, argparse.Namespace(handler=run_demo if argv[0] == "demo" else run_serve, command=argv[0],
                                          args=argv[1:])
    return parser, parser.parse_args(argv)


def handle(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Run the parsed command; a mistake of the user's is reported in one line."""
    from app.meters import MeterUnavailable
    from app.prompt import PromptError
    from app.voice import VoiceError

    try:
        args.handler(args)
    except (CommandError, PromptError, VoiceError, MeterUnavailable, FileNotFoundError, ValueError) as error:
        message = " ".join(str(error).split())  # one line, whatever the exception held
        parser.exit(1, f"echo-tts {args.command}: error: {message}\n")


def run() -> None:
    """The `echo-tts` console script: `main`, in a process that starts and exits quickly."""
    parser, args = parse()  # --help and usage errors need no torch
    import_torch_quickly()
    handle(parser, args)
    exit_quickly()


def import_torch_quickly() -> None:
    """Import torch with the cyclic garbage collector paused, then freeze what it made.

    Importing torch leaves about 180,000 objects for the collector to track (`len(gc.get_objects())`),
    none of them garbage. It would walk them again and again while they are made: about 0.45 s of a
    cold start on 2 cores
    (README: how fast from a cold start). `gc.freeze` takes them out of later collections. Every
    command imports torch, so importing it first costs nothing.
    """
    gc.disable()
    try:
        import torch  # noqa: F401
    finally:
        gc.freeze()
        gc.enable()


def exit_quickly() -> None:
    """End a finished command without tearing the interpreter down.

    With torch loaded, the teardown (the collector's last walk, then every module's objects freed one
    by one) takes another 1.3 s of a cold start on 2 cores; the operating system takes the memory
    back at once. The exit handlers run first (logging, temporary files) and the output is flushed,
    as at a normal exit. While other threads still run, the interpreter ends as usual and joins them.
    """
    if threading.active_count() > 1:
        return
    atexit._run_exitfuncs()  # what the interpreter's own exit would run
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    run()

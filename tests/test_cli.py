import os
import subprocess
import sys
import types

import numpy as np
import pytest
import soundfile as sf

from app.audio_formats import ProgressiveAudioFile
from app.cli import main
from conftest import PROMPT_TEXT, SR, TEXT, build_tiny_model
from test_prompt import speech_like




pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = build_tiny_model(root)
    prompt = root / "me.wav"
    sf.write(prompt, speech_like(3.0, 22050, seed=1), 22050)
    return root, model, prompt


def fails(argv, capsys) -> str:
    """Run the command, expect a non-zero exit with a one-line message and no traceback."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code not in (0, None)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_help_lists_every_command_with_examples(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("prepare-data", "synthesize", "voice", "voices", "demo", "serve"):
        assert command in out
    assert "examples:" in out and 'echo-tts synthesize --text "Hello there." --out hello.wav' in out
    assert "echo-tts synthesize --model runs/quickstart/model --prompt me.wav" in out
    assert "echo-tts serve --port 8000" in out and "--stream --out - | aplay" in out


def test_help_needs_no_torch():
    """The console script parses its command line before it imports torch: --help answers at once."""
    code = ("import sys, app.cli\nsys.argv = ['echo-tts', '--help']\ntry:\n    app.cli.run()\nexcept SystemExit:\n"
            "    pass\nprint('torch' in sys.modules, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr.strip() == "False" and "usage: echo-tts" in done.stdout


def test_the_console_script_speaks_as_main_does(files, capsys):
    """`echo-tts` (app.cli.run: torch imported with the collector paused, the process ended without a
    teardown) writes main's audio and reports it."""
    root, model, prompt = files
    argv = ["synthesize", "--model", str(model), "--prompt", str(prompt), "--text", TEXT, "--seed", "3"]
    main([*argv, "--out", str(root / "main.wav")])
    done = subprocess.run([sys.executable, "-m", "app.cli", *argv, "--out", str(root / "run.wav")],
                          capture_output=True, text=True, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {root / 'run.wav'}")  # flushed before the quick exit
    np.testing.assert_array_equal(sf.read(root / "run.wav")[0], sf.read(root / "main.wav")[0])


def test_synthesize_writes_a_wav(files, capsys):
    root, model, prompt = files
    out = root / "hello.wav"
    main(["synthesize", "--model", str(model), "--prompt", str(prompt), "--prompt-text", PROMPT_TEXT,
          "--text", TEXT, "--out", str(out), "--seed", "3", "--temperature", "0.8", "--top-k", "8",
          "--top-p", "0.95", "--best-of", "2"])
    assert f"wrote {out}" in capsys.readouterr().out
    wav, sr = sf.read(out)
    assert sr == SR and wav.ndim == 1 and len(wav) > 0


def test_rerank_chooses_how_candidates_are_scored(files, capsys):
    pytest.importorskip("resemblyzer")
    from app.tts import TTS

    root, model, prompt = files
    out = root / "reranked.wav"
    main(["synthesize", "--model", str(model), "--prompt", str(prompt), "--text", TEXT, "--out", str(out),
          "--seed", "2", "--best-of", "3", "--rerank", "speaker"])
    expected, _ = TTS.from_pretrained(model).synthesize(TEXT, str(prompt), seed=2, best_of=3, scorers="speaker")
    wav, _ = sf.read(out, dtype="float32")
    np.testing.assert_allclose(wav, np.clip(expected, -1, 1), atol=2 / 32767)
    with pytest.raises(SystemExit):
        main(["synthesize", "--model", str(model), "--prompt", str(prompt), "--text", TEXT, "--out", str(out),
              "--best-of", "2", "--rerank", "loudness"])
    assert "rerank with one or more of logprob, asr, speaker" in capsys.readouterr().err


def test_voice_preset_then_synthesize_from_a_text_file(files, capsys):
    root, model, prompt = files
    preset = root / "me.voice"
    main(["voice", "--model", str(model), "--prompt", str(prompt), "--out", str(preset)])
    assert "no transcript" in capsys.readouterr().out
    story = root / "story.txt"
    story.write_text("The children found a tiny kite near the bridge. My older sister painted the garage door.\n")
    main(["synthesize", "--model", str(model), "--voice", str(preset), "--text-file", str(story),
          "--out", str(root / "story.flac")])
    wav, sr = sf.read(root / "story.flac")
    assert sr == SR and len(wav) > 0.3 * SR


@pytest.mark.parametrize("problem", ["short_prompt", "missing_prompt", "missing_model", "bad_preset", "text_and_voice"])
def test_errors_are_one_line_and_exit_non_zero(files, capsys, problem):
    root, model, prompt = files
    short = root / "short.wav"
    sf.write(short, speech_like(1.0, SR), SR)
    (root / "bad.voice").write_bytes(b"junk")
    out = str(root / "x.wav")
    argv, message = {
        "short_prompt": (["--model", str(model), "--prompt", str(short)], "at least 2 s"),
        "missing_prompt": (["--model", str(model), "--prompt", str(root / "nope.wav")], "does not exist"),
        "missing_model": (["--model", str(root / "no-model"), "--prompt", str(prompt)], "model directory"),
        "bad_preset": (["--model", str(model), "--voice", str(root / "bad.voice")], "not an Echo voice preset"),
        "text_and_voice": (["--model", str(model), "--voice", str(root / "bad.voice"), "--prompt-text", "Hi."],
                           "--prompt-text goes with --prompt"),
    }[problem]
    err = fails(["synthesize", *argv, "--text", TEXT, "--out", out], capsys)
    assert err.startswith("echo-tts synthesize: error:") and message in err


def test_demo_hands_its_arguments_to_app_demo(monkeypatch):
    received = []
    fake = types.ModuleType("app.demo")
    fake.main = lambda argv: received.append(argv)
    monkeypatch.setitem(sys.modules, "app.demo", fake)
    main(["demo", "--model", "runs/lm/model", "--port", "7861", "--share", "false"])
    assert received == [["--model", "runs/lm/model", "--port", "7861", "--share", "false"]]


def test_sampling_flags_reach_the_sampler(files, monkeypatch):
    root, model, prompt = files
    import app.tts

    seen = {}
    real = app.tts.TTS.synthesize

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(app.tts.TTS, "synthesize", spy)
    main(["synthesize", "--model", str(model), "--prompt", str(prompt), "--text", TEXT, "--out",
          str(root / "s.wav"), "--top-k", "5", "--seed", "7"])
    assert seen["sampling"].top_k == 5 and seen["sampling"].top_p == 0.9 and seen["sampling"].temperature == 1.0
    assert seen["seed"] == 7 and seen["best_of"] == 1
    assert np.isfinite(sf.read(root / "s.wav")[0]).all()


def test_synthesize_streams_raw_pcm_to_stdout(files, capsysbinary):
    root, model, prompt = files
    text = "The children found a tiny kite near the bridge. My older sister painted the garage door."
    common = ["synthesize", "--model", str(model), "--prompt", str(prompt), "--text", text, "--seed", "2"]
    main([*common, "--stream", "--out", "-"])
    streamed = capsysbinary.readouterr()
    assert b"wrote" in streamed.err and b"to stdout (first audio after" in streamed.err
    assert len(streamed.out) > 0 and len(streamed.out) % 2 == 0  # whole 16-bit samples, nothing else on stdout
    main([*common, "--out", "-"])  # the whole synthesis, as raw PCM too
    whole = np.frombuffer(capsysbinary.readouterr().out, dtype="<i2")
    main([*common, "--out", str(root / "whole.wav")])
    capsysbinary.readouterr()
    pcm = np.frombuffer(streamed.out, dtype="<i2")
    assert len(pcm) == len(whole) == sf.info(root / "whole.wav").frames
    # The stream's float pieces are the whole synthesis' audio up to 1e-7: at most one 16-bit step apart.
    assert np.abs(pcm.astype(int) - whole).max() <= 1


def test_synthesize_streams_into_a_file_that_appears_when_complete(files, capsys):
    root, model, prompt = files
    out = root / "streamed.flac"
    main(["synthesize", "--model", str(model), "--prompt", str(prompt), "--text", TEXT, "--stream", "--out", str(out)])
    assert f"wrote {out}" in capsys.readouterr().out
    wav, sr = sf.read(out)
    assert sr == SR and wav.ndim == 1 and len(wav) > 0
    assert not list(root.glob(".streamed.flac*"))  # the partial file became the file


def test_a_stream_into_a_file_that_fails_leaves_the_old_file(tmp_path):
    out = tmp_path / "story.wav"
    sf.write(out, np.zeros(10), SR, subtype="PCM_16")
    with pytest.raises(KeyboardInterrupt), ProgressiveAudioFile(out, SR) as stream:
        stream.write(np.full(100, 0.5, dtype=np.float32))
        raise KeyboardInterrupt
    assert sf.info(out).frames == 10 and [p.name for p in tmp_path.iterdir()] == ["story.wav"]


def test_stream_refuses_best_of(files, capsys):
    root, model, prompt = files
    err = fails(["synthesize", "--model", str(model), "--prompt", str(prompt), "--text", TEXT, "--stream",
                 "--best-of", "2", "--out", "-"], capsys)
    assert "--stream speaks one candidate per sentence" in err


def test_serve_hands_its_arguments_to_app_server(monkeypatch):
    received = []
    fake = types.ModuleType("app.server")
    fake.main = lambda argv: received.append(argv)
    monkeypatch.setitem(sys.modules, "app.server", fake)
    main(["serve", "--model", "runs/lm/model", "--port", "8001", "--help"])
    assert received == [["--model", "runs/lm/model", "--port", "8001", "--help"]]


def test_serve_loads_the_model_and_serves_it_with_the_options_given(files, monkeypatch, tmp_path):
    root, model, _ = files
    import app.server

    served = {}
    monkeypatch.setattr(app.server, "serve", lambda tts, config, host, port, log_level: served.update(
        tts=tts, config=config, host=host, port=port, log_level=log_level))
    monkeypatch.setenv("ECHO_API_KEY", "from-the-environment")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    main(["serve", "--model", str(model)])
    config = served["config"]
    assert served["host"] == "127.0.0.1" and served["port"] == 8000 and served["log_level"] == "info"
    assert served["tts"].sample_rate == SR
    assert config.api_key == "from-the-environment" and config.voices_dir == tmp_path / "data" / "echo-tts" / "voices"
    assert (config.max_queue, config.max_input_chars, config.max_upload_bytes) == (16, 4096, 20 * 2**20)

    main(["serve", "--model", str(model), "--host", "0.0.0.0", "--port", "9000", "--api-key", "k",
          "--voices-dir", str(root / "voices"), "--max-queue", "3", "--max-input-chars", "500",
          "--max-upload-mb", "0.5", "--model-name", "mine", "--threads", "1", "--log-level", "warning"])
    config = served["config"]
    assert served["host"] == "0.0.0.0" and served["port"] == 9000 and served["log_level"] == "warning"
    assert config.api_key == "k" and config.voices_dir == root / "voices" and config.model_name == "mine"
    assert (config.max_queue, config.max_input_chars, config.max_upload_bytes, config.torch_threads) == \
        (3, 500, 2**19, 1)


@pytest.mark.parametrize("argv, message", [
    (["--model", "no-model"], "model directory no-model does not exist"),
    (["--max-queue", "0"], "max_queue must be at least 1"),
])
def test_serve_mistakes_are_one_line(files, capsys, argv, message):
    _, model, _ = files
    err = fails(["serve", "--model", str(model), *argv], capsys)
    assert err.startswith("echo-tts serve: error:") and message in err

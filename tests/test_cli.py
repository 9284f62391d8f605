import sys
import types

import numpy as np
import pytest
import soundfile as sf

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
    for command in ("prepare-data", "synthesize", "voice", "demo"):
        assert command in out
    assert "examples:" in out and "echo-tts synthesize --model runs/lm/model --prompt me.wav" in out


def test_synthesize_writes_a_wav(files, capsys):
    root, model, prompt = files
    out = root / "hello.wav"
    main(["synthesize", "--model", str(model), "--prompt", str(prompt), "--prompt-text", PROMPT_TEXT,
          "--text", TEXT, "--out", str(out), "--seed", "3", "--temperature", "0.8", "--top-k", "8",
          "--top-p", "0.95", "--best-of", "2"])
    assert f"wrote {out}" in capsys.readouterr().out
    wav, sr = sf.read(out)
    assert sr == SR and wav.ndim == 1 and len(wav) > 0


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

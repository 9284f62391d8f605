"""The bundled model and voices: half-precision storage, and every entry point falling back to them.

These tests build a bundle from the tiny random-weight model and point app.bundled at it; the
reading test of the real bundled model is tests/test_reading.py.
"""

import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors import safe_open

from app import bundled
from app.cli import main
from app.server import VoiceStore
from app.tts import TTS, synthesize
from app.voice import VoiceError
from conftest import PROMPT_TEXT, SR, TEXT
from test_prompt import speech_like

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bundle(tiny_model_dir, tmp_path_factory):
    """A bundle of the tiny model in half precision with two voices, "amy" the default."""
    root = tmp_path_factory.mktemp("assets")
    model = bundled.save_half_precision(tiny_model_dir, root / "model")
    tts = TTS.from_pretrained(model)
    for name, seed in (("amy", 3), ("ben", 4)):
        voice = tts.prepare_voice((speech_like(3.0, SR, seed=seed), SR), PROMPT_TEXT)
        voice.save(root / "voices" / f"{name}.voice")
    card = {"default_voice": "amy", "voices": {"amy": {"description": "flite, slt, female, en-us"}}}
    bundled.write_card(card, root / "card.json")
    return root


@pytest.fixture
def installed(bundle, monkeypatch):
    """app.bundled reads the test bundle as if it shipped in the package."""
    monkeypatch.setattr(bundled, "MODEL_DIR", bundle / "model")
    monkeypatch.setattr(bundled, "VOICES_DIR", bundle / "voices")
    monkeypatch.setattr(bundled, "CARD_FILE", bundle / "card.json")
    return bundle


def test_half_precision_halves_the_weights_and_speaks_like_the_float32_model(tiny_model_dir, bundle):
    for part in ("codec", "ar", "nar"):
        full, half = tiny_model_dir / part / "model.safetensors", bundle / "model" / part / "model.safetensors"
        with safe_open(str(half), framework="pt") as f, safe_open(str(full), framework="pt") as g:
            assert f.metadata() == g.metadata()
            dtypes = {f.get_tensor(name).dtype for name in f.keys()}
            assert torch.float32 not in dtypes and torch.float16 in dtypes
        assert half.stat().st_size < 0.6 * full.stat().st_size
    vocab = "text/text_vocab.json"
    assert (bundle / "model" / vocab).read_bytes() == (tiny_model_dir / vocab).read_bytes()

    full, half = TTS.from_pretrained(tiny_model_dir), TTS.from_pretrained(bundle / "model")
    assert all(p.dtype == torch.float32 for p in half.ar.parameters())
    voice = bundle / "voices" / "amy.voice"
    a, b = full.generate(TEXT, voice=voice, seed=1), half.generate(TEXT, voice=voice, seed=1)
    assert torch.equal(a.segments[0].chosen.codes1, b.segments[0].chosen.codes1)
    assert a.wav.shape == b.wav.shape and np.abs(a.wav - b.wav).max() < 1e-3


def test_a_model_that_does_not_fit_in_half_precision_is_refused(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    source = tmp_path / "source"
    shutil.copytree(tiny_model_dir, source)
    weights = source / "nar" / "model.safetensors"
    state = load_file(str(weights))
    name = next(name for name, tensor in state.items() if tensor.is_floating_point())
    state[name] = state[name] + 1e6
    save_file(state, str(weights))
    with pytest.raises(ValueError, match="do not fit in float16"):
        bundled.save_half_precision(source, tmp_path / "half")
    assert not (tmp_path / "half").exists()


def test_no_model_given_loads_the_bundled_model_and_its_default_voice(installed):
    tts = TTS.from_pretrained()
    assert tts.default_voice == installed / "voices" / "amy.voice"
    alone = tts.generate(TEXT, seed=2)
    assert alone.voice.prompt_text == PROMPT_TEXT
    assert np.array_equal(alone.wav, tts.generate(TEXT, voice="amy", seed=2).wav)
    assert not np.array_equal(alone.wav, tts.generate(TEXT, voice="ben", seed=2).wav)
    wav, rate = synthesize(TEXT, seed=2)
    assert rate == SR and np.array_equal(wav, alone.wav)
    with pytest.raises(VoiceError, match="bundled: amy, ben"):
        tts.generate(TEXT, voice="nobody")


def test_a_model_of_ones_own_has_no_default_voice(tiny_model_dir, installed):
    tts = TTS.from_pretrained(tiny_model_dir)
    assert tts.default_voice is None
    with pytest.raises(ValueError, match="give prompt_wav"):
        tts.generate(TEXT)


def test_without_a_bundle_the_error_says_what_to_pass(monkeypatch, tmp_path):
    monkeypatch.setattr(bundled, "MODEL_DIR", tmp_path / "model")
    with pytest.raises(FileNotFoundError, match="no bundled model .*--model DIR"):
        TTS.from_pretrained()


def test_cli_speaks_with_the_bundled_model_and_voices(installed, tmp_path, capsys):
    out = tmp_path / "hello.wav"
    main(["synthesize", "--text", TEXT, "--out", str(out), "--seed", "2"])
    default, rate = sf.read(out, dtype="float32")
    assert rate == SR and len(default) > 0
    main(["synthesize", "--text", TEXT, "--voice", "ben", "--out", str(out), "--seed", "2"])
    assert not np.array_equal(sf.read(out, dtype="float32")[0], default)

    capsys.readouterr()
    main(["voices"])
    listed = capsys.readouterr().out
    assert "amy" in listed and "flite, slt, female, en-us (default)" in listed and "ben" in listed
    assert PROMPT_TEXT in listed

    for argv, message in [
        (["--voice", "nobody"], "neither a voice preset file nor a bundled voice (bundled: amy, ben)"),
        (["--prompt-text", PROMPT_TEXT], "--prompt-text goes with --prompt"),
        (["--model", str(installed / "model")], "has no default voice: give a recording"),
    ]:
        with pytest.raises(SystemExit):
            main(["synthesize", "--text", TEXT, "--out", str(out), *argv])
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_the_server_offers_the_bundled_voices_and_keeps_them(installed, tmp_path):
    from app.server import APIError

    store = VoiceStore(tmp_path / "voices", TTS.from_pretrained())
    assert store.names() == ["amy", "ben"]
    assert store.load("ben").prompt_text == PROMPT_TEXT
    with pytest.raises(APIError, match="bundled with Echo"):
        store.delete("amy")
    with pytest.raises(APIError, match="exists already"):
        store.save("amy", store.load("ben"))
    assert VoiceStore(tmp_path / "voices", TTS.from_pretrained(installed / "model")).names() == []


def test_the_demo_speaks_in_a_bundled_voice_without_a_prompt(installed):
    demo = pytest.importorskip("app.demo")
    from lm.sampling import SamplingConfig

    tts = TTS.from_pretrained()
    assert demo._bundled_voice_names(tts) == ["amy", "ben"]
    (rate, pcm), _, details = demo._synthesize(tts, None, "", TEXT, "en-us", 1.0, 0, 0.9, 1.0, 2, 1, voice="ben")
    sampling = SamplingConfig(temperature=1.0, top_k=0, top_p=0.9, cfg_scale=1.0)
    expected, _ = tts.synthesize(TEXT, voice="ben", seed=2, sampling=sampling)
    assert rate == SR and np.array_equal(pcm, (np.clip(expected, -1, 1) * 32767).round().astype(np.int16))
    assert "with its transcript" in details
    assert demo._bundled_voice_names(TTS.from_pretrained(installed / "model")) == []

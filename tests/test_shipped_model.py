"""The model that ships with Echo (app/assets/): it loads by default, the wheel carries it, and it reads.

The reading test guards the whole inference path (text front-end, AR, NAR, codec, the voice
presets): it synthesizes the ten held-out sentences of recipes/evaluate_prompts.py (from the
long corpus's test split: no training utterance has them) in the default bundled voice and has
pocketsphinx transcribe them. With the same seeds the syntheses are the same on every machine up
to float rounding, so the bound is set from the measured figures, with room for that rounding and
none for a model that stops reading: see READING_BOUND.
"""

import json
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from app import bundled
from app.tts import TTS
from codec.model import CodecConfig
from recipes.evaluate_prompts import SENTENCES as READING_SENTENCES
from recipes.quickstart import QuickstartConfig, recipe_argv
from recipes.train_codec import TrainCodecConfig
from recipes.train_lm import TrainLMConfig
from recipes.training import CONFIG_DIR, load_config

# Word error rate of pocketsphinx over the ten sentences (pooled): the bundled model's syntheses make
# 37 errors in 80 words (the same synthesis and ASR as this test, on the 2-core machine that bundled
# it; runs/long3's model before it: 34), the long corpus's own recordings of the sentences 27 (the
# ground truth, the same ASR on runs/long3/corpus). A model that does not read makes more errors than
# there are words (the earlier quickstart model: 91 in 80); the bound leaves room for 11 more errors
# than measured, for float rounding that changes a sampled code on another machine.
MEASURED_WER = 37 / 80
GROUND_TRUTH_WER = 27 / 80
READING_BOUND = 0.60

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tts() -> TTS:
    return TTS.from_pretrained()


def test_the_bundled_model_loads_by_default_in_float32_from_half_precision(tts):
    assert tts.default_voice == bundled.default_voice()
    for part in ("ar", "nar"):
        module = getattr(tts, part)
        assert all(p.dtype == torch.float32 for p in module.parameters())
    card = bundled.read_card()
    assert set(card["voices"]) == set(bundled.bundled_voices()) and card["default_voice"] in card["voices"]
    for voice in bundled.bundled_voices():
        assert tts.load_voice(voice).prompt_text


def test_the_bundled_model_reads_held_out_sentences(tts):
    from app.meters import ErrorCount, load_asr, word_errors

    asr = load_asr("pocketsphinx")
    total, heard = ErrorCount(0, 0), []
    # in one batch, each sentence as `tts.synthesize(sentence, seed=k)` speaks it (up to float rounding)
    spoken = tts.synthesize_batch(READING_SENTENCES, seeds=list(range(len(READING_SENTENCES))))
    for sentence, (wav, rate) in zip(READING_SENTENCES, spoken):
        transcript = asr.transcribe(wav, rate)
        total += word_errors(sentence, transcript)
        heard.append(f"{sentence!r} -> {transcript!r}")
    wer = total.rate
    assert wer <= READING_BOUND, (f"WER {wer:.3f} > {READING_BOUND} (measured when bundled {MEASURED_WER:.3f}, the "
                                  f"recordings {GROUND_TRUTH_WER:.3f}):\n" + "\n".join(heard))


def test_the_bundled_model_is_what_the_long_recipe_trains():
    """The bundled codec's and LMs' settings are those the long recipe (quickstart --preset long)
    trains with: a change to the recipe that makes the bundled model stale fails here until the model is
    retrained or converted in the same change. The corpus-given fields (vocabulary, codec identity) are
    the training data's, not the recipe's."""
    recipe = load_config(QuickstartConfig, "long", {}, preset_dir=CONFIG_DIR / "quickstart")
    model = bundled.default_model_dir()
    codec = load_config(TrainCodecConfig, recipe.codec.preset, recipe_argv(recipe.codec.overrides),
                        preset_dir=CONFIG_DIR / "codec").model
    assert CodecConfig.from_dict(json.loads((model / "codec" / "config.json").read_text())) == codec
    lm = load_config(TrainLMConfig, recipe.lm.preset, recipe_argv(recipe.lm.overrides), preset_dir=CONFIG_DIR / "lm")
    for kind in ("ar", "nar"):
        config = getattr(lm, kind)
        saved = type(config).from_dict(json.loads((model / kind / "config.json").read_text()))
        assert replace(config, **{k: getattr(saved, k) for k in config.corpus_fields}) == saved, kind


def test_the_wheel_ships_the_model_and_voices(tmp_path):
    root = Path(bundled.__file__).parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(root)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("echo_tts-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {info.filename: info.file_size for info in archive.infolist()}
    expected = {f"app/{path.relative_to(bundled.ASSETS_DIR.parent)}": path.stat().st_size
                for path in bundled.ASSETS_DIR.rglob("*") if path.is_file()}
    assert expected and {name: shipped.get(name) for name in expected} == expected

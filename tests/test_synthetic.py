"""The built-in synthetic corpus: eSpeak NG synthesis, the sentence grammar, the speakers and the builder."""

from __future__ import annotations

import json
import shutil
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data.espeak import EspeakSynthesizer, VoiceSettings, espeak_synthesizer, find_espeak
from data.manifest import Utterance
from data.phoneme_timings import PAUSE, TIMINGS_FILE, base_phoneme, match_phonemes, read_timings
from data.phonemes import is_phone_token
from data.phonemes import Phonemizer
from data.sentences import MAX_WORDS, MIN_WORDS, generate_sentences
from data.synthetic import (
    DEFAULT_NUM_SPEAKERS,
    F0_RANGE,
    SYNTHETIC_SAMPLE_RATE,
    build_synthetic_corpus,
    calibrate_speaker,
    estimate_f0,
    flite_available,
    plan_speakers,
    render,
    render_with_timings,
)

TINY_HOURS, TINY_SPEAKERS = 0.01, 4  # 36 s of audio, 9 s per speaker
TINY_OPTIONS = dict(seed=0, num_speakers=TINY_SPEAKERS, workers=1, use_flite=False)

# The phonemes of General American English, as eSpeak NG writes them.
ENGLISH_PHONEMES = {
    *"p b t d k ɡ f v θ ð s z ʃ ʒ h tʃ dʒ m n ŋ l ɹ w j".split(),
    *"iː ɪ eɪ ɛ æ ɑː ɔː ʊ uː ʌ ə ɚ ɜː aɪ aʊ ɔɪ oʊ".split(),
}


# eSpeak NG

def test_synthesizer_speaks_the_same_audio_whatever_came_before() -> None:
    synthesizer = espeak_synthesizer()
    voice = VoiceSettings("en-us+m3", pitch=40, volume=60)
    first = synthesizer.synthesize("The quick brown fox jumps over the lazy dog.", voice)
    for variant in ("f2", "klatt", "Alex"):  # each would leave different state behind in an in-process call
        other = VoiceSettings(f"en-gb-scotland+{variant}", pitch=80)
        synthesizer.synthesize("Something else, spoken by another voice?", other)
    again = synthesizer.synthesize("The quick brown fox jumps over the lazy dog.", voice)
    assert synthesizer.sample_rate == 22050
    assert first.dtype == np.float32 and first.ndim == 1
    assert 1.5 < first.size / synthesizer.sample_rate < 6.0
    assert 0.05 < np.abs(first).max() <= 1.0
    np.testing.assert_array_equal(first, again)


def test_synthesizer_parameters_change_the_voice() -> None:
    synthesizer = espeak_synthesizer()
    text = "We were away in a valley where the rain was mild."
    low = synthesizer.synthesize(text, VoiceSettings("en-us", pitch=20))
    high = synthesizer.synthesize(text, VoiceSettings("en-us", pitch=90))
    fast = synthesizer.synthesize(text, VoiceSettings("en-us", rate=300))
    assert estimate_f0(high, 22050) > 1.3 * estimate_f0(low, 22050)
    assert fast.size < 0.75 * low.size


def test_synthesizer_rejects_unknown_voices() -> None:
    synthesizer = espeak_synthesizer()
    assert synthesizer.has_voice("en-029") and not synthesizer.has_voice("xx-nowhere")
    with pytest.raises(ValueError, match="no voice"):
        synthesizer.synthesize("hello", VoiceSettings("xx-nowhere"))
    with pytest.raises(ValueError, match="pitch"):
        VoiceSettings(pitch=101)
    assert isinstance(synthesizer, EspeakSynthesizer)


# Sentences

def test_sentences_are_deterministic_distinct_and_varied() -> None:
    sentences = generate_sentences(6000, seed=0)
    assert sentences == generate_sentences(6000, seed=0)
    assert sentences[:100] == generate_sentences(100, seed=0)  # a smaller corpus reads a prefix
    assert sentences[:100] != generate_sentences(100, seed=1)
    assert len(set(sentences)) == 6000
    lengths = [len(s.split()) for s in sentences]
    assert min(lengths) >= MIN_WORDS and max(lengths) <= MAX_WORDS
    assert max(lengths) >= 17 and np.mean(lengths) > 7
    assert all(s[0].isupper() and s[-1] in ".?!" for s in sentences)
    for share, kind in (
        (np.mean([s.endswith("?") for s in sentences]), "questions"),
        (np.mean([s.endswith("!") for s in sentences]), "exclamations"),
        (np.mean(["," in s for s in sentences]), "commas"),
        (np.mean([any(c.isdigit() for c in s) for s in sentences]), "numbers"),
    ):
        assert 0.02 < share < 0.6, kind


def test_sentences_cover_the_english_phonemes(monkeypatch: pytest.MonkeyPatch) -> None:
    from phonemizer.backend import EspeakBackend
    from phonemizer.separator import Separator

    install = find_espeak()
    if install.data:
        monkeypatch.setenv("ESPEAK_DATA_PATH", install.data)
    EspeakBackend.set_library(install.library)
    backend = EspeakBackend("en-us", language_switch="remove-flags")
    separator = Separator(phone=" ", word=" | ")
    phonemized = backend.phonemize(generate_sentences(300, seed=0), separator=separator, strip=True)
    seen = {phone for line in phonemized for phone in line.split()} - {"|"}
    assert ENGLISH_PHONEMES <= seen, f"missing {sorted(ENGLISH_PHONEMES - seen)}"


# Speakers

def _settings(speaker) -> tuple:
    return astuple(speaker)[1:]  # everything but the id


@pytest.mark.parametrize("use_flite", [False, True])
def test_default_speakers_are_many_and_distinct(use_flite: bool) -> None:
    speakers = plan_speakers(DEFAULT_NUM_SPEAKERS, seed=0, use_flite=use_flite)
    assert len(speakers) == DEFAULT_NUM_SPEAKERS >= 60
    assert len({s.id for s in speakers}) == len(speakers)
    assert len({_settings(s) for s in speakers}) >= 60
    assert len({s.voice for s in speakers if s.engine == "espeak"}) == sum(s.engine == "espeak" for s in speakers)
    assert [s.id for s in speakers] == sorted(s.id for s in speakers)
    assert sum(s.engine == "flite" for s in speakers) == (DEFAULT_NUM_SPEAKERS // 3 if use_flite else 0)
    genders = [s.gender for s in speakers]
    assert abs(genders.count("male") - genders.count("female")) <= len(speakers) // 12  # flite has one female voice
    for gender, (low, high) in F0_RANGE.items():
        f0 = sorted(s.f0_target for s in speakers if s.gender == gender)
        assert low <= f0[0] < low * 1.05 and high / 1.05 < f0[-1] <= high  # spread over the whole range
    assert len({s.accent for s in speakers}) >= 6
    assert len({round(s.warp, 2) for s in speakers}) >= 10


def test_speakers_are_deterministic_for_a_seed() -> None:
    assert plan_speakers(12, seed=3) == plan_speakers(12, seed=3)
    assert plan_speakers(12, seed=3) != plan_speakers(12, seed=4)
    with pytest.raises(ValueError, match="num_speakers"):
        plan_speakers(0)


def test_calibration_reaches_the_target_pitch() -> None:
    for speaker in plan_speakers(4, seed=0):
        calibrated = calibrate_speaker(speaker)
        assert calibrated.espeak_pitch is not None
        assert abs(calibrated.f0 / speaker.f0_target - 1) < 0.1, calibrated


def test_different_speakers_sound_different() -> None:
    text = "The weather in the valley was mild and the river was calm all morning."
    speakers = [calibrate_speaker(s) for s in plan_speakers(4, seed=0)]
    audio = [render(s, text) for s in speakers]
    f0 = [estimate_f0(a, SYNTHETIC_SAMPLE_RATE) for a in audio]
    centroid = [_spectral_centroid(a, SYNTHETIC_SAMPLE_RATE) for a in audio]
    for i in range(len(speakers)):
        for j in range(i + 1, len(speakers)):
            f0_ratio = max(f0[i], f0[j]) / min(f0[i], f0[j])
            centroid_ratio = max(centroid[i], centroid[j]) / min(centroid[i], centroid[j])
            assert f0_ratio > 1.1 or centroid_ratio > 1.1, (speakers[i], speakers[j])
    male, female = speakers[0], speakers[1]  # even indices are male, odd female
    assert (male.gender, female.gender) == ("male", "female")
    assert f0[1] > 1.3 * f0[0]


def test_phoneme_timings_follow_the_audio() -> None:
    text = "After the storm, the old fisherman sat by the harbour, and mended his nets."
    for speaker in [calibrate_speaker(s) for s in plan_speakers(2, seed=0)]:
        rendering = render_with_timings(speaker, text)
        np.testing.assert_array_equal(rendering.audio, render(speaker, text))
        duration = rendering.audio.size / SYNTHETIC_SAMPLE_RATE
        _check_timings(rendering.phonemes, duration)

        def loudness(p) -> float:
            start, end = int(p.start * SYNTHETIC_SAMPLE_RATE), int(p.end * SYNTHETIC_SAMPLE_RATE)
            return float(np.sqrt(np.mean(rendering.audio[start:end] ** 2)))

        vowels = np.median([loudness(p) for p in rendering.phonemes if base_phoneme(p.phoneme) in set("æɔɪɛ")])
        inside = [p for p in rendering.phonemes if p.phoneme == PAUSE and p.end < duration - 0.01]
        commas = [p for p in inside if p.end - p.start > 0.08]
        assert len(commas) == 2, inside  # the pauses of the two commas fall where the audio is silent
        assert all(loudness(p) < 0.05 * vowels for p in commas)


def _check_timings(phonemes, duration: float) -> None:
    """In order, tiling the audio from the first phoneme to its end; speech starts within 0.25 s (0.1 s is kept)."""
    assert phonemes and all(p.phoneme for p in phonemes)
    assert 0 <= phonemes[0].start < 0.25 and phonemes[-1].end == pytest.approx(duration, abs=1e-4)
    for previous, p in zip(phonemes, phonemes[1:]):
        assert p.start < p.end and p.start == pytest.approx(previous.end, abs=1e-9)
        assert not p.phoneme == previous.phoneme == PAUSE  # consecutive pauses are merged


def _spectral_centroid(wav: np.ndarray, sample_rate: int) -> float:
    power = np.abs(np.fft.rfft(wav)) ** 2
    return float((power * np.fft.rfftfreq(wav.size, 1 / sample_rate)).sum() / power.sum())


@pytest.mark.skipif(not flite_available(), reason="the flite program is not installed")
def test_flite_speakers_render_at_the_corpus_rate() -> None:
    flite = next(s for s in plan_speakers(20, seed=0, use_flite=True) if s.engine == "flite")
    wav = render(flite, "Good morning, this is a flite voice.")
    assert wav.dtype == np.float32 and 1.0 < wav.size / SYNTHETIC_SAMPLE_RATE < 6.0
    np.testing.assert_array_equal(wav, render(flite, "Good morning, this is a flite voice."))


# The corpus

@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, Path, list]:
    """The same tiny corpus built twice: in this process, and by two worker processes."""
    one, two = tmp_path_factory.mktemp("one_worker"), tmp_path_factory.mktemp("two_workers")
    return (
        one,
        build_synthetic_corpus(one, TINY_HOURS, **TINY_OPTIONS),
        two,
        build_synthetic_corpus(two, TINY_HOURS, **{**TINY_OPTIONS, "workers": 2}),
    )


def test_corpus_manifest(corpora) -> None:
    out_dir, utterances, _, _ = corpora
    speakers = {f"spk{i:03d}" for i in range(TINY_SPEAKERS)}
    assert {u.speaker for u in utterances} == speakers
    assert len({u.id for u in utterances}) == len(utterances)
    assert [u.speaker for u in utterances] == sorted(u.speaker for u in utterances)
    pool = set(generate_sentences(1000, seed=0))
    for utt in utterances:
        path = Path(utt.audio_path)
        assert path.is_absolute() and path.parent == out_dir / "audio" / utt.speaker and path.name == f"{utt.id}.flac"
        assert utt.id.startswith(utt.speaker + "_") and utt.language == "en-us" and utt.text in pool
        info = sf.info(str(path))
        assert info.samplerate == SYNTHETIC_SAMPLE_RATE and info.channels == 1
        assert utt.duration == info.frames / info.samplerate
        assert 0.8 < utt.duration < 12.0
    assert len({u.text for u in utterances}) == len(utterances)  # nobody reads another speaker's sentence
    for speaker in speakers:  # each speaker gets its share, within half an utterance
        seconds = sum(u.duration for u in utterances if u.speaker == speaker)
        assert abs(seconds - TINY_HOURS * 3600 / TINY_SPEAKERS) < 3.0
    record = json.loads((out_dir / "speakers.json").read_text())
    assert record["seed"] == 0 and record["sample_rate"] == SYNTHETIC_SAMPLE_RATE
    assert [s["id"] for s in record["speakers"]] == sorted(speakers)
    assert all(s["f0"] > 0 and s["espeak_pitch"] is not None for s in record["speakers"])


def test_corpus_audio_is_trimmed_and_levelled(corpora) -> None:
    _, utterances, _, _ = corpora
    for utt in utterances:
        wav, _ = sf.read(utt.audio_path, dtype="float32")
        edge = int(0.25 * SYNTHETIC_SAMPLE_RATE)
        assert np.abs(wav[:edge]).max() > 0.01 and np.abs(wav[-edge:]).max() > 0.01  # speech within 0.25 s of both ends
        assert 0.05 < np.abs(wav).max() <= 1.0


def test_corpus_is_identical_for_the_same_seed_whatever_the_workers(corpora) -> None:
    one, first, two, second = corpora
    assert [_record(u) for u in first] == [_record(u) for u in second]
    for a, b in zip(first, second):
        assert Path(a.audio_path).read_bytes() == Path(b.audio_path).read_bytes()
    assert (one / "speakers.json").read_text() == (two / "speakers.json").read_text()


def test_corpus_records_the_phoneme_timings(corpora) -> None:
    one, utterances, two, _ = corpora
    timings = read_timings(one / TIMINGS_FILE)
    assert list(timings) == [u.id for u in utterances]  # every utterance is eSpeak's here
    assert (one / TIMINGS_FILE).read_bytes() == (two / TIMINGS_FILE).read_bytes()
    phonemizer, matched, total = Phonemizer(), 0, 0
    for utt in utterances:
        truth = timings[utt.id]
        assert truth.text == utt.text
        _check_timings(truth.phonemes, utt.duration)
        echo = [t for t in phonemizer.phonemize([utt.text])[0] if is_phone_token(t)]
        spoken = [p.phoneme for p in truth.phonemes if p.phoneme != PAUSE]
        matched, total = matched + len(match_phonemes(echo, spoken)), total + len(spoken)
    assert matched > 0.9 * total  # eSpeak speaks what the text front-end reads, in four accents


def test_corpus_build_adds_the_timings_an_older_build_lacks(corpora, tmp_path: Path) -> None:
    source, first, _, _ = corpora
    out_dir = tmp_path / "corpus"
    shutil.copytree(source, out_dir)
    stamps = {p: p.stat().st_mtime_ns for p in (out_dir / "audio").rglob("*.flac")}
    (out_dir / TIMINGS_FILE).unlink()
    again = build_synthetic_corpus(out_dir, TINY_HOURS, **TINY_OPTIONS)
    assert [_record(u) for u in again] == [_record(u) for u in first]
    assert (out_dir / TIMINGS_FILE).read_bytes() == (source / TIMINGS_FILE).read_bytes()
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())  # spoken again, not written again


@pytest.mark.skipif(not flite_available(), reason="the flite program is not installed")
def test_flite_utterances_have_no_timings(tmp_path: Path) -> None:
    utterances = build_synthetic_corpus(tmp_path, 0.004, **{**TINY_OPTIONS, "num_speakers": 3, "use_flite": True})
    espeak = [u.id for u in utterances if u.speaker != "spk002"]  # speaker 2 is flite's
    assert len(espeak) < len(utterances) and list(read_timings(tmp_path / TIMINGS_FILE)) == espeak


def _record(utt: Utterance) -> tuple:
    return utt.id, utt.text, utt.speaker, utt.duration


def test_corpus_build_resumes_and_extends(corpora, tmp_path: Path) -> None:
    source, first, _, _ = corpora
    out_dir = tmp_path / "corpus"
    shutil.copytree(source, out_dir)
    files = sorted((out_dir / "audio").rglob("*.flac"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    lost = files[3]
    lost_bytes = lost.read_bytes()
    lost.unlink()  # as if the first build had been interrupted
    resumed = build_synthetic_corpus(out_dir, TINY_HOURS, **TINY_OPTIONS)
    assert [_record(u) for u in resumed] == [_record(u) for u in first]
    assert lost.read_bytes() == lost_bytes
    assert all(p.stat().st_mtime_ns == stamps[p] for p in files if p != lost)  # the others were kept, not remade
    bigger = build_synthetic_corpus(out_dir, 2 * TINY_HOURS, **TINY_OPTIONS)
    assert {u.id for u in first} < {u.id for u in bigger}
    assert 1.7 < sum(u.duration for u in bigger) / sum(u.duration for u in first) < 2.3


def test_corpus_refuses_a_directory_built_differently(corpora, tmp_path: Path) -> None:
    source, _, _, _ = corpora
    shutil.copytree(source, tmp_path / "corpus")
    with pytest.raises(ValueError, match="other settings"):
        build_synthetic_corpus(tmp_path / "corpus", TINY_HOURS, **{**TINY_OPTIONS, "seed": 1})
    with pytest.raises(ValueError, match="hours"):
        build_synthetic_corpus(tmp_path / "other", 0.0)

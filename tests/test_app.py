import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import app.tts
from app.prompt import PromptError
from app.scoring import Scorer, character_error_rate, logprob_scorer
from app.tts import TTS, derive_seed, synthesize
from app.voice import Voice, VoiceError, load_voice
from codec.interface import CodecIdentity
from codec.model import CodecConfig, EchoCodec
from data.frontend import TextFrontend
from lm.ar import ARConfig, ARModel
from lm.generation import length_limits
from lm.nar import NARModel

from conftest import PROMPT_TEXT, SR, TEXT, build_tiny_model
from test_prompt import speech_like




pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> Path:
    return tiny_model_dir


@pytest.fixture(scope="module")
def tts(model_dir) -> TTS:
    return TTS.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def prompt() -> tuple[np.ndarray, int]:
    return speech_like(3.0, SR, seed=7), SR


class ARSpy:
    """Wraps lm.generation.generate_ar as app.tts calls it, and records every call's inputs."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = app.tts.generate_ar

        def spy(model, text, text_lengths, prompt, prompt_lengths, **kwargs):
            self.calls.append(dict(text=text.clone(), text_lengths=text_lengths.clone(), prompt=prompt.clone(),
                                   prompt_lengths=prompt_lengths.clone(), **kwargs))
            return real(model, text, text_lengths, prompt, prompt_lengths, **kwargs)

        monkeypatch.setattr(app.tts, "generate_ar", spy)


def test_importing_app_loads_nothing_heavy():
    code = "import sys, app; assert 'torch' not in sys.modules and 'app.tts' not in sys.modules; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr
    from app import TTS as Lazy, synthesize as lazy_synthesize

    assert Lazy is TTS and lazy_synthesize is synthesize


def test_loads_the_export_layout_and_reloads_to_the_same_audio(tts, model_dir, prompt):
    assert tts.sample_rate == SR and tts.codec.identity == tts.ar.config.codec_identity
    assert isinstance(tts.frontend, TextFrontend) and isinstance(tts.nar, NARModel)
    wav, sr = tts.synthesize(TEXT, prompt, seed=3)
    again, _ = TTS.from_pretrained(model_dir).synthesize(TEXT, prompt, seed=3)
    assert sr == SR and np.array_equal(wav, again)


def test_missing_or_incomplete_model_directories(tmp_path, model_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TTS.from_pretrained(tmp_path / "nowhere")
    partial = tmp_path / "partial"
    (partial / "ar").mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (partial / "ar" / name).write_bytes((model_dir / "ar" / name).read_bytes())
    missing = "codec/config.json, nar/model.safetensors, text/text_vocab.json missing"
    with pytest.raises(FileNotFoundError, match=missing):
        TTS.from_pretrained(partial)


def test_a_model_loads_by_hub_id(model_dir, monkeypatch):
    import huggingface_hub

    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, allow_patterns: asked.append((repo, allow_patterns)) or str(model_dir))
    tts = TTS.from_pretrained("someone/echo")
    assert tts.codec.identity == tts.ar.config.codec_identity
    assert asked == [("someone/echo", ["codec/*", "ar/*", "nar/*", "text/*"])]


def test_a_codec_other_than_the_models_is_refused(tmp_path, model_dir):
    other = EchoCodec(CodecConfig(sample_rate=SR, channels=4, strides=(4, 5, 8), dilations=(1,), latent_dim=8,
                                  n_q=3, codebook_size=16, activation="elu"))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="different codec"):
        TTS.from_pretrained(model_dir, codec=tmp_path / "other")


def test_output_is_float32_audio_within_the_length_limit(tts, prompt):
    wav, sr = tts.synthesize(TEXT, prompt)
    ids = tts.frontend.encode(TEXT)
    high = int(length_limits(torch.tensor([len(ids)]), tts.frame_rate)[1])
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert 0 < len(wav) <= high * tts.codec.hop_length
    assert np.isfinite(wav).all()


def test_seeds_make_calls_reproducible(tts, prompt):
    first, _ = tts.synthesize(TEXT, prompt, seed=11)
    second, _ = tts.synthesize(TEXT, prompt, seed=11)
    other, _ = tts.synthesize(TEXT, prompt, seed=12)
    assert np.array_equal(first, second)
    assert len(first) != len(other) or not np.array_equal(first, other)


def test_complete_renders_a_given_codebook_1_as_synthesis_does(tts, prompt):
    """The teacher-forced path of evaluation: the AR model's own codebook 1, completed, is the synthesis."""
    synthesis = tts.generate(TEXT, prompt, prompt_text=PROMPT_TEXT, seed=3)
    chosen = synthesis.segments[0].chosen
    wav = tts.complete(chosen.text, chosen.codes1, synthesis.voice)
    assert wav.dtype == np.float32 and len(wav) == chosen.n_frames * tts.codec.hop_length
    np.testing.assert_allclose(wav, chosen.wav, atol=1e-6)
    with pytest.raises(ValueError, match="codebook 1"):
        tts.complete(TEXT, chosen.codes1[None], synthesis.voice)


def test_prompt_text_continues_the_transcript(tts, prompt, monkeypatch):
    spy = ARSpy(monkeypatch)
    with_text = tts.generate(TEXT, prompt, prompt_text=PROMPT_TEXT, seed=1)
    without = tts.generate(TEXT, prompt, seed=1)
    assert with_text.voice.prompt_text == PROMPT_TEXT and without.voice.prompt_text is None
    assert len(with_text.wav) > 0 and len(without.wav) > 0
    vocab = tts.frontend.vocab
    prompt_ids = tts.frontend.encode(PROMPT_TEXT, add_bos_eos=False)[1:]
    target = tts.frontend.encode(TEXT)
    expected = [vocab.language_id("en-us"), vocab.bos_id, *prompt_ids, *vocab.encode(["|"]), *target[2:]]
    assert spy.calls[0]["text"][0].tolist() == expected  # one sequence over both texts, one <bos>, one <eos>
    assert spy.calls[1]["text"][0].tolist() == target  # the speaker-prompt layout: the target's text only
    # The length limit counts the new text only (its phonemes and <eos>).
    new_text = torch.tensor([len(target) - 2])
    assert spy.calls[0]["max_new_tokens"].tolist() == length_limits(new_text, tts.frame_rate)[1].tolist()


def test_a_guided_ar_starts_reading_at_the_boundary_after_the_transcript(tmp_path, prompt, monkeypatch):
    model_dir = build_tiny_model(tmp_path)
    config = json.loads((model_dir / "ar" / "config.json").read_text())
    ARModel(ARConfig.from_dict({**config, "duration_guided": True})).save_pretrained(model_dir / "ar")
    tts = TTS.from_pretrained(model_dir)
    spy = ARSpy(monkeypatch)
    tts.generate(TEXT, prompt, prompt_text=PROMPT_TEXT, seed=1)
    tts.generate(TEXT, prompt, seed=1)
    start, text = spy.calls[0]["start_index"], spy.calls[0]["text"]
    boundary = tts.frontend.vocab.encode(["|"])[0]
    assert text[0, start[0]] == boundary  # where "transcribed" training examples start (data/lm_data.py)
    assert text[0, : start[0]].tolist() == [*tts.frontend.encode(PROMPT_TEXT)[:-1]]
    assert spy.calls[1]["start_index"].tolist() == [0]  # without a transcript: the text's first token


def test_long_text_is_spoken_sentence_by_sentence_in_one_batch(tts, prompt, monkeypatch):
    spy = ARSpy(monkeypatch)
    sentences = ["The children found a tiny kite near the bridge.", "My older sister painted the garage door.",
                 "Would you like some tea with your cake?"]
    text = f"{sentences[0]} {sentences[1]}\n\n{sentences[2]}"
    result = tts.generate(text, prompt, seed=5)
    single = tts.generate(sentences[0], prompt, seed=5)
    assert [s.chunk.text for s in result.segments] == sentences
    assert len(spy.calls) == 2 and spy.calls[0]["text"].shape[0] == 3  # all three sentences in one AR batch
    voice_codes = result.voice.codes.long()
    assert all(torch.equal(p, voice_codes) for p in spy.calls[0]["prompt"])  # the same voice for every sentence
    # The joined audio is the sentences with silences between them: 0.3 s after a sentence, 0.6 s at a paragraph.
    pieces = [result.segments[0].wav, np.zeros(int(0.3 * SR)), result.segments[1].wav, np.zeros(int(0.6 * SR)),
              result.segments[2].wav]
    assert np.array_equal(result.wav, np.concatenate(pieces).astype(np.float32))
    assert len(result.wav) > len(single.wav) + 0.9 * SR
    for segment in result.segments:  # faded in and out
        assert abs(segment.wav[0]) < 1e-6 and abs(segment.wav[-1]) < 1e-6
    # The first sentence is the same alone as in the batch: each item has its own generator. Its audio
    # decodes the NAR's probabilities, which a padded batch changes in the last bits of float32.
    assert torch.equal(result.segments[0].chosen.codes, single.segments[0].chosen.codes)
    np.testing.assert_allclose(result.segments[0].wav, single.segments[0].wav, atol=1e-5)


def test_best_of_keeps_the_candidate_the_scorers_prefer(tts, prompt):
    seen = []
    spy = Scorer("spy", lambda candidates: seen.append(list(candidates)) or [0.0] * len(candidates), weight=0.0)
    result = tts.generate(TEXT, prompt, seed=2, best_of=4, scorers=[logprob_scorer(), spy])
    segment = result.segments[0]
    assert len(seen) == 1 and len(seen[0]) == 4 and seen[0] == segment.candidates
    assert len({c.seed for c in segment.candidates}) == 4
    assert [c.seed for c in segment.candidates] == [derive_seed(2, 0, j) for j in range(4)]
    means = [c.mean_logprob - (0 if c.finished else 10) for c in segment.candidates]
    assert segment.best == int(np.argmax(means))
    assert segment.scores[segment.best]["total"] == pytest.approx(max(means))
    assert segment.chosen.codes is not None  # only the winner went through the NAR and the codec
    assert all(c.codes is None for c in segment.candidates if c is not segment.chosen)

    longest = Scorer("longest", lambda candidates: [c.n_frames for c in candidates])
    picked = tts.generate(TEXT, prompt, seed=2, best_of=4, scorers=[longest]).segments[0]
    assert picked.chosen.n_frames == max(c.n_frames for c in picked.candidates)
    # Candidate 0 is what best_of=1 would have made.
    alone = tts.generate(TEXT, prompt, seed=2).segments[0].chosen
    assert segment.candidates[0].codes1.tolist() == alone.codes1.tolist()


def test_scorers_that_listen_get_every_candidate_decoded(tts, prompt):
    heard = []

    def by_loudness(candidates):
        heard.extend(candidates)
        return [float(np.abs(c.wav).mean()) for c in candidates]

    result = tts.generate(TEXT, prompt, seed=4, best_of=3, scorers=[Scorer("loud", by_loudness, needs_audio=True)])
    assert len(heard) == 3 and all(c.wav is not None and c.prompt_wav is not None for c in heard)
    assert result.segments[0].best == int(np.argmax([np.abs(c.wav).mean() for c in heard]))


def test_voice_presets_save_load_and_speak_the_same(tts, prompt, tmp_path):
    voice = tts.prepare_voice(prompt, PROMPT_TEXT)
    assert voice.codes.dtype == torch.int16 and voice.codes.shape[0] == tts.codec.n_q
    assert voice.duration == pytest.approx(3.0, abs=0.1) and voice.sample_rate == SR
    path = voice.save(tmp_path / "me.voice")
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["format"] == "echo-voice" and set(f.keys()) == {"codes", "prompt_ids"}
    loaded = tts.load_voice(path)
    assert torch.equal(loaded.codes, voice.codes) and loaded.prompt_ids == voice.prompt_ids
    assert loaded.prompt_text == PROMPT_TEXT and loaded.codec == tts.codec.identity
    from_file, _ = tts.synthesize(TEXT, voice=path, seed=9)
    from_prompt, _ = tts.synthesize(TEXT, prompt, PROMPT_TEXT, seed=9)
    assert np.array_equal(from_file, from_prompt)

    with pytest.raises(ValueError, match="not both"):
        tts.synthesize(TEXT, prompt, voice=loaded)


def test_a_preset_from_another_codec_is_refused(tts, prompt, tmp_path):
    voice = tts.prepare_voice(prompt)
    other = CodecIdentity(**{**voice.codec.to_dict(), "config_hash": "0123456789abcdef", "sample_rate": 24000})
    Voice(voice.codes, other, source="elsewhere.wav").save(tmp_path / "other.voice")
    with pytest.raises(VoiceError, match="another codec .*config_hash.*sample_rate 24000 != 16000"):
        tts.load_voice(tmp_path / "other.voice")
    with pytest.raises(VoiceError, match="another codec"):
        tts.synthesize(TEXT, voice=load_voice(tmp_path / "other.voice"))
    (tmp_path / "bad.voice").write_bytes(b"not a voice")
    with pytest.raises(VoiceError, match="not an Echo voice preset"):
        tts.load_voice(tmp_path / "bad.voice")


def test_bad_prompts_and_empty_text_are_clear_errors(tts, prompt):
    with pytest.raises(PromptError, match="at least 2 s"):
        tts.synthesize(TEXT, (speech_like(1.0, SR), SR))
    with pytest.raises(ValueError, match="nothing to say"):
        tts.synthesize(" ... ", prompt)
    with pytest.raises(ValueError, match="give prompt_wav"):
        tts.synthesize(TEXT)


def test_a_transcript_of_a_cropped_recording_is_not_used(tts):
    long_recording = (speech_like(14.0, SR, seed=3), SR)
    with pytest.warns(UserWarning, match="prompt_text no longer matches"):
        voice = tts.prepare_voice(long_recording, PROMPT_TEXT)
    assert voice.prompt_text is None and voice.duration <= 10.0


def test_the_one_shot_function_loads_the_model_once(model_dir, prompt, monkeypatch):
    loads = []
    real = TTS.from_pretrained.__func__
    monkeypatch.setattr(app.tts, "_LOADED", {})
    monkeypatch.setattr(TTS, "from_pretrained", classmethod(lambda cls, *a, **k: loads.append(a) or real(cls, *a, **k)))
    first, sr = synthesize(TEXT, prompt, model=model_dir, seed=1)
    second, _ = synthesize(TEXT, prompt, model=str(model_dir), seed=1)
    assert len(loads) == 1 and sr == SR and np.array_equal(first, second)


class FakeASR:
    def __init__(self, transcript: str):
        self.transcript, self.calls = transcript, 0

    def transcribe(self, wav, sample_rate, language=None):
        self.calls += 1
        return self.transcript

    def transcribe_batch(self, wavs, sample_rate, language=None):
        return [self.transcript for _ in wavs]


def test_asr_transcribes_prompts_given_without_text(model_dir, prompt):
    asr = FakeASR(PROMPT_TEXT)
    tts = TTS.from_pretrained(model_dir, asr=asr)
    assert [s.name for s in tts.scorers] == ["logprob", "asr"]
    voice = tts.prepare_voice(prompt)
    assert asr.calls == 1 and voice.prompt_text == PROMPT_TEXT and voice.prompt_ids
    assert tts.prepare_voice(prompt, "Given text.").prompt_text == "Given text." and asr.calls == 1
    result = tts.generate(TEXT, voice=voice, best_of=2)
    assert set(result.segments[0].scores[0]) == {"logprob", "asr", "total"}
    assert result.segments[0].scores[0]["asr"] == pytest.approx(-character_error_rate(TEXT, PROMPT_TEXT))


def tiny_whisper(directory: Path) -> Path:
    """A random-weight Whisper with a byte-level tokenizer, saved locally (nothing is downloaded)."""
    from transformers import (WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                              WhisperProcessor, WhisperTokenizer)

    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    symbols = [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]  # GPT-2's byte alphabet
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    vocab = {symbol: i for i, symbol in enumerate(symbols + specials)}
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    end = vocab["<|endoftext|>"]
    config = WhisperConfig(vocab_size=len(vocab), num_mel_bins=80, d_model=16, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                           max_target_positions=32, decoder_start_token_id=vocab["<|startoftranscript|>"],
                           eos_token_id=end, pad_token_id=end, bos_token_id=end, suppress_tokens=[],
                           begin_suppress_tokens=[])
    torch.manual_seed(0)
    WhisperForConditionalGeneration(config).save_pretrained(directory)
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer)
    processor.save_pretrained(directory)
    return directory


def test_whisper_asr_plumbing(model_dir, prompt, tmp_path):
    from app.asr import WhisperASR

    whisper_dir = tiny_whisper(tmp_path / "whisper")
    asr = WhisperASR.from_pretrained(whisper_dir)
    assert asr.sample_rate == 16000
    texts = asr.transcribe_batch([prompt[0], speech_like(2.0, 22050)], 22050, "en-us")
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)  # random weights: the words are noise
    tts = TTS.from_pretrained(model_dir, asr=whisper_dir)
    assert isinstance(tts.asr, WhisperASR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a noise transcript may have no words: then it is dropped, with a warning
        wav, _ = tts.synthesize(TEXT, prompt, best_of=2)
    assert len(wav) > 0
    with pytest.raises(FileNotFoundError, match="Whisper model directory .* does not exist; give a directory or a hub"):
        WhisperASR.from_pretrained(tmp_path / "no-whisper")


# -- many texts in one call ----------------------------------------------------------------------------


def test_a_batch_of_texts_sounds_as_each_text_alone(tts, prompt, monkeypatch):
    other = (speech_like(4.0, SR, seed=11), SR)
    texts = [TEXT, "We waited almost twenty minutes. Then it rained.", "Hello there."]
    spy = ARSpy(monkeypatch)
    batch = tts.generate_batch(texts, [prompt, other, prompt], [PROMPT_TEXT, None, PROMPT_TEXT], seeds=[3, 4, 5])
    assert len(spy.calls) == 1  # every sentence of every text in one AR batch
    assert spy.calls[0]["text"].shape[0] == sum(len(result.segments) for result in batch) >= 3
    assert spy.calls[0]["prompt_lengths"].unique().numel() == 2  # two voices, padded to one length
    for text, result, voice_prompt, prompt_text, seed in zip(texts, batch, [prompt, other, prompt],
                                                            [PROMPT_TEXT, None, PROMPT_TEXT], [3, 4, 5]):
        alone = tts.generate(text, voice_prompt, prompt_text, seed=seed)
        assert result.voice.prompt_text == prompt_text
        assert result.wav.shape == alone.wav.shape
        np.testing.assert_allclose(result.wav, alone.wav, atol=1e-5)
    waves = tts.synthesize_batch(texts[:2], prompt, seeds=7)
    assert [len(w) for w, _ in waves] == [len(tts.synthesize(t, prompt, seed=7)[0]) for t in texts[:2]]


def test_a_prompt_given_once_is_prepared_once(tts, prompt, monkeypatch):
    prepared = []
    real = tts.prepare_voice
    monkeypatch.setattr(tts, "prepare_voice", lambda *a, **k: prepared.append(1) or real(*a, **k))
    tts.generate_batch([TEXT, "Hello there.", "Goodbye now."], prompt)
    assert len(prepared) == 1


def test_bad_batches_are_clear_errors(tts, prompt):
    with pytest.raises(ValueError, match="at least one text"):
        tts.generate_batch([], prompt)
    with pytest.raises(ValueError, match="one per text"):
        tts.generate_batch([TEXT, TEXT], [prompt], None)
    with pytest.raises(ValueError, match="seeds"):
        tts.generate_batch([TEXT, TEXT], prompt, seeds=[1, 2, 3])
    with pytest.raises(ValueError, match="seed must be an integer"):
        tts.generate_batch([TEXT], prompt, seeds=[1.5])
    with pytest.raises(ValueError, match="nothing to say"):
        tts.generate_batch([TEXT, "..."], prompt)


# -- best of N that listens ----------------------------------------------------------------------------


def test_reranking_by_speaker_keeps_the_candidate_closest_to_the_prompts_voice(tts, prompt):
    pytest.importorskip("resemblyzer")
    from app.meters import load_speaker

    result = tts.generate(TEXT, prompt, seed=4, best_of=4, scorers="speaker")
    segment = result.segments[0]
    encoder = load_speaker("resemblyzer")
    reference = encoder.embed(segment.chosen.prompt_wav, tts.sample_rate)
    similarity = [float(encoder.embed(c.wav, tts.sample_rate) @ reference) for c in segment.candidates]
    assert segment.best == int(np.argmax(similarity))  # the closest voice wins
    assert [row["speaker"] for row in segment.scores] == pytest.approx(similarity, abs=1e-6)
    assert len(set(np.round(similarity, 4))) > 1  # the candidates did differ


def test_rerank_names_are_checked(tts, prompt):
    from app.scoring import scorers_by_name

    assert [s.name for s in scorers_by_name("logprob")] == ["logprob"]
    for bad in ["", "asr,asr", "loudness", "speaker,wer"]:
        with pytest.raises(ValueError, match="rerank with one or more of logprob, asr, speaker"):
            tts.synthesize(TEXT, prompt, best_of=2, scorers=bad)


def test_reranking_by_asr_keeps_the_candidate_heard_closest_to_the_text(tts, prompt):
    from app.scoring import scorers_by_name

    class HearsTheTextInOne:  # an ASR meter (one waveform at a time) that hears the text in one length only
        right_length = -1

        def transcribe(self, wav, sample_rate):
            return TEXT if len(wav) == self.right_length else "something else entirely"

    meter = HearsTheTextInOne()
    scorers = scorers_by_name("asr", asr=meter)
    lengths = [len(c.wav) for c in tts.generate(TEXT, prompt, seed=8, best_of=3, scorers=scorers).segments[0].candidates]
    meter.right_length = max(lengths)
    segment = tts.generate(TEXT, prompt, seed=8, best_of=3, scorers=scorers).segments[0]
    assert len(set(lengths)) > 1 and len(segment.chosen.wav) == max(lengths)
    assert segment.scores[segment.best]["asr"] == 0.0 and min(row["asr"] for row in segment.scores) < -0.5

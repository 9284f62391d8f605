"""Token shards (data/tokens.py) and tokenizing a corpus (data/tokenize.py, recipes/tokenize_corpus.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from codec.interface import CodecIdentity
from codec.model import CodecConfig, EchoCodec
from data.audio import load_audio
from data.frontend import TextFrontend
from data.manifest import Utterance, write_manifest
from data.tokenize import plan_batches, tokenize_corpus
from data.tokens import TokenCorpus, TokenShardWriter
from data.vocab import Vocabulary

ROOT = Path(__file__).resolve().parents[1]
IDENTITY = CodecIdentity(name="echo", config_hash="0123abcd", sample_rate=16000, frame_rate=100.0, n_q=2,
                         codebook_size=16)
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "Would you like a cup of coffee?",
    "Their car broke down near the bridge.",
    "Judge the giant's joy by the edge of the village.",
    "A purple turtle heard the nurse learn a new word.",
]


def small_frontend() -> TextFrontend:
    """A phoneme front-end over a made-up vocabulary: enough for the shard format, no eSpeak call."""
    return TextFrontend(Vocabulary(["a", "b", "c", "d"], ["en-us"]))


def random_utterance(rng: np.random.Generator, i: int) -> dict:
    T, N = int(rng.integers(1, 30)), int(rng.integers(1, 12))
    return {
        "id": f"utt{i}",
        "codes": torch.from_numpy(rng.integers(0, 16, size=(2, T))),  # [K, T]
        "text_ids": rng.integers(0, 9, size=N).tolist(),  # [N]
        "speaker": f"spk{i % 2}",
        "duration": T / 100,
        "text": f"text number {i}",
        "split": "dev" if i == 4 else "train",
    }


@pytest.fixture(scope="module")
def codec() -> EchoCodec:
    """The tiny preset, non-causal, with codebooks initialised by k-means (so codes vary)."""
    torch.manual_seed(0)
    config = yaml.safe_load((ROOT / "recipes/configs/codec/tiny.yaml").read_text())["model"]
    model = EchoCodec(CodecConfig(**config))
    model.train()
    model(torch.randn(2, 1, 3200) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def frontend() -> TextFrontend:
    return TextFrontend.build(SENTENCES, "en-us")


def write_corpus(directory: Path, sample_rates: list[int] | None = None) -> list[Utterance]:
    """Six short wavs of two speakers; two of them share a frame count (3990 and 4000 samples at 16 kHz)."""
    lengths_s = [4000 / 16000, 3990 / 16000, 0.13, 0.31, 0.2, 0.07]
    sample_rates = sample_rates or [16000, 16000, 16000, 8000, 16000, 16000]
    rng = np.random.default_rng(1)
    utterances = []
    for i, (seconds, sr, text) in enumerate(zip(lengths_s, sample_rates, SENTENCES)):
        n = round(seconds * sr)
        t = np.arange(n) / sr
        wav = 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.05 * rng.standard_normal(n)
        path = directory / "wavs" / f"u{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wav.astype(np.float32), sr)
        utterances.append(Utterance(f"u{i}", str(path), text, f"spk{i % 2}", n / sr))
    return utterances


# -- the shard format -------------------------------------------------------------------------


def test_shards_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    utterances = [random_utterance(rng, i) for i in range(5)]
    with TokenShardWriter(tmp_path, IDENTITY, small_frontend(), shard_size=2) as writer:
        for u in utterances:
            writer.add(u["id"], u["codes"], u["text_ids"], speaker=u["speaker"], duration=u["duration"],
                       text=u["text"], split=u["split"])
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == [
        f"shard-0000{i}.{ext}" for i in range(3) for ext in ("json", "safetensors")
    ]
    corpus = TokenCorpus.open(tmp_path)
    assert len(corpus) == 5 and corpus.codec_identity == IDENTITY
    assert corpus.vocab == small_frontend().vocab and corpus.splits == ["dev", "train"]
    for u, record in zip(utterances, corpus.records):
        item = corpus[corpus.records.index(record)]
        assert item.codes.dtype == torch.long and item.text.dtype == torch.long
        assert torch.equal(item.codes, u["codes"])
        assert item.text.tolist() == u["text_ids"]
        assert (record.id, record.speaker, record.text, record.split) == (u["id"], u["speaker"], u["text"], u["split"])
        assert record.duration == u["duration"] and record.language == "en-us"
        assert (record.n_frames, record.n_text_tokens) == (u["codes"].shape[1], len(u["text_ids"]))
    assert [r.id for r in TokenCorpus.open(tmp_path, splits="dev").records] == ["utt4"]
    header = json.loads((tmp_path / "header.json").read_text())
    assert header["codec"] == IDENTITY.to_dict()
    with pytest.raises(ValueError, match=r"no utterances of split\(s\) \['test'\]"):
        TokenCorpus.open(tmp_path, splits="test")


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not fit the int16 codes"):
        TokenShardWriter(tmp_path / "big", CodecIdentity("echo", "x", 16000, 100.0, 2, 65536), small_frontend())
    with pytest.raises(ValueError, match="needs the text front-end"):
        TokenShardWriter(tmp_path / "new", IDENTITY)
    writer = TokenShardWriter(tmp_path / "a", IDENTITY, small_frontend())
    with pytest.raises(ValueError, match=r"codes must be \[K=2, T >= 1\]"):
        writer.add("x", torch.zeros(3, 5, dtype=torch.long), [1], speaker="s", duration=1, text="t")
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 16\)"):
        writer.add("x", torch.full((2, 5), 16), [1], speaker="s", duration=1, text="t")
    with pytest.raises(ValueError, match=r"text ids must be .* in \[0, 9\)"):
        writer.add("x", torch.zeros(2, 5, dtype=torch.long), [9], speaker="s", duration=1, text="t")
    writer.add("x", torch.zeros(2, 5, dtype=torch.long), [1], speaker="s", duration=1, text="t")
    with pytest.raises(ValueError, match="already in"):
        writer.add("x", torch.zeros(2, 5, dtype=torch.long), [1], speaker="s", duration=1, text="t")
    with pytest.raises(FileNotFoundError, match="not a token directory"):
        TokenCorpus.open(tmp_path / "nowhere")


def test_codec_identity_is_checked(tmp_path):
    with TokenShardWriter(tmp_path, IDENTITY, small_frontend()) as writer:
        writer.add("u", torch.zeros(2, 4, dtype=torch.long), [1, 2], speaker="s", duration=0.04, text="t")
    corpus = TokenCorpus.open(tmp_path)
    corpus.check_codec(IDENTITY)  # the same codec: fine
    other = CodecIdentity(**{**IDENTITY.to_dict(), "n_q": 8, "config_hash": "ffff"})
    with pytest.raises(ValueError, match=r"different codec \(config_hash: .*n_q: 8 != 2\); re-tokenize"):
        corpus.check_codec(other)
    with pytest.raises(ValueError, match="new token directory"):
        TokenShardWriter(tmp_path, other)
    other_vocab = TextFrontend(Vocabulary(["x", "y"], ["en-us"]))
    with pytest.raises(ValueError, match="another text vocabulary"):
        TokenShardWriter(tmp_path, IDENTITY, other_vocab)


def test_an_interrupted_writer_leaves_whole_shards_only(tmp_path):
    rng = np.random.default_rng(0)
    utterances = [random_utterance(rng, i) for i in range(5)]
    writer = TokenShardWriter(tmp_path, IDENTITY, small_frontend(), shard_size=2)
    for u in utterances[:3]:  # one shard of 2 written, the 3rd pending: then the process dies
        writer.add(u["id"], u["codes"], u["text_ids"], speaker=u["speaker"], duration=1.0, text=u["text"])
    del writer
    (tmp_path / "shard-00001.safetensors").write_bytes(b"half written")  # died between tensors and records
    (tmp_path / ".shard-00001.json.tmp").write_text("{")  # ... and while writing the records
    (tmp_path / "shard-00000.durations.safetensors.tmp").write_bytes(b"half")  # as Echo named them before
    assert [r.id for r in TokenCorpus.open(tmp_path).records] == ["utt0", "utt1"]
    with TokenShardWriter(tmp_path, IDENTITY, shard_size=2) as writer:  # continues with its own vocabulary
        assert writer.done_ids == {"utt0", "utt1"}
        assert sorted(p.name for p in tmp_path.glob("*shard-*")) == ["shard-00000.json", "shard-00000.safetensors"]
        for u in utterances[2:]:
            writer.add(u["id"], u["codes"], u["text_ids"], speaker=u["speaker"], duration=1.0, text=u["text"])
    corpus = TokenCorpus.open(tmp_path)
    assert [r.id for r in corpus.records] == [f"utt{i}" for i in range(5)]
    assert torch.equal(corpus[4].codes, utterances[4]["codes"])


# -- tokenizing -------------------------------------------------------------------------------


def test_plan_batches():
    hop = 160
    lengths = [4000, 3990, 800, 4001, 1600, 900]  # frames: 25, 25, 5, 26, 10, 6
    frames = plan_batches(lengths, hop, max_samples=10 * 4000)
    assert sorted(i for b in frames for i in b) == list(range(6))
    assert [sorted(b) for b in frames] == [[2], [5], [4], [0, 1], [3]]  # only equal frame counts share a batch
    samples = plan_batches(lengths + [4000], hop, 10**6, "samples")
    assert [sorted(b) for b in samples] == [[2], [5], [4], [1], [0, 6], [3]]  # only equal sample counts
    padded = plan_batches(lengths, hop, max_samples=8000, grouping="padded")
    assert padded == [[2, 5, 4], [1, 0], [3]]  # 3 x 1600 and 2 x 4000 fit 8000; 3 x 4160 would not
    assert plan_batches([10**6], hop, max_samples=1000) == [[0]]  # too long alone: a batch of its own


def test_tokenize_corpus_matches_encoding_each_alone(tmp_path, codec, frontend):
    utterances = write_corpus(tmp_path / "corpus")
    batch_sizes = []
    encode = codec.encode

    def spy(wav):
        batch_sizes.append(wav.shape[0])
        return encode(wav)

    codec.encode = spy
    try:
        summary = tokenize_corpus(codec, frontend, utterances, tmp_path / "tokens",
                                  splits=["train"] * 5 + ["dev"], shard_size=4, progress=False)
    finally:
        del codec.encode
    assert max(batch_sizes) == 2  # the two utterances of 25 frames went together
    assert (summary.added, summary.utterances, summary.skipped) == (6, 6, {})
    corpus = TokenCorpus.open(tmp_path / "tokens")
    corpus.check_codec(codec.identity)
    assert corpus.frontend.vocab == frontend.vocab
    by_id = {corpus.records[i].id: corpus[i] for i in range(len(corpus))}
    for u in utterances:
        wav, _ = load_audio(u.audio_path, codec.sample_rate)  # [1, T]
        alone = codec.encode(wav[None])[0]  # [K, F]
        item = by_id[u.id]
        assert alone.shape[1] == math.ceil(wav.shape[-1] / codec.hop_length)
        assert torch.equal(item.codes, alone), u.id
        assert item.text.tolist() == frontend.encode(u.text)
        assert item.record.split == ("dev" if u.id == "u5" else "train") and item.speaker == u.speaker
    assert summary.frames == sum(r.n_frames for r in corpus.records)
    assert "h of audio per minute" in str(summary)


def test_tokenizing_resumes_after_a_crash(tmp_path, codec, frontend):
    utterances = write_corpus(tmp_path / "corpus")
    calls = 0
    encode = codec.encode

    def crash_on_third_batch(wav):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("out of memory (simulated)")
        return encode(wav)

    codec.encode = crash_on_third_batch
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            tokenize_corpus(codec, frontend, utterances, tmp_path / "tokens", shard_size=1, chunk_size=2,
                            progress=False)
    finally:
        del codec.encode
    done = [r.id for r in TokenCorpus.open(tmp_path / "tokens").records]
    assert 0 < len(done) < len(utterances)
    summary = tokenize_corpus(codec, None, utterances, tmp_path / "tokens", shard_size=1, progress=False)
    assert summary.already_done == len(done) and summary.added == len(utterances) - len(done)
    ids = [r.id for r in TokenCorpus.open(tmp_path / "tokens").records]
    assert sorted(ids) == sorted(u.id for u in utterances)  # every utterance exactly once


def test_bad_audio_and_text_are_skipped_and_counted(tmp_path, codec, frontend):
    utterances = write_corpus(tmp_path / "corpus")[:3]
    broken = tmp_path / "corpus" / "broken.wav"
    broken.write_bytes(b"not audio")
    utterances += [Utterance("broken", str(broken), "Hello.", "spk0", 1.0),
                   Utterance("empty", utterances[0].audio_path, "  ", "spk0", 0.25)]
    summary = tokenize_corpus(codec, frontend, utterances, tmp_path / "tokens", progress=False)
    assert summary.added == 3
    assert summary.skipped == {"unreadable audio": 1, "text the front-end refused": 1}


def test_recipe_tokenizes_train_and_dev_into_one_directory(tmp_path, codec, capsys):
    from recipes import tokenize_corpus as recipe

    main = recipe.main
    utterances = write_corpus(tmp_path / "corpus")
    write_manifest(tmp_path / "corpus" / "train.jsonl", utterances[:4])
    write_manifest(tmp_path / "corpus" / "dev.jsonl", utterances[4:])
    codec.save_pretrained(tmp_path / "codec")
    argv = ["--codec", str(tmp_path / "codec"), "--manifest", str(tmp_path / "corpus" / "train.jsonl"),
            "--manifest", str(tmp_path / "corpus" / "dev.jsonl"), "--out", str(tmp_path / "tokens"),
            "--batch-seconds", "2"]
    main(argv)
    assert "tokenized 6 utterances" in capsys.readouterr().out
    corpus = TokenCorpus.open(tmp_path / "tokens", splits="dev")
    assert [r.id for r in corpus.records] == ["u5", "u4"]  # shortest first
    corpus.check_codec(codec.identity)
    main(argv)  # again: nothing left to do
    assert "tokenized 0 utterances" in capsys.readouterr().out


def test_padded_batches_are_exact_for_a_causal_codec(tmp_path, frontend):
    torch.manual_seed(0)
    config = yaml.safe_load((ROOT / "recipes/configs/codec/tiny.yaml").read_text())["model"]
    causal = EchoCodec(CodecConfig(**config, causal=True))
    causal.train()
    causal(torch.randn(2, 1, 3200) * 0.1)
    causal.eval()
    utterances = write_corpus(tmp_path / "corpus")
    tokenize_corpus(causal, frontend, utterances, tmp_path / "tokens", grouping="padded", progress=False)
    corpus = TokenCorpus.open(tmp_path / "tokens")
    for i, record in enumerate(corpus.records):
        wav, _ = load_audio(next(u.audio_path for u in utterances if u.id == record.id), causal.sample_rate)
        assert torch.equal(corpus[i].codes, causal.encode(wav[None])[0]), record.id

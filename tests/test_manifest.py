import json

import pytest

from data.manifest import CorpusSummary, Utterance, filter_by_duration, read_manifest, split_corpus, write_manifest
from data.prepare import write_corpus


def corpus(speakers: int = 10, per_speaker: int = 20) -> list[Utterance]:
    return [
        Utterance(f"s{s}_{i}", f"/audio/s{s}_{i}.wav", f"sentence {i}", f"s{s}", 1.0 + (i % 5), "en-us")
        for s in range(speakers)
        for i in range(per_speaker)
    ]


def test_round_trip_keeps_every_field_and_relative_paths_move_with_the_directory(tmp_path):
    (tmp_path / "corpus" / "audio").mkdir(parents=True)
    inside = Utterance("a", str(tmp_path / "corpus" / "audio" / "a.wav"), "Hello, “world”!", "spk", 1.25, "en-gb")
    outside = Utterance("b", "/elsewhere/b.flac", "Bye.", "spk", 2.0)
    write_manifest(tmp_path / "corpus" / "m.jsonl", [inside, outside])
    lines = [json.loads(line) for line in (tmp_path / "corpus" / "m.jsonl").read_text().splitlines()]
    assert lines[0]["audio_path"] == "audio/a.wav" and lines[1]["audio_path"] == "/elsewhere/b.flac"
    assert read_manifest(tmp_path / "corpus" / "m.jsonl") == [inside, outside]

    (tmp_path / "corpus").rename(tmp_path / "moved")
    moved = read_manifest(tmp_path / "moved" / "m.jsonl")
    assert moved[0].audio_path == str(tmp_path / "moved" / "audio" / "a.wav")


def test_bad_manifests_name_the_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a", "audio_path": "a.wav", "text": "t", "speaker": "s", "duration": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2: not valid JSON"):
        read_manifest(path)
    path.write_text('{"id": "a", "audio_path": "a.wav", "text": "t"}\n')
    with pytest.raises(ValueError, match=r"m.jsonl:1: missing field\(s\) \['speaker', 'duration'\]"):
        read_manifest(path)
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        read_manifest(tmp_path / "nope.jsonl")


def test_duration_filter_counts_what_it_drops():
    kept, dropped = filter_by_duration(corpus(2, 10), min_duration=2.0, max_duration=4.0)
    assert all(2.0 <= u.duration <= 4.0 for u in kept)
    assert len(kept) + dropped == 20 and dropped == 8


def test_split_is_deterministic_disjoint_and_holds_out_whole_speakers():
    utts = corpus()
    split = split_corpus(utts, dev_fraction=0.1, held_out_speakers=2, seed=3)
    ids = [u.id for part in (split.train, split.dev, split.test) for u in part]
    assert sorted(ids) == sorted(u.id for u in utts)
    test_speakers = {u.speaker for u in split.test}
    assert len(test_speakers) == 2 and len(split.test) == 40
    assert not test_speakers & {u.speaker for u in split.train + split.dev}
    assert 5 <= len(split.dev) <= 35  # about 10 % of 160
    again = split_corpus(utts, dev_fraction=0.1, held_out_speakers=2, seed=3)
    assert again == split
    other_seed = split_corpus(utts, dev_fraction=0.1, held_out_speakers=2, seed=4)
    assert {u.id for u in other_seed.dev} != {u.id for u in split.dev}


def test_split_membership_does_not_depend_on_order_or_on_other_utterances():
    utts = corpus()
    a = split_corpus(utts, dev_fraction=0.2, seed=0)
    b = split_corpus(list(reversed(utts)) + corpus(12, 20)[200:], dev_fraction=0.2, seed=0)
    assert {u.id for u in a.dev} <= {u.id for u in b.dev}


def test_split_rejects_holding_out_every_speaker():
    with pytest.raises(ValueError, match="leaves no speaker to train on"):
        split_corpus(corpus(3, 2), held_out_speakers=3)


def test_write_corpus_writes_every_split_and_a_summary(tmp_path):
    summaries = write_corpus(
        tmp_path, corpus(), {"missing transcript": 2}, min_duration=1.5, max_duration=20,
        dev_fraction=0.1, held_out_speakers=2, seed=0,
    )
    for name in ("manifest", "train", "dev", "test"):
        assert (tmp_path / f"{name}.jsonl").is_file()
    assert summaries["all"].utterances == 160  # 40 of 200 are 1 s long
    assert summaries["all"].skipped == {"missing transcript": 2, "outside 1.5-20 s": 40}
    assert sum(summaries[n].utterances for n in ("train", "dev", "test")) == 160
    assert summaries["test"].speakers == 2
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["all"]["hours"] == pytest.approx(summaries["all"].hours)
    assert "skipped: 2 missing transcript, 40 outside 1.5-20 s" in str(summaries["all"])


def test_write_corpus_refuses_an_empty_result(tmp_path):
    with pytest.raises(ValueError, match="no utterance is left"):
        write_corpus(tmp_path, corpus(1, 3), {}, min_duration=100, max_duration=200,
                     dev_fraction=0.0, held_out_speakers=0, seed=0)


def test_summary_counts_hours_and_speakers():
    summary = CorpusSummary.of(corpus(3, 4))
    assert summary.speakers == 3 and summary.utterances == 12
    assert summary.hours == pytest.approx(sum(u.duration for u in corpus(3, 4)) / 3600)

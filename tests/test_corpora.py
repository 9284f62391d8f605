"""Corpus readers on tiny corpora built in each corpus's published layout."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data.corpora import (
    READERS,
    CorpusReadResult,
    read_jsonl,
    read_libritts,
    read_ljspeech,
    read_vctk,
)
from data.manifest import Utterance, read_manifest, write_manifest


def write_tone(path: Path, seconds: float, sample_rate: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    sf.write(str(path), 0.3 * np.sin(2 * np.pi * 220 * t), sample_rate, subtype="PCM_16")
    return path


def write_garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def by_id(result: CorpusReadResult) -> dict[str, Utterance]:
    return {utt.id: utt for utt in result.utterances}


# ---------------------------------------------------------------------------------------------- LibriTTS


def libritts_utterance(subset: Path, utt_id: str, seconds: float, normalized: str | None, original: str | None) -> None:
    speaker, chapter = utt_id.split("_")[:2]
    folder = subset / speaker / chapter
    write_tone(folder / f"{utt_id}.wav", seconds, 24000)
    if normalized is not None:
        write_text(folder / f"{utt_id}.normalized.txt", normalized)
    if original is not None:
        write_text(folder / f"{utt_id}.original.txt", original)


@pytest.fixture
def libritts(tmp_path: Path) -> Path:
    root = tmp_path / "LibriTTS"
    train, dev = root / "train-clean-100", root / "dev-clean"
    libritts_utterance(train, "84_121123_000007_000001", 0.5, "He had forty two dollars.", "He had $42.")
    libritts_utterance(train, "84_121123_000008_000000", 0.75, "Mister Brown came home.\n", "Mr. Brown came home.")
    libritts_utterance(train, "84_121123_000009_000000", 0.5, None, None)  # missing transcript
    libritts_utterance(train, "103_1240_000001_000000", 0.25, None, "Only the original text.")
    write_garbage(train / "103" / "1240" / "103_1240_000002_000000.wav")  # corrupt audio
    write_text(train / "103" / "1240" / "103_1240_000002_000000.normalized.txt", "Never read.")
    write_text(train / "84" / "121123" / "84_121123.trans.tsv", "ignored\tby\tthe reader\n")
    libritts_utterance(dev, "1272_128104_000001_000000", 1.0, "A dev clean sentence.", "A dev clean sentence.")
    write_text(root / "SPEAKERS.txt", ";ID |SEX| SUBSET |MINUTES| NAME\n")
    return root


def test_libritts_reads_every_subset(libritts: Path) -> None:
    result = read_libritts(libritts, language="en-gb")
    assert [utt.id for utt in result.utterances] == [
        "103_1240_000001_000000",
        "1272_128104_000001_000000",
        "84_121123_000007_000001",
        "84_121123_000008_000000",
    ]
    utts = by_id(result)
    first = utts["84_121123_000007_000001"]
    assert first.text == "He had forty two dollars."
    assert first.speaker == "libritts_84"
    assert first.duration == pytest.approx(0.5, abs=1e-3)
    assert first.language == "en-gb"
    assert Path(first.audio_path).is_absolute() and Path(first.audio_path).is_file()
    assert utts["84_121123_000008_000000"].text == "Mister Brown came home."
    assert utts["1272_128104_000001_000000"].speaker == "libritts_1272"
    assert utts["103_1240_000001_000000"].text == "Only the original text."
    assert result.skipped == {"missing transcript": 1, "unreadable audio": 1}
    assert result.fallbacks == {"original text (no .normalized.txt)": 1}
    assert result.examples["unreadable audio"][0].endswith("103_1240_000002_000000.wav")


def test_libritts_subset_selection(libritts: Path) -> None:
    dev_only = read_libritts(libritts, subsets=["dev-clean"])
    assert [utt.id for utt in dev_only.utterances] == ["1272_128104_000001_000000"]
    assert not dev_only.skipped

    single = read_libritts(libritts / "train-clean-100")
    assert len(single.utterances) == 3
    assert read_libritts(libritts / "dev-clean", subsets=["dev-clean"]).utterances == dev_only.utterances

    with pytest.raises(FileNotFoundError, match=r"train-other-500.*dev-clean"):
        read_libritts(libritts, subsets=["train-other-500"])
    with pytest.raises(ValueError, match="single subset 'dev-clean'"):
        read_libritts(libritts / "dev-clean", subsets=["train-clean-100"])


def test_libritts_wrong_root(libritts: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"does not look like LibriTTS.*did you mean .*LibriTTS\?"):
        read_libritts(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        read_libritts(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"<subset>/<speaker>/<chapter>"):
        read_libritts(empty)


# ---------------------------------------------------------------------------------------------- LJSpeech


@pytest.fixture
def ljspeech(tmp_path: Path) -> Path:
    root = tmp_path / "LJSpeech-1.1"
    write_tone(root / "wavs" / "LJ001-0001.wav", 0.5, 22050)
    write_tone(root / "wavs" / "LJ001-0002.wav", 0.25, 22050)
    write_tone(root / "wavs" / "LJ001-0003.wav", 0.5, 22050)
    write_garbage(root / "wavs" / "LJ001-0004.wav")  # corrupt audio
    write_tone(root / "wavs" / "LJ001-0005.wav", 0.5, 22050)  # missing transcript: not in metadata.csv
    rows = [
        "LJ001-0001|Printing, in the only sense, 1st|Printing, in the only sense, first",
        'LJ001-0002|He said "no more|He said "no more',  # an unbalanced quote must not swallow the next rows
        "LJ001-0003|Only raw text here|",
        "LJ001-0004|Corrupt audio|Corrupt audio",
        "LJ001-0006|No audio for this one|No audio for this one",
    ]
    write_text(root / "metadata.csv", "\n".join(rows) + "\n")
    write_text(root / "README", "LJ Speech Dataset\n")
    return root


def test_ljspeech(ljspeech: Path) -> None:
    result = read_ljspeech(ljspeech)
    assert [utt.id for utt in result.utterances] == ["LJ001-0001", "LJ001-0002", "LJ001-0003"]
    utts = by_id(result)
    assert utts["LJ001-0001"].text == "Printing, in the only sense, first"
    assert utts["LJ001-0002"].text == 'He said "no more'
    assert utts["LJ001-0003"].text == "Only raw text here"
    assert utts["LJ001-0002"].duration == pytest.approx(0.25, abs=1e-3)
    assert {utt.speaker for utt in result.utterances} == {"ljspeech"}
    assert result.skipped == {"missing transcript": 1, "unreadable audio": 1, "missing audio": 1}
    assert result.fallbacks == {"raw text (empty normalized text)": 1}


def test_ljspeech_wrong_root(ljspeech: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"metadata\.csv.*did you mean .*LJSpeech-1\.1\?"):
        read_ljspeech(tmp_path)


# ---------------------------------------------------------------------------------------------- VCTK


@pytest.fixture
def vctk(tmp_path: Path) -> Path:
    root = tmp_path / "VCTK-Corpus-0.92"
    audio, text = root / "wav48_silence_trimmed", root / "txt"
    for mic in ("mic1", "mic2"):
        write_tone(audio / "p225" / f"p225_001_{mic}.flac", 0.5, 48000)
        write_tone(audio / "p225" / f"p225_002_{mic}.flac", 0.25, 48000)
        write_tone(audio / "p315" / f"p315_001_{mic}.flac", 0.5, 48000)  # p315 has no transcripts
    write_garbage(audio / "p226" / "p226_001_mic1.flac")  # corrupt audio
    write_text(text / "p225" / "p225_001.txt", "Please call Stella.\n")
    write_text(text / "p225" / "p225_002.txt", "Ask her to bring these things with her from the store.\n")
    write_text(text / "p226" / "p226_001.txt", "Never read.\n")
    write_text(audio / "log.txt", "silence trimming log\n")
    write_text(root / "speaker-info.txt", "ID  AGE  GENDER  ACCENTS  REGION COMMENTS\n")
    return root


def test_vctk(vctk: Path) -> None:
    result = read_vctk(vctk)
    assert [utt.id for utt in result.utterances] == ["p225_001_mic1", "p225_002_mic1"]
    first = result.utterances[0]
    assert first.text == "Please call Stella."
    assert first.speaker == "vctk_p225"
    assert first.duration == pytest.approx(0.5, abs=1e-3)
    assert first.audio_path.endswith("p225_001_mic1.flac")
    assert result.skipped == {"missing transcript": 1, "unreadable audio": 1}
    assert result.examples["missing transcript"][0].endswith("p315_001_mic1.flac")


def test_vctk_mic2_and_errors(vctk: Path, tmp_path: Path) -> None:
    mic2 = read_vctk(vctk, mic="mic2")
    assert [utt.id for utt in mic2.utterances] == ["p225_001_mic2", "p225_002_mic2"]
    assert mic2.skipped == {"missing transcript": 1}
    with pytest.raises(ValueError, match="mic"):
        read_vctk(vctk, mic="mic3")
    with pytest.raises(FileNotFoundError, match=r"wav48_silence_trimmed.*did you mean"):
        read_vctk(tmp_path)
    old = tmp_path / "VCTK-Corpus"
    (old / "wav48").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="older VCTK release"):
        read_vctk(old)


# ---------------------------------------------------------------------------------------------- tables


@pytest.fixture
def table_dir(tmp_path: Path) -> Path:
    root = tmp_path / "mydata"
    write_tone(root / "clips" / "spk1" / "001.wav", 0.5, 16000)
    write_tone(root / "clips" / "spk2" / "001.wav", 0.25, 16000)
    write_tone(root / "clips" / "spk2" / "002.wav", 0.75, 16000)
    write_garbage(root / "clips" / "spk2" / "003.wav")
    return root


def test_jsonl(table_dir: Path) -> None:
    outside = write_tone(table_dir.parent / "elsewhere" / "far.flac", 0.5, 16000)
    rows = [
        {"audio_path": "clips/spk1/001.wav", "text": " Hello   there. ", "speaker": "alice", "id": "a1"},
        {"audio": "clips/spk2/001.wav", "transcript": "Bonjour.", "language": "fr-fr"},
        {"path": "clips/spk2/002.wav", "text": "Trusted duration.", "duration": 9.5},
        {"file": "clips/spk2/003.wav", "text": "Corrupt audio."},
        {"audio_path": "clips/spk1/001.wav", "speaker": "alice"},  # missing transcript
        {"audio_path": "clips/spk1/001.wav", "text": "  "},
        {"audio_path": "clips/spk1/404.wav", "text": "No such file."},
        {"audio_path": str(outside), "text": "An absolute path.", "id": "a1"},  # repeated id
    ]
    table = write_text(table_dir / "metadata.jsonl", "".join(json.dumps(row) + "\n" for row in rows) + "\n")
    result = read_jsonl(table)
    assert [utt.id for utt in result.utterances] == ["a1", "clips_spk2_001", "clips_spk2_002"]
    utts = by_id(result)
    assert utts["a1"] == Utterance(
        "a1", str(table_dir / "clips" / "spk1" / "001.wav"), "Hello there.", "alice", pytest.approx(0.5), "en-us"
    )
    assert utts["clips_spk2_001"].speaker == "metadata"  # no speaker: the table's name
    assert utts["clips_spk2_001"].language == "fr-fr"
    assert utts["clips_spk2_001"].duration == pytest.approx(0.25, abs=1e-3)
    assert utts["clips_spk2_002"].duration == 9.5
    assert result.skipped == {
        "unreadable audio": 1,
        "missing transcript": 1,
        "empty transcript": 1,
        "missing audio": 1,
        "duplicate id": 1,
    }
    assert read_jsonl(table_dir, speaker="bob").utterances[1].speaker == "bob"  # a directory with one table


def test_csv_and_tsv(table_dir: Path) -> None:
    write_text(
        table_dir / "list.csv",
        "file,transcript,speaker\n"
        'clips/spk1/001.wav,"Commas, inside quotes.",alice\n'
        "clips/spk2/001.wav,,bob\n"
        "clips/spk2/003.wav,Corrupt audio.,bob\n",
    )
    result = read_jsonl(table_dir / "list.csv")
    assert [(utt.id, utt.text, utt.speaker) for utt in result.utterances] == [
        ("clips_spk1_001", "Commas, inside quotes.", "alice")
    ]
    assert result.skipped == {"empty transcript": 1, "unreadable audio": 1}

    write_text(
        table_dir / "list.tsv",
        "id\tpath\ttext\n"
        'u1\tclips/spk2/002.wav\t"Quoted" words and a stray " quote\n'
        "u2\tclips/spk1/001.wav\n",
    )
    result = read_jsonl(table_dir / "list.tsv")
    assert [(utt.id, utt.text) for utt in result.utterances] == [("u1", '"Quoted" words and a stray " quote')]
    assert result.utterances[0].duration == pytest.approx(0.75, abs=1e-3)
    assert result.skipped == {"missing transcript": 1}


def test_table_errors(table_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="exactly one table"):
        read_jsonl(table_dir)
    write_text(table_dir / "a.csv", "wav,sentence\nclips/spk1/001.wav,Hi.\n")
    with pytest.raises(ValueError, match=r"a\.csv.*audio_path"):
        read_jsonl(table_dir / "a.csv")
    write_text(table_dir / "b.jsonl", '{"audio_path": "clips/spk1/001.wav", "text": "Hi."}\nnot json\n')
    with pytest.raises(ValueError, match=r"b\.jsonl:2"):
        read_jsonl(table_dir / "b.jsonl")
    with pytest.raises(FileNotFoundError, match="exactly one table"):
        read_jsonl(table_dir)  # now two
    with pytest.raises(ValueError, match="not a table"):
        read_jsonl(write_text(table_dir / "notes.txt", "hello\n"))


# ---------------------------------------------------------------------------------------------- all readers


def test_readers_registry() -> None:
    assert READERS == {"libritts": read_libritts, "ljspeech": read_ljspeech, "vctk": read_vctk, "jsonl": read_jsonl}


def test_manifest_round_trip(libritts: Path, ljspeech: Path, vctk: Path, tmp_path: Path) -> None:
    utterances = [
        utt
        for result in (READERS["libritts"](libritts), READERS["ljspeech"](ljspeech), READERS["vctk"](vctk))
        for utt in result.utterances
    ]
    assert len({utt.id for utt in utterances}) == len(utterances)
    manifest = write_manifest(tmp_path / "manifests" / "all.jsonl", utterances)
    back = read_manifest(manifest)

    def canonical(utts: list[Utterance]) -> list[Utterance]:
        return [replace(utt, audio_path=os.path.realpath(utt.audio_path)) for utt in utts]

    assert canonical(back) == canonical(utterances)
    assert read_jsonl(manifest).utterances == sorted(back, key=lambda utt: utt.id)  # a manifest is a table too

"""Corpus readers: walk a corpus in its published layout and return its Utterance records.

Every reader is `read_<name>(root, language="en-us", **options) -> CorpusReadResult` and never
drops an utterance silently: each one left out is counted under a reason in `skipped`, and each
transcript taken from a second choice (LibriTTS original text, LJSpeech raw text) is counted in
`fallbacks`. Durations come from the audio file headers (nothing is decoded). Utterances are
sorted by id.

Speaker ids carry the corpus name ("libritts_84", "vctk_p225", "ljspeech") so that manifests of
different corpora can be concatenated without merging unrelated voices. LibriTTS and LibriTTS-R
share the prefix on purpose: they are the same speakers. Utterance ids are the corpus's own ids
(the audio file stem), which stay recognisable and do not collide between these corpora.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tqdm import tqdm

from data.audio import AudioError, audio_duration
from data.manifest import Utterance

MISSING_TRANSCRIPT = "missing transcript"
EMPTY_TRANSCRIPT = "empty transcript"
MISSING_AUDIO = "missing audio"
UNREADABLE_AUDIO = "unreadable audio"
DUPLICATE_ID = "duplicate id"

LIBRITTS_LAYOUT = "<root>/<subset>/<speaker>/<chapter>/<speaker>_<chapter>_<seg>_<seg>.wav + .normalized.txt beside it"
LJSPEECH_LAYOUT = "<root>/metadata.csv (id|raw text|normalized text) + <root>/wavs/<id>.wav"
VCTK_LAYOUT = "<root>/wav48_silence_trimmed/<spk>/<spk>_<nnn>_mic1.flac + <root>/txt/<spk>/<spk>_<nnn>.txt (VCTK 0.92)"
TABLE_LAYOUT = "a .jsonl, .csv or .tsv file with an audio path column (audio_path/path/audio/file) and text/transcript"

AUDIO_KEYS = ("audio_path", "path", "audio", "file")
TEXT_KEYS = ("text", "transcript")
TABLE_SUFFIXES = (".jsonl", ".csv", ".tsv")
VCTK_MICS = ("mic1", "mic2")
_EXAMPLES_PER_REASON = 3


@dataclass
class CorpusReadResult:
    utterances: list[Utterance] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> utterances left out
    fallbacks: Counter[str] = field(default_factory=Counter)  # reason -> transcripts taken from a second choice
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first few files skipped for it

    def skip(self, reason: str, where: str | Path) -> None:
        self.skipped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < _EXAMPLES_PER_REASON:
            shown.append(str(where))


def _clean_text(text: str) -> str:
    return " ".join(text.split())


def _absolute(path: Path) -> str:
    # abspath, not resolve(): keep the user's view of a symlinked data directory
    return os.path.abspath(path)


def _add(
    result: CorpusReadResult,
    utt_id: str,
    audio: Path,
    text: str | None,
    speaker: str,
    language: str,
    duration: float | None = None,
) -> None:
    """Append one utterance to `result` if its transcript and audio are usable; else count why not.

    A `duration` given by the corpus is trusted, so the audio header is not read (the file must exist).
    """
    if text is None:
        result.skip(MISSING_TRANSCRIPT, audio)
        return
    text = _clean_text(text)
    if not text:
        result.skip(EMPTY_TRANSCRIPT, audio)
        return
    if not audio.is_file():
        result.skip(MISSING_AUDIO, audio)
        return
    if duration is None:
        try:
            duration = audio_duration(audio)
        except AudioError:
            result.skip(UNREADABLE_AUDIO, audio)
            return
    result.utterances.append(Utterance(utt_id, _absolute(audio), text, speaker, duration, language))


def _finish(result: CorpusReadResult) -> CorpusReadResult:
    """Drop repeated ids (keeping the first read) and sort by id."""
    seen: set[str] = set()
    unique = []
    for utt in result.utterances:
        if utt.id in seen:
            result.skip(DUPLICATE_ID, utt.audio_path)
        else:
            seen.add(utt.id)
            unique.append(utt)
    result.utterances = sorted(unique, key=lambda utt: utt.id)
    return result


def _progress(items: list, corpus: str) -> Iterable:
    return tqdm(items, desc=f"reading {corpus}", unit="file", disable=None)  # None: no bar when not a tty


def _existing_dir(root: str | Path, corpus: str, layout: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{corpus} root {root} is not a directory; expected {layout}")
    return root


def _not_the_corpus(root: Path, corpus: str, layout: str, looks_like: Callable[[Path], bool]) -> FileNotFoundError:
    """The error for a root without the corpus layout, pointing at a subdirectory that has it, if any."""
    inside = [child for child in sorted(root.iterdir()) if child.is_dir() and looks_like(child)]
    hint = f"; did you mean {inside[0]}?" if inside else ""
    return FileNotFoundError(f"{root} does not look like {corpus}: expected {layout}{hint}")


def _read_text(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"transcript {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


# ---------------------------------------------------------------------------------------------- LibriTTS


def _is_libritts_subset(path: Path) -> bool:
    return any(child.is_dir() and child.name.isdigit() for child in path.iterdir())


def _looks_like_libritts(path: Path) -> bool:
    return _is_libritts_subset(path) or any(child.is_dir() and _is_libritts_subset(child) for child in path.iterdir())


def _libritts_subsets(root: Path, subsets: list[str] | None) -> list[Path]:
    """The subset directories to read: `root` itself when it is one, else the selected ones inside it."""
    if subsets is not None and not subsets:
        raise ValueError("subsets is empty; pass None to read every subset under the root")
    if _is_libritts_subset(root):
        if subsets is not None and root.name not in subsets:
            raise ValueError(f"{root} is the single subset {root.name!r}, which is not among subsets={subsets}")
        return [root]
    available = {child.name: child for child in sorted(root.iterdir()) if child.is_dir() and _is_libritts_subset(child)}
    if not available:
        raise _not_the_corpus(root, "LibriTTS", LIBRITTS_LAYOUT, _looks_like_libritts)
    if subsets is None:
        return list(available.values())
    missing = [name for name in subsets if name not in available]
    if missing:
        raise FileNotFoundError(f"LibriTTS subset(s) {missing} not found in {root}; it has {sorted(available)}")
    return [available[name] for name in sorted(set(subsets))]


def _libritts_text(wav: Path, result: CorpusReadResult) -> str | None:
    """The normalized transcript, else the original one (counted: it keeps digits and abbreviations)."""
    stem = wav.name.removesuffix(".wav")
    normalized = _read_text(wav.with_name(f"{stem}.normalized.txt"))
    if normalized is not None:
        return normalized
    original = _read_text(wav.with_name(f"{stem}.original.txt"))
    if original is not None:
        result.fallbacks["original text (no .normalized.txt)"] += 1
    return original


def read_libritts(
    root: str | Path, language: str = "en-us", subsets: list[str] | None = None
) -> CorpusReadResult:
    """Read LibriTTS or LibriTTS-R; `root` is the directory of subsets or a single subset directory.

    `subsets` (e.g. ["train-clean-100", "dev-clean"]) selects subsets; None reads all of them.
    """
    root = _existing_dir(root, "LibriTTS", LIBRITTS_LAYOUT)
    wavs = [wav for subset in _libritts_subsets(root, subsets) for wav in sorted(subset.glob("*/*/*.wav"))]
    if not wavs:
        raise FileNotFoundError(f"no .wav files under {root}; expected {LIBRITTS_LAYOUT}")
    result = CorpusReadResult()
    for wav in _progress(wavs, "LibriTTS"):
        speaker = wav.parent.parent.name
        _add(result, wav.stem, wav, _libritts_text(wav, result), f"libritts_{speaker}", language)
    return _finish(result)


# ---------------------------------------------------------------------------------------------- LJSpeech


def _ljspeech_metadata(path: Path, result: CorpusReadResult) -> dict[str, str]:
    """id -> transcript: the normalized text, else the raw text (counted)."""
    texts = {}
    with open(path, encoding="utf-8", newline="") as f:
        # QUOTE_NONE: transcripts contain unbalanced quotes, and '|' never occurs in them
        for line_no, row in enumerate(csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE), start=1):
            if not row or not row[0].strip():
                continue
            if len(row) < 2:
                raise ValueError(f"{path}:{line_no}: expected id|raw text|normalized text, got {'|'.join(row)!r}")
            utt_id, raw = row[0].strip(), row[1]
            normalized = row[2] if len(row) > 2 else ""
            if not normalized.strip() and raw.strip():
                result.fallbacks["raw text (empty normalized text)"] += 1
                normalized = raw
            texts[utt_id] = normalized
    return texts


def read_ljspeech(root: str | Path, language: str = "en-us") -> CorpusReadResult:
    """Read LJSpeech 1.1 (one speaker, "ljspeech")."""
    root = _existing_dir(root, "LJSpeech", LJSPEECH_LAYOUT)
    metadata, wav_dir = root / "metadata.csv", root / "wavs"
    if not metadata.is_file() or not wav_dir.is_dir():
        raise _not_the_corpus(root, "LJSpeech", LJSPEECH_LAYOUT, lambda d: (d / "metadata.csv").is_file())
    result = CorpusReadResult()
    texts = _ljspeech_metadata(metadata, result)
    wavs = sorted(wav_dir.glob("*.wav"))
    for wav in _progress(wavs, "LJSpeech"):
        _add(result, wav.stem, wav, texts.get(wav.stem), "ljspeech", language)
    for utt_id in sorted(texts.keys() - {wav.stem for wav in wavs}):
        result.skip(MISSING_AUDIO, wav_dir / f"{utt_id}.wav")
    return _finish(result)


# ---------------------------------------------------------------------------------------------- VCTK


def read_vctk(root: str | Path, language: str = "en-us", mic: str = "mic1") -> CorpusReadResult:
    """Read VCTK 0.92 (the 48 kHz silence-trimmed FLAC release), one of its two microphones."""
    if mic not in VCTK_MICS:
        raise ValueError(f"mic must be one of {VCTK_MICS}, got {mic!r}")
    root = _existing_dir(root, "VCTK", VCTK_LAYOUT)
    audio_dir, text_dir = root / "wav48_silence_trimmed", root / "txt"
    if not audio_dir.is_dir() or not text_dir.is_dir():
        if (root / "wav48").is_dir():
            raise FileNotFoundError(f"{root} is an older VCTK release (wav48/); only VCTK 0.92 is read: {VCTK_LAYOUT}")
        raise _not_the_corpus(root, "VCTK", VCTK_LAYOUT, lambda d: (d / "wav48_silence_trimmed").is_dir())
    flacs = sorted(audio_dir.glob(f"*/*_{mic}.flac"))
    if not flacs:
        raise FileNotFoundError(f"no *_{mic}.flac files under {audio_dir}; expected {VCTK_LAYOUT}")
    result = CorpusReadResult()
    for flac in _progress(flacs, "VCTK"):
        speaker = flac.parent.name
        text_id = flac.stem.removesuffix(f"_{mic}")
        text = _read_text(text_dir / speaker / f"{text_id}.txt")  # None for all of p315
        _add(result, flac.stem, flac, text, f"vctk_{speaker}", language)
    return _finish(result)


# ---------------------------------------------------------------------------------------------- JSONL / CSV / TSV


def _table_file(root: Path) -> Path:
    """`root` itself, or the single table file inside the directory `root`."""
    if root.is_file():
        if root.suffix.lower() not in TABLE_SUFFIXES:
            raise ValueError(f"{root} is not a table: expected {TABLE_LAYOUT}")
        return root
    if not root.is_dir():
        raise FileNotFoundError(f"{root} does not exist; expected {TABLE_LAYOUT}")
    tables = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES)
    if len(tables) != 1:
        found = f"found {[p.name for p in tables]}" if tables else "found none"
        raise FileNotFoundError(f"{root} should hold exactly one table ({TABLE_LAYOUT}); {found}; pass the file itself")
    return tables[0]


def _first_key(keys: Iterable[str], wanted: tuple[str, ...]) -> str | None:
    present = set(keys)
    return next((key for key in wanted if key in present), None)


def _require_columns(path: Path, keys: Iterable[str]) -> None:
    keys = list(keys)
    if _first_key(keys, AUDIO_KEYS) is None or _first_key(keys, TEXT_KEYS) is None:
        raise ValueError(f"{path}: columns {keys} lack an audio path {AUDIO_KEYS} or a text {TEXT_KEYS} column")


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8") as f:
        checked = False
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            if not checked:  # the first object stands in for a header
                _require_columns(path, row)
                checked = True
            yield line_no, row


def _delimited_rows(path: Path) -> Iterator[tuple[int, dict]]:
    tsv = path.suffix.lower() == ".tsv"
    with open(path, encoding="utf-8", newline="") as f:
        # TSV text may hold stray quotes and never a tab; CSV needs quoting for commas in text
        reader = csv.DictReader(f, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
        _require_columns(path, reader.fieldnames or [])
        for row in reader:
            yield reader.line_num, row


def _row_value(row: dict, keys: tuple[str, ...]) -> str | None:
    key = _first_key(row, keys)
    value = row.get(key) if key is not None else None
    return None if value is None else str(value)


def _row_duration(path: Path, line_no: int, value: object) -> float:
    try:
        duration = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{path}:{line_no}: duration {value!r} is not a number of seconds") from None
    if not duration > 0:
        raise ValueError(f"{path}:{line_no}: duration must be positive seconds, got {value!r}")
    return duration


def _derived_id(audio_value: str) -> str:
    """An id from the audio path: relative paths keep their folders ("spk1/001.wav" -> "spk1_001")."""
    path = Path(audio_value)
    if path.is_absolute():
        return path.stem
    parts = [part for part in path.with_suffix("").parts if part not in (".", "..")]
    return "_".join(parts)


def _add_row(
    result: CorpusReadResult, table: Path, line_no: int, row: dict, speaker: str, language: str
) -> None:
    where = f"{table}:{line_no}"
    audio_value = _row_value(row, AUDIO_KEYS)
    if audio_value is None or not audio_value.strip():
        result.skip(MISSING_AUDIO, where)
        return
    audio = table.parent / audio_value.strip()  # an absolute path stays as it is
    utt_id = (_row_value(row, ("id",)) or "").strip() or _derived_id(audio_value.strip())
    speaker = (_row_value(row, ("speaker",)) or "").strip() or speaker
    language = (_row_value(row, ("language",)) or "").strip() or language
    given = row.get("duration")
    duration = None if given in (None, "") else _row_duration(table, line_no, given)
    _add(result, utt_id, audio, _row_value(row, TEXT_KEYS), speaker, language, duration)


def read_jsonl(root: str | Path, language: str = "en-us", speaker: str | None = None) -> CorpusReadResult:
    """Read a table of utterances: JSON lines, or CSV/TSV with a header row.

    Each row needs an audio path (audio_path/path/audio/file; relative to the table's folder) and
    text (text/transcript); speaker, id, language and duration are optional. A row without a
    speaker gets `speaker`, else the table's file stem; a row without an id gets one from its audio
    path. `root` is the table file, or a directory holding exactly one. Speakers are taken as
    written (no corpus prefix): the table's author owns them.
    """
    table = _table_file(Path(root).expanduser())
    default_speaker = speaker or table.stem
    rows = list(_jsonl_rows(table) if table.suffix.lower() == ".jsonl" else _delimited_rows(table))
    result = CorpusReadResult()
    for line_no, row in _progress(rows, table.name):
        _add_row(result, table, line_no, row, default_speaker, language)
    return _finish(result)


READERS: dict[str, Callable[..., CorpusReadResult]] = {
    "libritts": read_libritts,
    "ljspeech": read_ljspeech,
    "vctk": read_vctk,
    "jsonl": read_jsonl,
}

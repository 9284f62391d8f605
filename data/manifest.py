"""Utterance records and the JSONL manifest that carries them between the pipeline's stages.

A manifest is one JSON object per line. Audio paths under the manifest's own directory are
stored relative to it, so a corpus directory can be moved or copied as a whole; paths
elsewhere (a LibriTTS tree read in place) are stored absolute.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable

from data.pretrained import write_file


@dataclass(frozen=True)
class Utterance:
    id: str
    audio_path: str  # absolute once read from a manifest
    text: str
    speaker: str
    duration: float  # seconds
    language: str = "en-us"


_FIELDS = [f.name for f in fields(Utterance)]


def write_manifest(path: str | Path, utterances: Iterable[Utterance]) -> Path:
    """Write `utterances` to `path` (atomically: a crash leaves the old file or none)."""
    path = Path(path)
    root = path.parent.resolve()

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for utt in utterances:
                record = asdict(utt)
                audio = Path(utt.audio_path).resolve()
                if audio.is_relative_to(root):
                    record["audio_path"] = audio.relative_to(root).as_posix()
                f.write(json.dumps(record, ensure_ascii=False) + "\n")

    return write_file(path, write)


def read_manifest(path: str | Path) -> list[Utterance]:
    """Read a manifest written by `write_manifest` (or by hand: the same fields, one object per line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist; build one with `python recipes/prepare_data.py`")
    root = path.parent.resolve()
    utterances = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
            missing = [name for name in _FIELDS if name not in record and name != "language"]
            if missing:
                raise ValueError(f"{path}:{line_no}: missing field(s) {missing}; every line needs {_FIELDS}")
            record = {name: record[name] for name in _FIELDS if name in record}
            record["audio_path"] = str(root / record["audio_path"])  # an absolute path stays as it is
            record["duration"] = float(record["duration"])
            utterances.append(Utterance(**record))
    return utterances


def filter_by_duration(
    utterances: Iterable[Utterance], min_duration: float = 0.0, max_duration: float = float("inf")
) -> tuple[list[Utterance], int]:
    """Keep utterances with min_duration <= duration <= max_duration; also return how many were dropped."""
    kept, dropped = [], 0
    for utt in utterances:
        if min_duration <= utt.duration <= max_duration:
            kept.append(utt)
        else:
            dropped += 1
    return kept, dropped


@dataclass(frozen=True)
class CorpusSplit:
    train: list[Utterance]
    dev: list[Utterance]  # same speakers as train, unseen utterances
    test: list[Utterance]  # held-out speakers, for zero-shot evaluation


def _unit_hash(key: str, seed: int) -> float:
    """A stable number in [0, 1) for `key`: the split must not depend on Python's hash seed or on order."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_corpus(
    utterances: Iterable[Utterance], dev_fraction: float = 0.02, held_out_speakers: int = 0, seed: int = 0
) -> CorpusSplit:
    """Deterministic train/dev/test split.

    `held_out_speakers` whole speakers go to `test` (zero-shot evaluation); of the rest, about
    `dev_fraction` of the utterances go to `dev`. Membership depends only on ids and the seed, so
    adding utterances to a corpus never moves existing ones between splits.
    """
    if not 0.0 <= dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must be in [0, 1), got {dev_fraction}")
    utterances = list(utterances)
    speakers = sorted({utt.speaker for utt in utterances}, key=lambda s: _unit_hash(s, seed))
    if held_out_speakers < 0:
        raise ValueError(f"held_out_speakers must be >= 0, got {held_out_speakers}")
    if held_out_speakers and held_out_speakers >= len(speakers):
        raise ValueError(
            f"held_out_speakers={held_out_speakers} leaves no speaker to train on (the corpus has {len(speakers)})"
        )
    test_speakers = set(speakers[:held_out_speakers])
    train, dev, test = [], [], []
    for utt in utterances:
        if utt.speaker in test_speakers:
            test.append(utt)
        elif _unit_hash(utt.id, seed) < dev_fraction:
            dev.append(utt)
        else:
            train.append(utt)
    return CorpusSplit(train, dev, test)


@dataclass(frozen=True)
class CorpusSummary:
    utterances: int
    speakers: int
    hours: float
    skipped: dict[str, int]

    @classmethod
    def of(cls, utterances: Iterable[Utterance], skipped: dict[str, int] | None = None) -> "CorpusSummary":
        utterances = list(utterances)
        return cls(
            utterances=len(utterances),
            speakers=len({utt.speaker for utt in utterances}),
            hours=sum(utt.duration for utt in utterances) / 3600,
            skipped=dict(sorted((skipped or {}).items())),
        )

    def __str__(self) -> str:
        text = f"{self.hours:.2f} h, {self.speakers} speakers, {self.utterances} utterances"
        if self.skipped:
            text += "; skipped: " + ", ".join(f"{n} {reason}" for reason, n in self.skipped.items())
        return text

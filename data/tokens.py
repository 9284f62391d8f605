"""Token shards: the tokenized corpus that the language models train on.

A token directory holds every utterance as codec codes and text ids, with the codec's
identity and the text front-end that made them. No pickle anywhere: tensors are safetensors,
everything else is JSON.

    DIR/
      header.json              format, the codec's identity (CodecIdentity.to_dict()), where the text front-end is
      text/text_vocab.json     the TextFrontend that made the text ids (save_pretrained; + text_bpe.model for bpe)
      shard-00000.safetensors  codes    int16 [ΣT, K]  every utterance's frames, one after another (frames first,
                                                       so that one utterance is one contiguous slice)
                               text     int32 [ΣN]     every utterance's text ids, one after another
      shard-00000.json         the shard's records: id, split, speaker, duration, language, text, n_frames,
                               n_text_tokens, shard, code_offset, text_offset
      shard-00000.durations.safetensors   (optional, from recipes/align.py) durations int16 [ΣN]: frames per
                               text id, laid out like `text`; each utterance's sum to its n_frames
      shard-00001.safetensors ...

A shard counts once its .json exists. The writer writes the tensors first and the records
second, each with `data.pretrained.write_file` (a temporary file moved into place), so an
interrupted writer leaves whole shards only; on reopening it removes anything left half-written
and reports the utterance ids already done (`TokenShardWriter.done_ids`), so tokenizing
continues where it stopped. One writer at a time per directory; readers may open it while it grows.

    with TokenShardWriter(DIR, codec.identity, frontend) as writer:
        writer.add("utt1", codes, text_ids, speaker="p225", duration=2.3, text="Hello.")
    corpus = TokenCorpus.open(DIR)
    corpus.check_codec(codec.identity)
    item = corpus[0]               # item.codes LongTensor [K, T], item.text LongTensor [N]
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from codec.interface import CodecIdentity
from data.frontend import VOCAB_FILE, TextFrontend
from data.pretrained import temporary_sibling, write_file
from data.vocab import Vocabulary

logger = logging.getLogger(__name__)

FILE_FORMAT = "echo-token-shards"
FORMAT_VERSION = 1
HEADER_FILE = "header.json"
TEXT_DIR = "text"
INT16_MAX = 32767
_SHARD_NAME = re.compile(r"^shard-(\d{5,})$")


@dataclass(frozen=True)
class TokenRecord:
    """One utterance in a token directory (its line in a shard's .json)."""

    id: str
    split: str  # the manifest it came from: "train", "dev", ...
    speaker: str
    duration: float  # seconds of audio
    language: str
    text: str
    n_frames: int  # T
    n_text_tokens: int  # N
    shard: str  # "shard-00000"
    code_offset: int  # first frame in the shard's `codes`
    text_offset: int  # first id in the shard's `text`

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str) -> "TokenRecord":
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in d]
        if missing:
            raise ValueError(f"{source}: a record lacks {missing}; the token directory is damaged, re-tokenize it")
        return cls(**{name: d[name] for name in names})


@dataclass
class TokenItem:
    """What `TokenCorpus[i]` returns."""

    record: TokenRecord
    codes: torch.Tensor  # LongTensor [K, T]
    text: torch.Tensor  # LongTensor [N]
    durations: torch.Tensor | None = None  # LongTensor [N]: frames per text id, when the corpus is aligned

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def speaker(self) -> str:
        return self.record.speaker


def _write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, ensure_ascii=False, indent=1) + "\n"
    write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _read_header(directory: Path) -> dict[str, Any]:
    path = directory / HEADER_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} is not a token directory ({HEADER_FILE} is missing); "
            "make one with `python recipes/tokenize_corpus.py`"
        )
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg}); the token directory is damaged: re-tokenize") from None
    if not isinstance(header, dict) or header.get("format") != FILE_FORMAT:
        raise ValueError(f'{path} is not an Echo token header (expected "format": "{FILE_FORMAT}")')
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {version!r}; this Echo reads <= {FORMAT_VERSION}: upgrade Echo")
    return header


def durations_path(directory: Path, shard: str) -> Path:
    return directory / f"{shard}.durations.safetensors"


def write_durations(directory: Path, shard: str, durations: torch.Tensor) -> None:
    """Write a shard's durations int16 [ΣN] (laid out like its `text`) atomically. A token may have
    0 frames only in an utterance with fewer frames than tokens (recipes/align.py spreads those evenly)."""
    if durations.numel() and (durations.min() < 0 or durations.max() > INT16_MAX):
        raise ValueError(f"durations must lie in [0, {INT16_MAX}] frames, got [{int(durations.min())}, {int(durations.max())}]")
    tensors = {"durations": durations.to(torch.int16).contiguous()}
    write_file(durations_path(directory, shard), lambda tmp: save_file(tensors, str(tmp)))


def _committed_shards(directory: Path) -> list[str]:
    """Names of the shards whose records exist (a shard without its .json never became visible), in order."""
    names = []
    for path in directory.glob("shard-*.json"):
        if _SHARD_NAME.match(path.stem) and (directory / f"{path.stem}.safetensors").is_file():
            names.append(path.stem)
    return sorted(names, key=lambda name: int(_SHARD_NAME.match(name).group(1)))


def _read_records(directory: Path, shard: str) -> list[TokenRecord]:
    path = directory / f"{shard}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg}); the token directory is damaged: re-tokenize") from None
    return [TokenRecord.from_dict(d, str(path)) for d in data["records"]]


class TokenShardWriter:
    """Append utterances to a token directory, one shard per `shard_size` utterances (see the module docstring).

    Opening an existing directory continues it: the codec identity and the text vocabulary must
    be the ones it was started with, and `done_ids` holds the utterances it already has. Use it
    as a context manager (or call `close()`): the utterances added since the last shard are
    written when it closes, also when an exception ends the run, since each of them is whole.
    """

    def __init__(
        self,
        directory: str | Path,
        codec_identity: CodecIdentity,
        frontend: TextFrontend | None = None,
        shard_size: int = 1000,
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        if codec_identity.codebook_size - 1 > INT16_MAX:
            raise ValueError(
                f"codebook_size {codec_identity.codebook_size} does not fit the int16 codes of token shards "
                f"(at most {INT16_MAX + 1} codes per codebook)"
            )
        self.directory = Path(directory)
        self.codec_identity = codec_identity
        self.shard_size = shard_size
        self._pending: list[tuple[dict[str, Any], np.ndarray, np.ndarray]] = []  # (record, codes [T, K], ids [N])
        self._pending_ids: set[str] = set()
        if (self.directory / HEADER_FILE).is_file():
            self.vocab = self._reopen(frontend)
        else:
            self.vocab = self._create(frontend)
        self._shards = _committed_shards(self.directory)
        self._remove_leftovers()
        self.done_ids: set[str] = {r.id for shard in self._shards for r in _read_records(self.directory, shard)}

    def _create(self, frontend: TextFrontend | None) -> Vocabulary:
        if frontend is None:
            raise ValueError(
                f"{self.directory} is a new token directory, so it needs the text front-end: "
                "pass TextFrontend (built from the corpus texts or loaded with from_pretrained)"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        frontend.save_pretrained(self.directory / TEXT_DIR)
        header = {
            "format": FILE_FORMAT,
            "format_version": FORMAT_VERSION,
            "codec": self.codec_identity.to_dict(),
            "text_dir": TEXT_DIR,
            "text_kind": frontend.kind,
            "text_vocab_size": len(frontend.vocab),
            "codes": "int16 [frames, codebooks] per shard; an utterance is codes[code_offset : code_offset + n_frames]",
            "text": "int32 [ids] per shard; an utterance is text[text_offset : text_offset + n_text_tokens]",
        }
        _write_json(self.directory / HEADER_FILE, header)  # last: the header makes it a token directory
        return frontend.vocab

    def _reopen(self, frontend: TextFrontend | None) -> Vocabulary:
        header = _read_header(self.directory)
        stored = CodecIdentity.from_dict(header["codec"])
        try:
            stored.check_compatible(self.codec_identity, what=f"the tokens to add to {self.directory}")
        except ValueError as e:
            raise ValueError(f"{e}; or write them into a new token directory") from None
        vocab = Vocabulary.load(self.directory / header["text_dir"] / VOCAB_FILE)
        if frontend is not None and frontend.vocab != vocab:
            raise ValueError(
                f"{self.directory} was started with another text vocabulary ({vocab!r}, given {frontend.vocab!r}); "
                f"continue it with its own front-end (TextFrontend.from_pretrained('{self.directory / TEXT_DIR}')) "
                "or write into a new token directory"
            )
        return vocab

    def _remove_leftovers(self) -> None:
        """Delete temporary files and shards whose records were never written (an interrupted flush)."""
        committed = set(self._shards)
        temporary = self.directory.glob(temporary_sibling(Path("shard-*")).name)  # write_file's, hidden
        for path in [*self.directory.glob("shard-*"), *temporary]:
            name = path.name.lstrip(".").split(".")[0]
            if path.name.endswith(".tmp") or name not in committed:
                logger.info("removing %s, left by an interrupted writer", path)
                path.unlink()

    # -- writing ------------------------------------------------------------------------------

    def add(
        self,
        id: str,
        codes: torch.Tensor | np.ndarray,
        text_ids: Sequence[int] | torch.Tensor | np.ndarray,
        *,
        speaker: str,
        duration: float,
        text: str,
        language: str = "en-us",
        split: str = "train",
    ) -> None:
        """Add one utterance: `codes` [K, T] from the codec, `text_ids` [N] from the front-end."""
        if not isinstance(id, str) or not id:
            raise ValueError(f"utterance id must be a non-empty string, got {id!r}")
        if id in self.done_ids or id in self._pending_ids:
            raise ValueError(f"utterance {id!r} is already in {self.directory}; ids must be unique")
        codes = torch.as_tensor(codes).detach().cpu()
        K = self.codec_identity.n_q
        if codes.dim() != 2 or codes.shape[0] != K or codes.shape[1] == 0:
            raise ValueError(f"{id}: codes must be [K={K}, T >= 1] (codebooks, frames), got shape {tuple(codes.shape)}")
        if codes.is_floating_point():
            raise ValueError(f"{id}: codes must be integers, got {codes.dtype}")
        if codes.min() < 0 or codes.max() >= self.codec_identity.codebook_size:
            raise ValueError(
                f"{id}: codes must lie in [0, {self.codec_identity.codebook_size}), "
                f"got [{int(codes.min())}, {int(codes.max())}]"
            )
        ids = torch.as_tensor(text_ids).detach().cpu().reshape(-1)
        if ids.numel() == 0 or ids.is_floating_point() or ids.min() < 0 or ids.max() >= len(self.vocab):
            raise ValueError(f"{id}: text ids must be a non-empty list of ids in [0, {len(self.vocab)}) "
                             "(the vocabulary's size)")
        record = {
            "id": id,
            "split": split,
            "speaker": speaker,
            "duration": float(duration),
            "language": language,
            "text": text,
            "n_frames": int(codes.shape[1]),
            "n_text_tokens": int(ids.numel()),
        }
        frames = np.ascontiguousarray(codes.t().numpy(), dtype=np.int16)  # [T, K]: frames first (one slice per item)
        self._pending.append((record, frames, ids.numpy().astype(np.int32)))
        self._pending_ids.add(id)
        if len(self._pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the pending utterances as one shard (nothing to do if there are none)."""
        if not self._pending:
            return
        index = int(_SHARD_NAME.match(self._shards[-1]).group(1)) + 1 if self._shards else 0
        name = f"shard-{index:05d}"
        records, code_offset, text_offset = [], 0, 0
        for record, frames, ids in self._pending:
            records.append({**record, "shard": name, "code_offset": code_offset, "text_offset": text_offset})
            code_offset += frames.shape[0]
            text_offset += ids.shape[0]
        tensors = {
            "codes": torch.from_numpy(np.concatenate([f for _, f, _ in self._pending])).contiguous(),  # int16 [ΣT, K]
            "text": torch.from_numpy(np.concatenate([ids for _, _, ids in self._pending])).contiguous(),  # int32 [ΣN]
        }
        write_file(self.directory / f"{name}.safetensors",
                   lambda tmp: save_file(tensors, str(tmp), metadata={"format": FILE_FORMAT}))
        shard = {"shard": name, "n_utterances": len(records), "n_frames": code_offset, "records": records}
        _write_json(self.directory / f"{name}.json", shard)  # the commit: now the shard is visible
        self._shards.append(name)
        self.done_ids.update(self._pending_ids)
        self._pending, self._pending_ids = [], set()

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> "TokenShardWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TokenCorpus:
    """Read a token directory: `len(corpus)`, `corpus.records`, `corpus[i]` -> TokenItem.

    Shards are opened lazily (memory-mapped by safetensors) and an item reads only its own
    slice, so a corpus larger than memory is fine. A TokenCorpus can be sent to DataLoader
    workers: each process opens the shards again.
    """

    def __init__(self, directory: Path, header: dict[str, Any], records: list[TokenRecord]) -> None:
        self.directory = directory
        self.header = header
        self.records = records
        self.codec_identity = CodecIdentity.from_dict(header["codec"])
        self._handles: dict[str, Any] = {}
        self._vocab: Vocabulary | None = None
        self._frontend: TextFrontend | None = None
        self._has_durations: bool | None = None

    @classmethod
    def open(cls, directory: str | Path, splits: str | Iterable[str] | None = None) -> "TokenCorpus":
        """Open `directory`; `splits` keeps only the records of those splits (e.g. "train")."""
        directory = Path(directory)
        header = _read_header(directory)
        records = [r for shard in _committed_shards(directory) for r in _read_records(directory, shard)]
        if splits is not None:
            wanted = {splits} if isinstance(splits, str) else set(splits)
            have = sorted({r.split for r in records})
            unknown = sorted(wanted - set(have))
            if unknown:
                raise ValueError(f"{directory} has no utterances of split(s) {unknown}; it has {have}")
            records = [r for r in records if r.split in wanted]
        if not records:
            raise ValueError(f"{directory} holds no tokenized utterance yet; run `python recipes/tokenize_corpus.py`")
        return cls(directory, header, records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> TokenItem:
        record = self.records[index]
        handle = self._open(self.directory / f"{record.shard}.safetensors")
        frames = handle.get_slice("codes")[record.code_offset : record.code_offset + record.n_frames]  # [T, K]
        text_slice = slice(record.text_offset, record.text_offset + record.n_text_tokens)
        ids = handle.get_slice("text")[text_slice]  # [N]
        durations = None
        if self.has_durations:
            durations = self._open(durations_path(self.directory, record.shard)).get_slice("durations")[text_slice].long()
        return TokenItem(record=record, codes=frames.t().long().contiguous(), text=ids.long(), durations=durations)

    @property
    def has_durations(self) -> bool:
        """Whether every shard has its durations (written by recipes/align.py)."""
        if self._has_durations is None:
            shards = {r.shard for r in self.records}
            self._has_durations = all(durations_path(self.directory, s).is_file() for s in shards)
        return self._has_durations

    def _open(self, path: Path):
        """A safetensors file of this directory, opened once per process (memory-mapped)."""
        handle = self._handles.get(path.name)
        if handle is None:
            handle = self._handles[path.name] = safe_open(str(path), framework="pt")
        return handle

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}  # file handles stay in their process
        return state

    def __repr__(self) -> str:
        return f"TokenCorpus({str(self.directory)!r}, utterances={len(self)}, hours={self.hours:.2f})"

    # -- what made the tokens -----------------------------------------------------------------

    @property
    def frame_rate(self) -> float:
        return self.codec_identity.frame_rate

    @property
    def n_q(self) -> int:
        return self.codec_identity.n_q

    @property
    def hours(self) -> float:
        return sum(r.duration for r in self.records) / 3600

    @property
    def splits(self) -> list[str]:
        return sorted({r.split for r in self.records})

    @property
    def text_dir(self) -> Path:
        return self.directory / self.header["text_dir"]

    @property
    def vocab(self) -> Vocabulary:
        """The text vocabulary alone (cheap: no phonemizer)."""
        if self._vocab is None:
            self._vocab = self._frontend.vocab if self._frontend else Vocabulary.load(self.text_dir / VOCAB_FILE)
        return self._vocab

    @property
    def frontend(self) -> TextFrontend:
        """The TextFrontend that made the text ids: the one a model trained on this corpus must use."""
        if self._frontend is None:
            self._frontend = TextFrontend.from_pretrained(self.text_dir)
        return self._frontend

    def check_codec(self, identity: CodecIdentity) -> None:
        """Raise a clear ValueError if `identity` (e.g. the model's codec) is not the codec of these tokens."""
        identity.check_compatible(self.codec_identity, what=f"the tokens in {self.directory}")

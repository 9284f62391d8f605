"""Tokenize a corpus: codec.encode every utterance once, phonemize every text once, write token shards.

    frontend = resolve_frontend(out_dir, utterances)            # the token dir's own, a given one, or built
    summary = tokenize_corpus(codec, frontend, utterances, out_dir, splits=["train", "dev", ...])
    print(summary)

One token directory holds several splits (each record says which manifest it came from), all
with one text vocabulary: tokenize train and dev (and test) together, or add a split later to
the same directory, which then reuses its vocabulary.

Audio is encoded in batches. How utterances are grouped decides whether batching changes codes:

- "frames" (the default): a batch holds utterances with the same number of frames
  F = ceil(T / hop_length), each zero-padded to F * hop_length samples. That is exactly what
  Echo's codec does to a single utterance, so the codes are the codes of encoding each alone,
  for causal and non-causal codecs alike. EnCodec pads by reflection instead, so with EnCodec
  the last 1 to 4 frames of an utterance that shares a batch can differ.
- "samples": only utterances of exactly the same length share a batch, nothing is padded:
  exact for every codec, but on real corpora nearly every batch holds one utterance.
- "padded": utterances of similar length share a batch, padded to the longest. Exact for causal
  codecs only: a non-causal codec sees the padding, and the last frames of the shorter items
  change (the `cpu` preset's codec: up to the last 15 frames, 2.4 % of all codes of the
  quickstart dev set).

On a large corpus, equal frame counts are common (LibriTTS has hundreds of utterances per
count), so "frames" batches fill up. On a small corpus on CPU, where most batches hold one
utterance, "padded" was 5x faster (quickstart dev set, 2 cores: 9 s instead of 45 s).

Interrupted runs resume: the utterances already in the directory are skipped (see
data.tokens.TokenShardWriter).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from codec.interface import Codec
from data.audio import AudioError, load_audio
from data.frontend import TextFrontend
from data.manifest import Utterance
from data.tokens import HEADER_FILE, TEXT_DIR, TokenShardWriter

logger = logging.getLogger(__name__)

GROUPINGS = ("frames", "samples", "padded")


@dataclass
class TokenizeSummary:
    directory: Path
    utterances: int  # in the directory after this run
    added: int  # tokenized by this run
    already_done: int  # found in the directory when the run started
    hours: float  # of audio tokenized by this run
    frames: int  # codec frames written by this run
    elapsed: float  # seconds
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    unknown_symbols: dict[str, int] = field(default_factory=dict)  # text symbols outside the vocabulary

    @property
    def hours_per_minute(self) -> float:
        """Hours of audio tokenized per minute of wall-clock time."""
        return self.hours / (self.elapsed / 60) if self.elapsed > 0 else 0.0

    def __str__(self) -> str:
        lines = [
            f"tokenized {self.added} utterances ({self.hours:.3f} h, {self.frames} frames) in {self.elapsed:.1f} s: "
            f"{self.hours_per_minute:.2f} h of audio per minute",
            f"{self.directory} holds {self.utterances} utterances ({self.already_done} were already done)",
        ]
        if self.skipped:
            lines.append("skipped: " + ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())))
        if self.unknown_symbols:
            top = sorted(self.unknown_symbols.items(), key=lambda kv: -kv[1])[:10]
            lines.append("text symbols outside the vocabulary (encoded as <unk>): "
                         + ", ".join(f"{s!r} x{n}" for s, n in top))
        return "\n".join(lines)


def resolve_frontend(
    out_dir: str | Path,
    utterances: Sequence[Utterance],
    *,
    frontend_from: str | Path | None = None,
    kind: str = "phoneme",
    bpe_vocab_size: int = 512,
) -> TextFrontend:
    """The front-end for tokenizing into `out_dir`.

    An existing token directory keeps its own (ids already written depend on it); otherwise the
    one saved in `frontend_from` (e.g. the train token dir's `text/`, or a trained model's), or
    a new one built from the texts of `utterances`.
    """
    out_dir = Path(out_dir)
    given = TextFrontend.from_pretrained(frontend_from) if frontend_from is not None else None
    if (out_dir / HEADER_FILE).is_file():
        own = TextFrontend.from_pretrained(out_dir / TEXT_DIR)
        if given is not None and given.vocab != own.vocab:
            raise ValueError(
                f"{out_dir} already holds tokens made with another vocabulary than {frontend_from}; "
                "leave out the front-end option to continue it, or tokenize into a new directory"
            )
        return own
    if given is not None:
        return given
    if not utterances:
        raise ValueError("no utterances to build the text front-end from")
    return TextFrontend.build([u.text for u in utterances], [u.language for u in utterances],
                              kind=kind, bpe_vocab_size=bpe_vocab_size)


def plan_batches(
    lengths: Sequence[int], hop_length: int, max_samples: int, grouping: str = "frames"
) -> list[list[int]]:
    """Group positions of `lengths` (samples) into batches of at most `max_samples` padded samples.

    Every item is padded to a whole number of frames; a batch of B items costs B x the longest.
    An item longer than `max_samples` gets a batch of its own. See the module docstring for `grouping`.
    """
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
    padded = [math.ceil(n / hop_length) * hop_length for n in lengths]
    order = sorted(range(len(lengths)), key=lambda i: (padded[i], lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches:
            batch = batches[-1]
            fits = (len(batch) + 1) * padded[i] <= max_samples  # sorted: item i is the longest
            key = lengths if grouping == "samples" else padded
            same = grouping == "padded" or key[batch[0]] == key[i]
            if fits and same:
                batch.append(i)
                continue
        batches.append([i])
    return batches


class _AudioFiles(Dataset):
    """Reads utterances' audio at the codec's rate; errors are returned, not raised, so one bad file skips one item."""

    def __init__(self, utterances: Sequence[Utterance], sample_rate: int) -> None:
        self.utterances = utterances
        self.sample_rate = sample_rate

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, str]:
        try:
            wav, _ = load_audio(self.utterances[index].audio_path, self.sample_rate)
        except AudioError as e:
            return None, str(e)
        return wav[0], ""  # [T]


def _encode_texts(frontend: TextFrontend, utterances: Sequence[Utterance]) -> list[list[int] | str]:
    """Text ids for each utterance, phonemized as one batch; a text that fails gets its error message instead."""
    try:
        return frontend.encode_batch([u.text for u in utterances], [u.language for u in utterances])
    except ValueError:
        pass  # find the culprit(s): one at a time
    results: list[list[int] | str] = []
    for u in utterances:
        try:
            results.append(frontend.encode(u.text, u.language))
        except ValueError as e:
            results.append(f"{type(e).__name__}: {e}")
    return results


@torch.inference_mode()
def _encode_audio(codec: Codec, wavs: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Codes [K, ceil(T_i / hop)] for each wav [T_i], encoded as one batch zero-padded to whole frames.

    Wavs of one length are not padded: the codec pads them as it pads a single utterance.
    """
    hop = codec.hop_length
    frames = [math.ceil(w.shape[-1] / hop) for w in wavs]
    same_length = len({w.shape[-1] for w in wavs}) == 1
    batch = torch.zeros(len(wavs), 1, wavs[0].shape[-1] if same_length else max(frames) * hop)  # [B, 1, T]
    for b, wav in enumerate(wavs):
        batch[b, 0, : wav.shape[-1]] = wav
    codes = codec.encode(batch.to(device)).cpu()  # [B, K, F]
    if codes.shape[1] != codec.n_q or codes.shape[2] < max(frames):
        raise RuntimeError(
            f"the codec returned codes of shape {tuple(codes.shape)} for {len(wavs)} items of up to {max(frames)} "
            f"frames; expected [B, {codec.n_q}, >= {max(frames)}]"
        )
    return [codes[b, :, :F] for b, F in enumerate(frames)]  # [K, F_b] each


def tokenize_corpus(
    codec: Codec,
    frontend: TextFrontend | None,
    utterances: Sequence[Utterance],
    out_dir: str | Path,
    *,
    splits: str | Sequence[str] = "train",
    batch_seconds: float = 60.0,
    grouping: str = "frames",
    shard_size: int = 1000,
    chunk_size: int = 256,
    device: str | torch.device = "cpu",
    workers: int = 0,
    progress: bool | None = None,
) -> TokenizeSummary:
    """Encode and phonemize `utterances` into the token directory `out_dir`, continuing it if it exists.

    `splits` is one split name for all utterances or one per utterance. `batch_seconds` bounds
    a batch's padded audio; `chunk_size` utterances are read and phonemized together;
    `workers` processes read the audio. `codec` is moved to `device` and put in eval mode.
    Unreadable audio and texts the front-end refuses are skipped and counted.
    """
    started = time.perf_counter()
    if isinstance(splits, str):
        splits = [splits] * len(utterances)
    if len(splits) != len(utterances):
        raise ValueError(f"splits must be one name or one per utterance; got {len(splits)} for {len(utterances)}")
    duplicates = [i for i, n in Counter(u.id for u in utterances).items() if n > 1]
    if duplicates:
        raise ValueError(f"utterance ids must be unique across the manifests; repeated: {duplicates[:5]}")
    if batch_seconds <= 0 or chunk_size < 1:
        raise ValueError(f"batch_seconds must be > 0 and chunk_size >= 1, got {batch_seconds} and {chunk_size}")
    device = torch.device(device)
    codec.to(device).eval()
    sample_rate, hop = codec.sample_rate, codec.hop_length
    max_samples = max(hop, int(batch_seconds * sample_rate))

    with TokenShardWriter(out_dir, codec.identity, frontend, shard_size=shard_size) as writer:
        if frontend is None:
            frontend = TextFrontend.from_pretrained(Path(out_dir) / TEXT_DIR)
        already_done = len(writer.done_ids)
        unknown_before = frontend.unknown_counts
        # Shortest first, so a chunk's utterances have similar lengths and group into few batches.
        todo = sorted((i for i, u in enumerate(utterances) if u.id not in writer.done_ids),
                      key=lambda i: (utterances[i].duration, utterances[i].id))
        loader = DataLoader(_AudioFiles([utterances[i] for i in todo], sample_rate), batch_size=None,
                            num_workers=workers)
        audio: Iterator[tuple[torch.Tensor | None, str]] = iter(loader)
        skipped: Counter[str] = Counter()
        added = frames = 0
        seconds = 0.0
        bar = tqdm(total=len(todo), unit="utt", desc="tokenizing", disable=None if progress is None else not progress)
        for start in range(0, len(todo), chunk_size):
            chunk = [utterances[i] for i in todo[start : start + chunk_size]]
            chunk_splits = [splits[i] for i in todo[start : start + chunk_size]]
            loaded = [next(audio) for _ in chunk]
            texts = _encode_texts(frontend, chunk)
            usable = []
            for k, (u, (wav, audio_error), ids) in enumerate(zip(chunk, loaded, texts, strict=True)):
                if wav is None:
                    skipped["unreadable audio"] += 1
                    logger.warning("skipping %s: %s", u.id, audio_error)
                elif isinstance(ids, str):
                    skipped["text the front-end refused"] += 1
                    logger.warning("skipping %s: %s", u.id, ids)
                else:
                    usable.append(k)
            codes: dict[int, torch.Tensor] = {}
            lengths = [loaded[k][0].shape[-1] for k in usable]
            for group in plan_batches(lengths, hop, max_samples, grouping):
                members = [usable[g] for g in group]
                for k, item_codes in zip(members, _encode_audio(codec, [loaded[k][0] for k in members], device)):
                    codes[k] = item_codes
            for k in usable:  # in chunk order
                u, wav = chunk[k], loaded[k][0]
                duration = wav.shape[-1] / sample_rate
                writer.add(u.id, codes[k], texts[k], speaker=u.speaker, duration=duration, text=u.text,
                           language=u.language, split=chunk_splits[k])
                added += 1
                frames += codes[k].shape[-1]
                seconds += duration
            bar.update(len(chunk))
            bar.set_postfix(hours=f"{seconds / 3600:.2f}")
        bar.close()
        writer.flush()
        total = len(writer.done_ids)
    unknown = frontend.unknown_counts
    unknown.subtract(unknown_before)
    return TokenizeSummary(
        directory=Path(out_dir),
        utterances=total,
        added=added,
        already_done=already_done,
        hours=seconds / 3600,
        frames=frames,
        elapsed=time.perf_counter() - started,
        skipped=dict(skipped),
        unknown_symbols={s: n for s, n in unknown.items() if n > 0},
    )

"""What the language models train on: examples with prompts, frame-budget batches, padded LMBatch.

Both models take (text, prompt, target). An example is built from one utterance of a
TokenCorpus in one of three ways (`PromptConfig.mode`; "mixed" picks one per example):

- "prefix" (VALL-E's training): the prompt is the first ~`min_seconds`..`max_seconds` of the
  utterance (at most `max_fraction` of it), the target is the rest, and the text is the whole
  utterance's text: it covers prompt + target.
- "speaker": the prompt is a clip of ~the same length from ANOTHER utterance of the same
  speaker, the target is the whole utterance and the text is the target's text only. This
  teaches the models to clone a voice whose transcript they are not given.
- "transcribed": the prompt is a whole other utterance of the same speaker (at most
  `max_seconds` long) and the text is its transcript, a word boundary, then the target's text
  (`join_prompt_transcript`): the layout of synthesis with a prompt transcript, where the
  prompt is a finished sentence and the target a new one. A prefix cut mid-sentence never
  shows the models that layout. The target's leading frames (aligned to its <lang> and <bos>)
  read the boundary, where synthesis starts reading.

A speaker with a single utterance falls back to "prefix"; a "transcribed" example whose other
utterance is longer than `max_seconds` falls back to "speaker". Every random choice comes from
`random.Random` seeded by (seed, epoch, index), so an example is the same whichever process,
worker or order draws it.

    dataset = LMDataset(TokenCorpus.open(DIR, splits="train"), PromptConfig(mode="mixed"))
    sampler = FrameBudgetBatchSampler(dataset.lengths(), max_frames=20_000, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate)
    for epoch in range(sampler.epoch, epochs):
        sampler.set_epoch(epoch); dataset.set_epoch(epoch)
        for batch in loader:  # LMBatch
            batch = batch.to(device)

The sampler is distributed-aware already: give the DataLoader to the training loop as it is,
not through `accelerator.prepare` (which would shard the batches a second time).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, fields
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from data.phonemes import WORD_BOUNDARY
from data.tokens import TokenCorpus
from data.vocab import Vocabulary

logger = logging.getLogger(__name__)

PROMPT_MODES = ("prefix", "speaker", "transcribed", "mixed")


@dataclass(frozen=True)
class PromptConfig:
    mode: str = "mixed"  # "prefix", "speaker" or "mixed" (see the module docstring)
    min_seconds: float = 2.0  # prompt length is drawn uniformly in [min_seconds, max_seconds]
    max_seconds: float = 4.0
    max_fraction: float = 0.5  # prefix: the prompt is at most this share of the utterance
    p_speaker: float = 0.5  # mixed: probability of a speaker prompt
    p_transcribed: float = 0.0  # mixed: probability of a transcribed prompt; the rest are prefixes

    def __post_init__(self) -> None:
        if self.mode not in PROMPT_MODES:
            raise ValueError(f"prompt mode must be one of {PROMPT_MODES}, got {self.mode!r}")
        if not 0 <= self.min_seconds <= self.max_seconds:
            raise ValueError(f"need 0 <= min_seconds <= max_seconds, got {self.min_seconds} and {self.max_seconds}")
        if not 0 <= self.max_fraction < 1:
            raise ValueError(f"max_fraction must be in [0, 1) (the target needs frames), got {self.max_fraction}")
        if not (0 <= self.p_speaker and 0 <= self.p_transcribed and self.p_speaker + self.p_transcribed <= 1):
            raise ValueError(f"p_speaker and p_transcribed are probabilities that sum to at most 1, got "
                             f"{self.p_speaker} and {self.p_transcribed}")


@dataclass
class LMExample:
    """One training example, before padding."""

    id: str
    speaker: str
    text: torch.Tensor  # LongTensor [N]
    prompt: torch.Tensor  # LongTensor [K, P], P may be 0
    codes: torch.Tensor  # LongTensor [K, T] target codes
    mode: str  # the prompt actually used: "prefix", "speaker" or "transcribed"
    prompt_id: str  # the utterance the prompt was cut from
    alignment: torch.Tensor | None = None  # LongTensor [T]: the text index each target frame speaks (aligned corpora)


@dataclass
class LMBatch:
    """A padded batch: the contract between data and the AR / NAR models.

    text is padded with the vocabulary's pad id; prompt and codes with 0 (a valid code: use the
    lengths or masks, never the value, to tell padding apart).
    """

    text: torch.Tensor  # LongTensor [B, N]
    text_lengths: torch.Tensor  # LongTensor [B]
    prompt: torch.Tensor  # LongTensor [B, K, P], P may be 0
    prompt_lengths: torch.Tensor  # LongTensor [B]
    codes: torch.Tensor  # LongTensor [B, K, T] target codes
    code_lengths: torch.Tensor  # LongTensor [B]
    ids: list[str]
    speakers: list[str]
    prompt_modes: list[str]  # "prefix", "speaker" or "transcribed", per item
    alignment: torch.Tensor | None = None  # LongTensor [B, T]: text index of each target frame (0 on pads)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def text_mask(self) -> torch.Tensor:
        """Bool [B, N], True on real tokens."""
        return _mask(self.text_lengths, self.text.shape[1])

    @property
    def prompt_mask(self) -> torch.Tensor:
        """Bool [B, P], True on real prompt frames."""
        return _mask(self.prompt_lengths, self.prompt.shape[2])

    @property
    def code_mask(self) -> torch.Tensor:
        """Bool [B, T], True on real target frames."""
        return _mask(self.code_lengths, self.codes.shape[2])

    def _map(self, fn) -> "LMBatch":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return LMBatch(**{k: fn(v) if isinstance(v, torch.Tensor) else v for k, v in values.items()})

    def to(self, device: str | torch.device, non_blocking: bool = False) -> "LMBatch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "LMBatch":
        """Called by DataLoader(pin_memory=True)."""
        return self._map(lambda t: t.pin_memory())


def _mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def prompt_boundary(vocab: Vocabulary) -> list[int]:
    """The ids between a prompt's transcript and the text after it: the word boundary of a
    phoneme vocabulary; none for bpe, whose pieces carry their own spaces."""
    return vocab.encode([WORD_BOUNDARY]) if vocab.kind == "phoneme" and WORD_BOUNDARY in vocab else []


def join_prompt_transcript(prompt_text: Sequence[int], text: Sequence[int], vocab: Vocabulary) -> tuple[list[int], int]:
    """[<lang> <bos> prompt ... <eos>] and [<lang> <bos> target ... <eos>] -> the text of both,
    [<lang> <bos> prompt ... | target ... <eos>], and its head: how many tokens come before the
    target's first one. The target's first frame reads token head - len(prompt_boundary(vocab))."""
    head = [*prompt_text[:-1], *prompt_boundary(vocab)]
    return head + list(text[2:]), len(head)


def collate(examples: Sequence[LMExample], pad_id: int) -> LMBatch:
    """Pad `examples` into an LMBatch (text with `pad_id`, codes and prompts with 0)."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    K = examples[0].codes.shape[0]
    for ex in examples:
        if ex.codes.shape[0] != K or ex.prompt.shape[0] != K:
            raise ValueError(f"every example needs K={K} codebooks in codes and prompt; {ex.id} has "
                             f"{ex.codes.shape[0]} and {ex.prompt.shape[0]}")
    B = len(examples)
    text_lengths = torch.tensor([ex.text.shape[0] for ex in examples])
    prompt_lengths = torch.tensor([ex.prompt.shape[1] for ex in examples])
    code_lengths = torch.tensor([ex.codes.shape[1] for ex in examples])
    text = torch.full((B, int(text_lengths.max())), pad_id, dtype=torch.long)  # [B, N]
    prompt = torch.zeros(B, K, int(prompt_lengths.max()), dtype=torch.long)  # [B, K, P]
    codes = torch.zeros(B, K, int(code_lengths.max()), dtype=torch.long)  # [B, K, T]
    aligned = [ex.alignment is not None for ex in examples]
    if any(aligned) and not all(aligned):
        raise ValueError("some examples carry an alignment and some do not; align the whole corpus")
    alignment = torch.zeros(B, codes.shape[2], dtype=torch.long) if all(aligned) else None  # [B, T]
    for b, ex in enumerate(examples):
        text[b, : ex.text.shape[0]] = ex.text
        prompt[b, :, : ex.prompt.shape[1]] = ex.prompt
        codes[b, :, : ex.codes.shape[1]] = ex.codes
        if alignment is not None:
            alignment[b, : ex.alignment.shape[0]] = ex.alignment
    return LMBatch(
        text=text,
        text_lengths=text_lengths,
        prompt=prompt,
        prompt_lengths=prompt_lengths,
        codes=codes,
        code_lengths=code_lengths,
        ids=[ex.id for ex in examples],
        speakers=[ex.speaker for ex in examples],
        prompt_modes=[ex.mode for ex in examples],
        alignment=alignment,
    )


class LMDataset(Dataset):
    """LMExamples from a TokenCorpus, prompts drawn as `prompt` says (see the module docstring).

    `n_q` keeps only the first n_q codebooks. Call `set_epoch` every epoch, as on the sampler;
    with DataLoader(persistent_workers=True) the workers would keep the old epoch, so leave
    that off (the default).
    """

    def __init__(self, corpus: TokenCorpus, prompt: PromptConfig = PromptConfig(), *, seed: int = 0,
                 n_q: int | None = None) -> None:
        if n_q is not None and not 1 <= n_q <= corpus.n_q:
            raise ValueError(f"n_q must be in [1, {corpus.n_q}] (the corpus's codebooks), got {n_q}")
        self.corpus = corpus
        self.prompt = prompt
        self.seed = seed
        self.n_q = n_q or corpus.n_q
        self.epoch = 0
        self.pad_id = corpus.vocab.pad_id
        self.frame_rate = corpus.frame_rate
        self._by_speaker: dict[str, list[int]] = {}  # speaker -> indices of their utterances
        self._place: list[int] = []  # index -> its position in its speaker's list
        for i, record in enumerate(corpus.records):
            utterances = self._by_speaker.setdefault(record.speaker, [])
            self._place.append(len(utterances))
            utterances.append(i)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.corpus)

    def lengths(self) -> list[int]:
        """Per item, an upper bound of its model sequence length: text + prompt + target (N + P + T).

        The budget `FrameBudgetBatchSampler` needs. A prefix prompt is cut from the utterance;
        a speaker prompt adds up to `max_seconds` of frames, a transcribed one also its text
        (at most as long as the speaker's longest).
        """
        frames = round(self.prompt.max_seconds * self.frame_rate) if self.prompt.mode != "prefix" else 0
        transcribed = self.prompt.mode == "transcribed" or (self.prompt.mode == "mixed" and self.prompt.p_transcribed > 0)
        records = self.corpus.records
        longest_text = {speaker: max(records[i].n_text_tokens for i in indices) for speaker, indices
                        in self._by_speaker.items()} if transcribed else dict.fromkeys(self._by_speaker, 0)
        return [
            r.n_text_tokens + r.n_frames
            + ((frames + longest_text[r.speaker]) if len(self._by_speaker[r.speaker]) > 1 else 0)
            for r in records
        ]

    def _prompt_frames(self, rng: random.Random) -> int:
        return round(rng.uniform(self.prompt.min_seconds, self.prompt.max_seconds) * self.frame_rate)

    def __getitem__(self, index: int) -> LMExample:
        rng = random.Random(f"{self.seed}:{self.epoch}:{index}")  # str seeds hash the same in every process
        item = self.corpus[index]
        codes = item.codes[: self.n_q]  # [K, T]
        T = codes.shape[1]
        same_speaker = self._by_speaker[item.speaker]
        mode = self.prompt.mode
        if mode == "mixed":
            draw = rng.random()
            mode = ("speaker" if draw < self.prompt.p_speaker
                    else "transcribed" if draw < self.prompt.p_speaker + self.prompt.p_transcribed else "prefix")
        if mode != "prefix" and len(same_speaker) == 1:
            mode = "prefix"  # nobody else to take a prompt from
        alignment = None  # [T]: text index per frame, from the durations of an aligned corpus
        if item.durations is not None:
            alignment = torch.repeat_interleave(torch.arange(len(item.durations)), item.durations)
        if mode == "prefix":
            P = min(self._prompt_frames(rng), int(self.prompt.max_fraction * T))
            return LMExample(id=item.id, speaker=item.speaker, text=item.text, prompt=codes[:, :P],
                             codes=codes[:, P:], mode="prefix", prompt_id=item.id,
                             alignment=alignment[P:] if alignment is not None else None)
        j = rng.randrange(len(same_speaker) - 1)  # any utterance of the speaker but this one
        source = self.corpus[same_speaker[j + (j >= self._place[index])]]
        source_codes = source.codes[: self.n_q]  # [K, T_source]
        if mode == "transcribed" and source_codes.shape[1] <= self.prompt.max_seconds * self.frame_rate:
            text, head = join_prompt_transcript(source.text.tolist(), item.text.tolist(), self.corpus.vocab)
            start = head - len(prompt_boundary(self.corpus.vocab))
            if alignment is not None:  # from the target's own text to the joined one
                alignment = torch.where(alignment < 2, start, alignment - 2 + head)
            return LMExample(id=item.id, speaker=item.speaker, text=torch.tensor(text), prompt=source_codes,
                             codes=codes, mode="transcribed", prompt_id=source.id, alignment=alignment)
        P = min(self._prompt_frames(rng), source_codes.shape[1])
        start = rng.randint(0, source_codes.shape[1] - P)
        return LMExample(id=item.id, speaker=item.speaker, text=item.text,
                         prompt=source_codes[:, start : start + P], codes=codes, mode="speaker",
                         prompt_id=source.id, alignment=alignment)

    def collate(self, examples: Sequence[LMExample]) -> LMBatch:
        return collate(examples, self.pad_id)


def _distributed_defaults(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    initialised = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas} and {rank}")
    return num_replicas, rank


class FrameBudgetBatchSampler(Sampler[list[int]]):
    """Duration-bucketed batches whose padded size stays under a budget; distributed and resumable.

    `lengths[i]` is item i's cost (e.g. `LMDataset.lengths()`: text + prompt + target). A batch
    of B items costs B x its longest item and holds at most `max_frames` (and at most
    `max_batch_size` items). Items sorted by length (jittered by up to `bucket_jitter` of their
    length, fresh every epoch, so batches vary between epochs) are cut into batches, and the
    batches are shuffled, all from (seed, epoch).

    With `num_replicas` processes (default: torch.distributed's world), process `rank` takes
    every num_replicas-th batch. Every process gets the same number of batches: with
    `drop_last=False` (the default) the list is padded by repeating its first batches, so every
    item is seen at least once per epoch (exactly once when the count divides evenly); with
    `drop_last=True` the remainder is dropped instead (at most num_replicas - 1 batches).

    Items longer than `max_frames` alone can never fit: they are left out and counted in
    `skipped` (a warning says how many).

    `state_dict()` records the epoch and how many batches this process has handed out;
    `load_state_dict` makes the next iteration continue with the next unseen batch. A DataLoader
    with workers fetches ahead of the training loop: pass the number of batches actually
    trained on, `state_dict(consumed=n)`.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_frames: int,
        *,
        max_batch_size: int | None = None,
        shuffle: bool = True,
        bucket_jitter: float = 0.1,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ) -> None:
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 or None, got {max_batch_size}")
        if not 0 <= bucket_jitter < 1:
            raise ValueError(f"bucket_jitter must be in [0, 1), got {bucket_jitter}")
        self.lengths = [int(n) for n in lengths]
        self.max_frames = max_frames
        self.max_batch_size = max_batch_size
        self.shuffle = shuffle
        self.bucket_jitter = bucket_jitter
        self.seed = seed
        self.num_replicas, self.rank = _distributed_defaults(num_replicas, rank)
        self.drop_last = drop_last
        self.skipped = [i for i, n in enumerate(self.lengths) if n > max_frames]
        self._usable = [i for i, n in enumerate(self.lengths) if n <= max_frames]
        if self.skipped:
            logger.warning("%d of %d items are longer than max_frames=%d on their own and are left out "
                           "(the longest is %d)", len(self.skipped), len(self.lengths), max_frames,
                           max(self.lengths))
        if not self._usable:
            shortest = min(self.lengths, default=0)
            raise ValueError(f"no item fits max_frames={max_frames} (the shortest costs {shortest}); raise max_frames")
        self.epoch = 0
        self.position = 0  # batches of this epoch already handed out by this process
        self._cache: tuple[int, list[list[int]]] | None = None

    # -- the batches --------------------------------------------------------------------------

    def _all_batches(self, epoch: int) -> list[list[int]]:
        """Every process's batches for `epoch`, in order, before sharding."""
        rng = random.Random(f"{self.seed}:{epoch}")
        if self.shuffle:
            keys = {i: self.lengths[i] * (1 + self.bucket_jitter * rng.uniform(-1, 1)) + rng.random() * 1e-3
                    for i in self._usable}
            order = sorted(self._usable, key=keys.__getitem__)
        else:
            order = sorted(self._usable, key=lambda i: (self.lengths[i], i))
        batches: list[list[int]] = []
        batch: list[int] = []
        longest = 0
        for i in order:
            longest_with = max(longest, self.lengths[i])
            full = self.max_batch_size is not None and len(batch) >= self.max_batch_size
            if batch and (full or (len(batch) + 1) * longest_with > self.max_frames):
                batches.append(batch)
                batch, longest_with = [], self.lengths[i]
            batch.append(i)
            longest = longest_with
        batches.append(batch)
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def batches(self) -> list[list[int]]:
        """This process's batches for the current epoch (the whole epoch, from its start)."""
        if self._cache is None or self._cache[0] != self.epoch:
            batches = self._all_batches(self.epoch)
            R = self.num_replicas
            if self.drop_last:
                batches = batches[: len(batches) - len(batches) % R]
                if not batches:
                    raise ValueError(f"{R} processes but fewer batches in the epoch; "
                                     "use drop_last=False or a smaller max_frames")
            else:
                pad = -len(batches) % R
                batches = batches + [batches[j % len(batches)] for j in range(pad)]
            self._cache = (self.epoch, batches[self.rank :: R])
        return self._cache[1]

    def __len__(self) -> int:
        return len(self.batches())

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches()
        if self.position >= len(batches):
            self.position = 0  # the epoch was finished: another pass over it
        for i in range(self.position, len(batches)):
            self.position = i + 1
            yield list(batches[i])

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch (unless it is the epoch already under way, e.g. after a resume)."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.position = 0

    # -- resuming -----------------------------------------------------------------------------

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """Where to continue: `consumed` batches of this epoch are done (default: those handed out)."""
        position = self.position if consumed is None else consumed
        if not 0 <= position <= len(self):
            raise ValueError(f"consumed must be in [0, {len(self)}] (the epoch's batches), got {consumed}")
        epoch = self.epoch
        if position == len(self):
            epoch, position = epoch + 1, 0  # the epoch is done: continue with the next one
        return {
            "epoch": epoch,
            "position": position,
            "seed": self.seed,
            "num_replicas": self.num_replicas,
            "max_frames": self.max_frames,
            "n_items": len(self.lengths),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "num_replicas", "max_frames", "n_items"):
            mine = len(self.lengths) if key == "n_items" else getattr(self, key)
            if key in state and state[key] != mine:
                raise ValueError(
                    f"the saved sampler state has {key}={state[key]}, this sampler {mine}: its batch positions "
                    f"mean other batches here. Resume with the same {key}, or restart the epoch with "
                    f"load_state_dict({{'epoch': {state['epoch']}, 'position': 0}})"
                )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])

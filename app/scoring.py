"""Best-of-N: score the candidates of one text chunk and keep the best.

A `Scorer` maps the candidates of one chunk to one number each, higher is better; the
candidate with the highest weighted sum over the scorers wins (the first on a tie).

- `logprob_scorer`: the AR model's own log-probability of what it wrote, per token (so long
  and short candidates compare), minus `UNFINISHED_PENALTY` for a candidate that ran to its
  length limit without writing EOS (usually babbling). Always available; needs no audio.
- `asr_scorer(asr)`: minus the character error rate of an ASR transcript of the candidate
  against the text it should say. Weight 5: 10 % CER outweighs 0.5 nats a token.
- `speaker_scorer(embed)`: cosine similarity between a speaker embedding of the candidate and
  of the prompt, for any `embed(wav, sample_rate) -> vector`, e.g. the `embed` of a meter from
  `app.meters.load_speaker` (resemblyzer or an x-vector model).

Scorers with `needs_audio` make every candidate go through the NAR and the codec; without
them only the winners do.

`scorers_by_name("asr,speaker")` builds them from names (the CLI's `--rerank`, the server's
and the demo's choice), loading the listening ones' models: the ASR ("pocketsphinx" by default,
or a Whisper directory) and the speaker encoder ("resemblyzer" by default, or an x-vector model).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

UNFINISHED_PENALTY = 10.0  # nats a token: an unfinished candidate loses to any finished one


@dataclass
class Candidate:
    """One AR sample for one chunk of text."""

    chunk: int  # which chunk of the text
    text: str  # what it should say
    seed: int
    codes1: torch.Tensor  # LongTensor [T]: codebook 1
    logprob: float  # sum over the chosen tokens (EOS included when written)
    finished: bool  # wrote EOS before its length limit
    language: str = "en-us"
    codes: torch.Tensor | None = None  # LongTensor [K, T], once the NAR has run
    wav: np.ndarray | None = None  # float32 [T], once decoded (for scorers that need audio)
    sample_rate: int = 0
    prompt_wav: np.ndarray | None = None  # the voice prompt, decoded by the codec (for speaker scorers)
    alignment: torch.Tensor | None = None  # LongTensor [T]: the text index each frame spoke (duration-guided AR)

    @property
    def n_frames(self) -> int:
        return int(self.codes1.shape[0])

    @property
    def mean_logprob(self) -> float:
        """Log-probability per token: frames, plus EOS when written."""
        return self.logprob / max(1, self.n_frames + int(self.finished))


@dataclass(frozen=True)
class Scorer:
    name: str
    score: Callable[[Sequence[Candidate]], Sequence[float]]  # candidates of one chunk -> one score each
    weight: float = 1.0
    needs_audio: bool = False


def logprob_scorer(weight: float = 1.0) -> Scorer:
    def score(candidates: Sequence[Candidate]) -> list[float]:
        return [c.mean_logprob - (0.0 if c.finished else UNFINISHED_PENALTY) for c in candidates]

    return Scorer("logprob", score, weight)


def asr_scorer(asr, weight: float = 5.0) -> Scorer:
    """`asr` has `transcribe_batch(wavs, sample_rate, language) -> list[str]` (app.asr.WhisperASR), or
    `transcribe(wav, sample_rate) -> str` (the meters of app.meters, e.g. pocketsphinx)."""

    def score(candidates: Sequence[Candidate]) -> list[float]:
        rate = candidates[0].sample_rate
        if hasattr(asr, "transcribe_batch"):
            heard = asr.transcribe_batch([c.wav for c in candidates], rate, candidates[0].language)
        else:
            heard = [asr.transcribe(c.wav, rate) for c in candidates]
        return [-character_error_rate(c.text, text) for c, text in zip(candidates, heard)]

    return Scorer("asr", score, weight, needs_audio=True)


def speaker_scorer(embed: Callable[[np.ndarray, int], np.ndarray], weight: float = 5.0) -> Scorer:
    """Cosine similarity of `embed(candidate)` to `embed(prompt)`."""

    def score(candidates: Sequence[Candidate]) -> list[float]:
        reference = unit(embed(candidates[0].prompt_wav, candidates[0].sample_rate))
        return [float(unit(embed(c.wav, c.sample_rate)) @ reference) for c in candidates]

    return Scorer("speaker", score, weight, needs_audio=True)


SCORER_NAMES = ("logprob", "asr", "speaker")


def scorer_names(names: str | Sequence[str]) -> list[str]:
    """`"asr,speaker"` (or a list) -> ["asr", "speaker"]; ValueError unless each is one of SCORER_NAMES, once."""
    listed = [n.strip() for n in names.split(",")] if isinstance(names, str) else [str(n).strip() for n in names]
    listed = [n for n in listed if n]
    unknown = [n for n in listed if n not in SCORER_NAMES]
    if unknown or not listed or len(set(listed)) != len(listed):
        raise ValueError(f"rerank with one or more of {', '.join(SCORER_NAMES)}, each once (e.g. 'asr,speaker'); "
                         f"got {names!r}")
    return listed


def scorers_by_name(names: str | Sequence[str], *, asr: Any = "pocketsphinx", speaker: Any = "resemblyzer",
                    language: str = "en-us", device: str = "cpu") -> list[Scorer]:
    """`"asr,speaker"` (or a list of names from SCORER_NAMES) -> their scorers, in that order.

    asr / speaker: a loaded meter, or its spec for `app.meters.load_asr` / `load_speaker`; only the
    named ones are loaded. Raises ValueError for an unknown or repeated name, and
    app.meters.MeterUnavailable when a model cannot be loaded (it says what to install).
    """
    listed = scorer_names(names)
    from app.meters import load_asr, load_speaker

    scorers = []
    for name in listed:
        if name == "logprob":
            scorers.append(logprob_scorer())
        elif name == "asr":
            scorers.append(asr_scorer(load_asr(asr, language, device) if isinstance(asr, str) else asr))
        else:
            meter = load_speaker(speaker, device) if isinstance(speaker, str) else speaker
            scorers.append(speaker_scorer(meter.embed))
    return scorers


def unit(vector) -> np.ndarray:
    """The vector scaled to length 1, as float64 [D]."""
    vector = np.asarray(vector, dtype=np.float64).reshape(-1)
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def pick_best(candidates: Sequence[Candidate], scorers: Sequence[Scorer]) -> tuple[int, list[dict[str, float]]]:
    """The index of the winning candidate, and every candidate's scores (with their weighted "total")."""
    if not candidates:
        raise ValueError("pick_best needs at least one candidate")
    table: list[dict[str, float]] = [{} for _ in candidates]
    for scorer in scorers:
        values = list(scorer.score(candidates))
        if len(values) != len(candidates):
            raise ValueError(f"scorer {scorer.name!r} returned {len(values)} scores for {len(candidates)} candidates")
        for row, value in zip(table, values):
            row[scorer.name] = float(value)
    for row in table:
        row["total"] = sum(scorer.weight * row[scorer.name] for scorer in scorers)
    best = max(range(len(candidates)), key=lambda i: (table[i]["total"], -i))
    return best, table


def normalize_transcript(text: str) -> str:
    """Lower case, letters, digits and single spaces only: what a CER compares."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch if ch.isalnum() or ch.isspace() else " " for ch in text)
    return re.sub(r"\s+", " ", text).strip()


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """Levenshtein distance (substitutions + deletions + insertions) between two sequences."""
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        current = [i]
        for j, h in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def character_error_rate(reference: str, hypothesis: str) -> float:
    """Levenshtein distance between the normalized texts / the reference's length (an empty reference: 0 or 1)."""
    ref, hyp = normalize_transcript(reference), normalize_transcript(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(ref, hyp) / len(ref)

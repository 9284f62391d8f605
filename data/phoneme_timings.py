"""True phoneme timings of the built-in corpus, and how far an alignment's boundaries are from them.

eSpeak NG says where each phoneme it speaks starts (data/espeak.py), so the synthetic corpus
(data/synthetic.py) knows the timing of every phoneme of its eSpeak utterances; flite's
utterances, and real corpora, have none. The corpus directory keeps them in
`phoneme_timings.jsonl`, one line per eSpeak utterance, in the order of the build:

    {"id": "spk000_00003", "text": "The rain was mild.", "phonemes": [["ð", 0.1125, 0.15], ["ə", 0.15, 0.21], ...]}

- each phoneme is [name, start, end], start and end in seconds of the audio file as written
  (after the resampling, the vocal-tract warp and the trim of silence), in order, end > start;
- a name is IPA as eSpeak NG writes it for the speaker's own accent, stress mark included
  ("ˈoʊ" for a stressed oʊ; a Scottish voice says "ˈʌɹ" where the text front-end's en-us
  says "ˈɜː"); `PAUSE` ("_") is a pause;
- the phonemes tile the audio from the first one's start to the end of the file: each ends
  where the next starts.

`boundary_errors` compares an alignment (frames per text token, as recipes/align.py writes
them) with these timings. Echo's text tokens (data/phonemes.py) and eSpeak's phoneme names
differ: Echo splits the stress marks off as tokens of their own, adds word boundaries "|",
punctuation and special tokens ("<bos>"), and always phonemizes in en-us. So the two phoneme
sequences are first matched: pauses, stress marks, boundaries, punctuation and special tokens
are set aside, every name is reduced to its base (no stress, length mark or diacritic: "ˈɜː"
-> "ɜ"), and an edit-distance alignment pairs equal bases at no cost and two vowels or two
consonants at a cost of 1 (a vowel is never paired with a consonant; a phoneme left out costs 1).
For each pair, the boundary is where the phoneme starts: eSpeak's start times the frame rate,
and the aligner's first frame of the token, or of the stress marks and word boundaries right
before it (they make no sound of their own but take at least one frame each). The offset is
the aligner's boundary minus eSpeak's, in frames (> 0: the aligner is late), the error its
absolute value.

    timings = read_timings("runs/quickstart/corpus/phoneme_timings.jsonl")      # {id: UtteranceTimings}
    match = boundary_errors(vocab.decode(ids), durations, timings[utt_id].phonemes, frame_rate=50.0)
    summarize_boundary_errors([match, ...])      # {"boundary_error_frames": ..., "boundaries_matched": ...}
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from data.phonemes import STRESS_MARKS, WORD_BOUNDARY, is_phone_token
from data.pretrained import write_file

TIMINGS_FILE = "phoneme_timings.jsonl"
PAUSE = "_"
_LENGTH_MARKS = ("ː", "ˑ")
_VOWELS = set("aeiouyæɐɑɒɔəɘɚɛɜɝɞɤɨɪɯɵɶʉʊʌʏøœᵻ")
_NOT_PAIRED = 10**6  # the cost of pairing a vowel with a consonant: more than leaving both out


@dataclass(frozen=True)
class PhonemeTiming:
    phoneme: str  # IPA as eSpeak NG names it, with its stress mark; PAUSE for a pause
    start: float  # seconds in the written audio
    end: float


@dataclass(frozen=True)
class UtteranceTimings:
    id: str
    text: str  # what was spoken: a token record with another text is not this utterance
    phonemes: tuple[PhonemeTiming, ...]


def write_timings(path: str | Path, utterances: Iterable[UtteranceTimings]) -> Path:
    """Write `utterances` as a timings file (atomically: a crash leaves the old file or none)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for utt in utterances:
                phonemes = [[p.phoneme, round(p.start, 5), round(p.end, 5)] for p in utt.phonemes]
                f.write(json.dumps({"id": utt.id, "text": utt.text, "phonemes": phonemes}, ensure_ascii=False) + "\n")

    return write_file(path, write)


def read_timings(path: str | Path) -> dict[str, UtteranceTimings]:
    """Read a timings file into {utterance id: UtteranceTimings}; a malformed line is a ValueError that names it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no phoneme timings at {path}; the built-in corpus writes {TIMINGS_FILE} into its directory "
            "(`python recipes/prepare_data.py synthetic ...`; run it again on an older corpus to add them)"
        )
    timings: dict[str, UtteranceTimings] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or not {"id", "text", "phonemes"} <= record.keys():
                raise ValueError(f'{where}: every line needs "id", "text" and "phonemes"')
            utt = UtteranceTimings(record["id"], record["text"], _phonemes(record["phonemes"], where))
            if utt.id in timings:
                raise ValueError(f"{where}: utterance {utt.id!r} appears twice")
            timings[utt.id] = utt
    return timings


def _phonemes(entries: object, where: str) -> tuple[PhonemeTiming, ...]:
    if not isinstance(entries, list):
        raise ValueError(f'{where}: "phonemes" must be a list of [phoneme, start, end]')
    phonemes, previous_end = [], 0.0
    for entry in entries:
        if (not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[0], str)
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in entry[1:])):
            raise ValueError(f"{where}: each phoneme must be [name, start seconds, end seconds], got {entry!r}")
        name, start, end = entry[0], float(entry[1]), float(entry[2])
        if not previous_end - 1e-6 <= start < end:
            raise ValueError(f"{where}: {entry!r} is not in order (times must increase, each end after its start)")
        phonemes.append(PhonemeTiming(name, start, end))
        previous_end = end
    return tuple(phonemes)


# -- matching Echo's tokens with eSpeak's phonemes ------------------------------------------------


def base_phoneme(name: str) -> str:
    """The phoneme without stress, length marks or diacritics: "ˈɜː" -> "ɜ", "n̩" -> "n"."""
    decomposed = unicodedata.normalize("NFD", name)
    kept = (c for c in decomposed if c not in STRESS_MARKS and c not in _LENGTH_MARKS and not unicodedata.combining(c))
    return unicodedata.normalize("NFC", "".join(kept))


def _is_vowel(base: str) -> bool:
    return any(c in _VOWELS for c in base)


def match_phonemes(first: Sequence[str], second: Sequence[str]) -> list[tuple[int, int]]:
    """Pairs (i, j) of positions in two phoneme sequences, in order, from the cheapest edit-distance alignment:
    equal bases cost 0, two vowels or two consonants 1, a phoneme left unpaired 1 (see the module docstring)."""
    a, b = [base_phoneme(s) for s in first], [base_phoneme(s) for s in second]
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return []
    vowel_a, vowel_b = np.array([_is_vowel(s) for s in a]), np.array([_is_vowel(s) for s in b])
    equal = np.array(a, dtype=object)[:, None] == np.array(b, dtype=object)[None, :]
    substitute = np.where(equal, 0, np.where(vowel_a[:, None] == vowel_b[None, :], 1, _NOT_PAIRED))  # [n, m]
    columns = np.arange(m + 1)
    cost = np.zeros((n + 1, m + 1), dtype=np.int64)  # cost[i, j]: the best alignment of a[:i] with b[:j]
    cost[0] = columns
    for i in range(1, n + 1):
        best = np.empty(m + 1, dtype=np.int64)
        best[0] = i
        best[1:] = np.minimum(cost[i - 1, :-1] + substitute[i - 1], cost[i - 1, 1:] + 1)
        # leaving b[j - 1] out: cost[i, j] = min over k <= j of best[k] + (j - k)
        cost[i] = np.minimum.accumulate(best - columns) + columns
    pairs, i, j = [], n, m
    while i > 0 and j > 0:
        if substitute[i - 1, j - 1] < _NOT_PAIRED and cost[i, j] == cost[i - 1, j - 1] + substitute[i - 1, j - 1]:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif cost[i, j] == cost[i - 1, j] + 1:
            i -= 1
        else:
            j -= 1
    return pairs[::-1]


@dataclass(frozen=True)
class BoundaryMatch:
    """One utterance's comparison: the errors of the boundaries that could be matched, and how many there were."""

    offsets: np.ndarray  # float [M]: the aligner's boundary - eSpeak's, in frames, per matched phoneme
    n_phonemes: int  # eSpeak's phonemes (pauses left out): the boundaries there were to match

    @property
    def errors(self) -> np.ndarray:
        return np.abs(self.offsets)


def boundary_errors(
    symbols: Sequence[str], durations: Sequence[int], phonemes: Sequence[PhonemeTiming], frame_rate: float
) -> BoundaryMatch:
    """Compare an alignment with the true timings (see the module docstring).

    `symbols` are an utterance's text tokens as the vocabulary names them (special tokens
    included), `durations` the frames the aligner gave each, `phonemes` eSpeak's timings of
    the same utterance, `frame_rate` the codec's frames per second.
    """
    if len(symbols) != len(durations):
        raise ValueError(f"{len(symbols)} text tokens but {len(durations)} durations; they must match one to one")
    if frame_rate <= 0:
        raise ValueError(f"frame_rate must be positive, got {frame_rate}")
    starts = np.concatenate([[0], np.cumsum(np.asarray(durations, dtype=np.int64))])[:-1]  # first frame per token
    echo, echo_starts, run_start = [], [], None
    for k, symbol in enumerate(symbols):
        if symbol in STRESS_MARKS or symbol == WORD_BOUNDARY:
            run_start = starts[k] if run_start is None else run_start
        elif is_phone_token(symbol):
            echo.append(symbol)
            echo_starts.append(starts[k] if run_start is None else run_start)
            run_start = None
        else:
            run_start = None
    spoken = [p for p in phonemes if p.phoneme != PAUSE]
    pairs = match_phonemes(echo, [p.phoneme for p in spoken])
    offsets = np.array([echo_starts[i] - spoken[j].start * frame_rate for i, j in pairs], dtype=np.float64)
    return BoundaryMatch(offsets, len(spoken))


def summarize_boundary_errors(matches: Sequence[BoundaryMatch]) -> dict[str, float]:
    """The figures recipes/align.py reports: mean and median error in frames over every matched boundary,
    the mean offset (> 0: the aligner is late), the share of eSpeak's boundaries matched, and the number
    of utterances compared."""
    summary: dict[str, float] = {"utterances_with_timings": len(matches)}
    total = sum(m.n_phonemes for m in matches)
    offsets = np.concatenate([m.offsets for m in matches]) if matches else np.zeros(0)
    if offsets.size:
        summary["boundary_error_frames"] = float(np.abs(offsets).mean())
        summary["boundary_error_frames_median"] = float(np.median(np.abs(offsets)))
        summary["boundary_offset_frames"] = float(offsets.mean())
        summary["boundaries_matched"] = offsets.size / total
    return summary

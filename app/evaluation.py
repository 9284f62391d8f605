"""Zero-shot evaluation: clone held-out voices, and measure the clones against the voices' own recordings.

    items = choose_items(read_manifest("test.jsonl"), families=read_voice_families("speakers.json"))
    report = evaluate_tts(tts, items, utterances, asr=load_asr("pocketsphinx"), speaker=load_speaker("resemblyzer"))
    print(report.to_markdown())

For each test utterance (the *target*), another utterance of the same speaker is the voice
prompt (chosen deterministically), and the target's sentence is synthesized in that voice with
and/or without the prompt's transcript. Every item is heard in up to six renderings (systems):

- `ground_truth`: the target's own recording, the reference every number is read against;
- `codec`: that recording through the model's codec with the LM's codebooks, the LM's ceiling;
- `codec_codebook_1`: the recording through the codec with codebook 1 alone, what the AR model
  writes; between it and `codec` lies what the NAR model's codebooks can add at most;
- `nar_on_recording`: the recording's own codebook 1, completed by the NAR model and decoded as
  a synthesis is (`TTS.complete`): the synthesis with a perfect AR model, so the errors
  between it and the synthesis are the AR model's, the rest the NAR model's and the codec's;
- `synthesis_with_text` / `synthesis_without_text`: the clone, with or without prompt_text.

Each rendering is measured the same way: word and character error rates of an ASR transcript
against the sentence (app/meters.py); cosine similarity of its speaker embedding to the
prompt's, to the speaker's *voice* (the mean embedding of up to `n_references` of the speaker's
other recordings, neither the target nor the prompt) and to every other test speaker's voice
(averaged). `evaluate_item` does this for one item and returns its record (`ItemResult`);
`summarize_items` turns the records into summaries per voice family (flite and eSpeak voices
of the built-in corpus, from speakers.json, since an offline ASR hears them very differently)
and for all items, each WER with its ratio to the ground truth's and that ratio's bootstrap
interval. `Targets` holds the thresholds the summaries are judged against. The model's codec is
also scored on the ground truth (codec.evaluation.evaluate_codec).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from app.figures import ar_attention
from app.meters import (ASRMeter, ErrorCount, SpeakerMeter, char_errors, cosine_similarity, transcribe_all,
                         word_errors)
from app.scoring import Scorer, unit
from app.prompt import MAX_SECONDS as MAX_PROMPT_SECONDS
from app.prompt import PromptError
from app.tts import DEFAULT_SAMPLING, TTS, Synthesis
from app.voice import Voice
from lm.reading import attention_stats
from lm.sampling import SamplingConfig
from codec.evaluation import CodecReport, evaluate_codec, finite_or_none, reconstruction_label
from data.audio import AudioError, load_audio, resample, write_audio
from data.manifest import Utterance

logger = logging.getLogger(__name__)

PROMPT_MODES = ("with", "without")
GROUND_TRUTH = "ground_truth"
CODEC = "codec"
CODEC_1 = "codec_codebook_1"
NAR_ON_RECORDING = "nar_on_recording"
MIN_PROMPT_SECONDS = 3.0  # preferred prompt length: VALL-E's 3 s; shorter ones are used when a speaker has no other
N_REFERENCES = 5  # recordings averaged into a speaker's voice embedding
SYNTHESIS_BATCH = 8  # items synthesized together (TTS.generate_batch)
ALL = "all"
UNKNOWN_FAMILY = "unknown"
SYSTEM_LABELS = {
    GROUND_TRUTH: "ground truth",
    CODEC: "codec resynthesis",
    CODEC_1: "codec, codebook 1 only",
    NAR_ON_RECORDING: "recording's codebook 1 + NAR",
    "synthesis_with_text": "synthesis, with prompt text",
    "synthesis_without_text": "synthesis, without prompt text",
}


def synthesis_system(mode: str) -> str:
    """The system name of a synthesis mode: "with" -> "synthesis_with_text"."""
    if mode not in PROMPT_MODES:
        raise ValueError(f"prompt-text mode must be one of {PROMPT_MODES}, got {mode!r}")
    return f"synthesis_{mode}_text"


# -- the quality targets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Targets:
    """What a model should reach on held-out voices: every threshold a report checks or prints.

    The figures are ratios and similarities, never absolute error rates, because the offline
    meters are far from human (app/meters.py): pocketsphinx misreads 20-50 % of the words of a
    flite voice's own recording, and resemblyzer scores even different voices 0.5-0.8. The
    thresholds are the project's, as the README states them (Evaluation, Figures):

    - `wer_ratio`: a synthesis' WER at most this many times the ground truth's (the same
      sentences read by the same voices, heard by the same ASR): 1.5 for a model the project
      ships (the bundled model, the long recipe), 2.5 for the quickstart (27 minutes on 2 cores),
      which keeps the other thresholds.
    - `sim_own`: a synthesis' cosine similarity to the speaker's own voice (their other
      recordings) at least this much: 0.75. It must also be clearly above the similarity to the
      other voices, which has no number: reports print own - others beside the ground truth's.
    - `codec_wer_ratio`, `codec_sim_own`: the same for the codec's resynthesis of the ground
      truth, the ceiling of every synthesis, hence stricter: 1.2 and 0.85.
    - `wer_family`: the voices WER is judged on when an evaluation has them, else on all: flite's,
      which pocketsphinx reads (on eSpeak's voices it misses 76-90 % of the words of the
      recordings themselves). Similarity is judged on all voices.
    """

    name: str  # how the command line asks for these (recipes/evaluate.py --targets)
    label: str  # what they are for, in reports
    wer_ratio: float
    sim_own: float
    codec_wer_ratio: float
    codec_sim_own: float
    wer_family: str = "flite"

    def __post_init__(self) -> None:
        for name in ("wer_ratio", "codec_wer_ratio"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Targets.{name} is a ratio to the ground truth's WER and must be positive, "
                                 f"got {getattr(self, name)}")
        for name in ("sim_own", "codec_sim_own"):
            if not -1 <= getattr(self, name) <= 1:
                raise ValueError(f"Targets.{name} is a cosine similarity and must lie in [-1, 1], "
                                 f"got {getattr(self, name)}")

    def threshold(self, system: str) -> tuple[float, float]:
        """(WER ratio at most, similarity to own voice at least) for a judged system: a synthesis or the codec."""
        return (self.codec_wer_ratio, self.codec_sim_own) if system == CODEC else (self.wer_ratio, self.sim_own)

    def judged_family(self, summary: Mapping[str, Any]) -> str:
        """The group of `summary` that WER is judged on: `wer_family` when present, else ALL."""
        return self.wer_family if self.wer_family in summary else ALL

    def check(self, summary: Mapping[str, Mapping[str, SystemSummary]]) -> dict[str, dict[str, Any]]:
        """Each synthesis system in `summary`, then the codec resynthesis -> its figures against the targets:
        WER ratio (on `judged_family`) with its interval, similarity to own voice and own - others (on all voices),
        each threshold and whether it is met (None where a figure is missing)."""
        family = self.judged_family(summary)
        judged, everything = summary.get(family, {}), summary.get(ALL, {})
        truth = everything.get(GROUND_TRUTH)
        result = {}
        for system in [synthesis_system(mode) for mode in PROMPT_MODES] + [CODEC]:
            if system not in everything:
                continue
            max_ratio, min_similarity = self.threshold(system)
            row, row_all = judged.get(system), everything[system]
            ratio = row.wer_ratio if row is not None else None
            result[system] = {
                "wer_family": family,
                "wer_ratio": ratio,
                "wer_ratio_interval": row.wer_ratio_interval if row is not None else None,
                "wer_ratio_target": max_ratio,
                "wer_ratio_met": None if ratio is None else ratio <= max_ratio,
                "sim_own": row_all.sim_own,
                "sim_own_target": min_similarity,
                "sim_own_met": None if row_all.sim_own is None else row_all.sim_own >= min_similarity,
                "separation": row_all.separation,
                "ground_truth_separation": truth.separation if truth is not None else None,
            }
        return result


RELEASE_TARGETS = Targets("release", "a model the project ships (the bundled model, the long recipe)", wer_ratio=1.5,
                          sim_own=0.75, codec_wer_ratio=1.2, codec_sim_own=0.85)
QUICKSTART_TARGETS = replace(RELEASE_TARGETS, name="quickstart", label="the quickstart", wer_ratio=2.5)
TARGETS = {targets.name: targets for targets in (RELEASE_TARGETS, QUICKSTART_TARGETS)}


# -- choosing what to synthesize --------------------------------------------------------------------


@dataclass(frozen=True)
class EvalItem:
    target: Utterance  # the sentence to synthesize, and its ground-truth recording
    prompt: Utterance  # another recording of the same speaker: the voice prompt
    family: str  # the voice family (e.g. "flite", "espeak"), or "unknown"
    seed: int  # the synthesis seed of this item


def read_voice_families(path: str | Path) -> dict[str, str]:
    """speaker id -> voice family, from the built-in corpus' speakers.json (its "engine": flite or espeak)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    speakers = data.get("speakers") if isinstance(data, dict) else None
    if not isinstance(speakers, list):
        raise ValueError(f"{path} has no 'speakers' list; expected the speakers.json of a synthetic corpus")
    return {str(s["id"]): str(s.get("engine") or UNKNOWN_FAMILY) for s in speakers}


def _rank(*keys: object) -> int:
    """A stable pseudo-random rank (independent of Python's hash seed)."""
    return int.from_bytes(hashlib.blake2b(":".join(map(str, keys)).encode(), digest_size=8).digest(), "little")


def choose_items(utterances: Sequence[Utterance], families: Mapping[str, str] | None = None,
                 max_items: int | None = None, seed: int = 0,
                 min_prompt_seconds: float = MIN_PROMPT_SECONDS) -> list[EvalItem]:
    """One item per utterance of every speaker that has another utterance to prompt with.

    Items go round-robin over the speakers (each speaker's first utterance, then each one's
    second, ...), so that the first `max_items` cover as many voices as possible. The prompt is
    the speaker's other utterance ranked first by a hash of (seed, target, candidate) among those
    of `min_prompt_seconds` to 10 s, or else the longest; the same inputs give the same items.
    """
    by_speaker: dict[str, list[Utterance]] = defaultdict(list)
    for utterance in utterances:
        by_speaker[utterance.speaker].append(utterance)
    queues = {s: sorted(us, key=lambda u: u.id) for s, us in sorted(by_speaker.items()) if len(us) >= 2}
    order = [queue[k] for k in range(max((len(q) for q in queues.values()), default=0))
             for queue in queues.values() if k < len(queue)]
    if max_items is not None:
        order = order[:max_items]
    items = []
    for target in order:
        others = [u for u in queues[target.speaker] if u.id != target.id]
        others.sort(key=lambda u: _rank(seed, target.id, u.id))
        fitting = [u for u in others if min_prompt_seconds <= u.duration <= MAX_PROMPT_SECONDS]
        prompt = fitting[0] if fitting else max(others, key=lambda u: (u.duration, u.id))
        family = (families or {}).get(target.speaker, UNKNOWN_FAMILY)
        items.append(EvalItem(target, prompt, family, _rank("synthesis", seed, target.id) % 2**31))
    return items


# -- speaker voices ------------------------------------------------------------------------------------


class VoiceBank:
    """Speaker embeddings of recordings, computed once, and each speaker's voice: their normalized mean."""

    def __init__(self, meter: SpeakerMeter, utterances: Sequence[Utterance], n_references: int = N_REFERENCES):
        if n_references < 1:
            raise ValueError(f"n_references must be at least 1, got {n_references}")
        self.meter = meter
        self.n_references = n_references
        self.by_speaker: dict[str, list[Utterance]] = defaultdict(list)
        for utterance in sorted(utterances, key=lambda u: u.id):
            self.by_speaker[utterance.speaker].append(utterance)
        self._embeddings: dict[str, np.ndarray | None] = {}

    @property
    def speakers(self) -> list[str]:
        return sorted(self.by_speaker)

    def embedding(self, utterance: Utterance) -> np.ndarray | None:
        """The embedding of one recording (None when it cannot be read or has no voice)."""
        if utterance.id not in self._embeddings:
            try:
                wav, sr = load_audio(utterance.audio_path)
                self._embeddings[utterance.id] = self.meter.embed(wav[0], sr)
            except (AudioError, ValueError) as error:
                logger.warning("no speaker embedding for %s: %s", utterance.id, error)
                self._embeddings[utterance.id] = None
        return self._embeddings[utterance.id]

    def voice(self, speaker: str, exclude: Sequence[str] = ()) -> np.ndarray | None:
        """The mean embedding of the speaker's first `n_references` recordings not in `exclude` (ids)."""
        embeddings = []
        for utterance in self.by_speaker.get(speaker, []):
            if len(embeddings) == self.n_references:
                break
            if utterance.id not in exclude and (embedding := self.embedding(utterance)) is not None:
                embeddings.append(embedding)
        return unit(np.mean(embeddings, axis=0)) if embeddings else None


# -- measuring ------------------------------------------------------------------------------------------


@dataclass
class Rendering:
    """One rendering of one item, as the meters heard it. Missing measurements are None."""

    duration: float  # seconds
    transcript: str | None = None
    word_errors: int | None = None
    words: int | None = None
    char_errors: int | None = None
    chars: int | None = None
    sim_prompt: float | None = None  # cosine similarity to the prompt recording
    sim_own: float | None = None  # to the speaker's voice (their other recordings)
    sim_others: float | None = None  # to the other test speakers' voices, averaged

    @property
    def wer(self) -> float | None:
        return None if self.word_errors is None else ErrorCount(self.word_errors, self.words or 0).rate


@dataclass
class ItemResult:
    id: str
    speaker: str
    family: str
    text: str
    prompt_id: str
    prompt_text: str
    prompt_duration: float
    seed: int
    renderings: dict[str, Rendering] = field(default_factory=dict)  # system -> how it was heard
    errors: dict[str, str] = field(default_factory=dict)  # system -> why it has no rendering
    wavs: dict[str, str] = field(default_factory=dict)  # system -> written file, relative to the wav dir
    attention: dict[str, dict[str, float]] = field(default_factory=dict)  # synthesis -> `synthesis_attention`


class Meters:
    """Measures renderings of items with whichever meters are available (None: that measurement is left out)."""

    def __init__(self, asr: ASRMeter | None, bank: VoiceBank | None):
        self.asr, self.bank = asr, bank

    def measure_all(self, renderings: Mapping[str, tuple[np.ndarray | torch.Tensor, int]],
                    item: EvalItem) -> dict[str, Rendering]:
        """system -> (waveform, sample rate) of `item` -> system -> how it was heard. The ASR hears them
        together (`transcribe_all`: pocketsphinx in parallel processes)."""
        waves = {system: (torch.as_tensor(wav, dtype=torch.float32).reshape(-1), rate)
                 for system, (wav, rate) in renderings.items()}
        transcripts: dict[str, str] = {}  # an empty rendering has none: `measure` hears nothing in it
        if self.asr is not None:
            heard = [system for system, (wav, _) in waves.items() if wav.shape[0]]
            transcripts = dict(zip(heard, transcribe_all(self.asr, [waves[system] for system in heard])))
        return {system: self.measure(wav, rate, item, transcripts.get(system))
                for system, (wav, rate) in waves.items()}

    def measure(self, wav: np.ndarray | torch.Tensor, sample_rate: int, item: EvalItem,
                transcript: str | None = None) -> Rendering:
        """One rendering of `item`; `transcript`: what the ASR heard in it, if it has already listened."""
        wav = torch.as_tensor(wav, dtype=torch.float32).reshape(-1)  # [T]
        rendering = Rendering(duration=wav.shape[0] / sample_rate)
        language = item.target.language
        if self.asr is not None:
            if transcript is None:
                transcript = self.asr.transcribe(wav, sample_rate) if wav.shape[0] else ""
            rendering.transcript = transcript
            words = word_errors(item.target.text, rendering.transcript, language)
            chars = char_errors(item.target.text, rendering.transcript, language)
            rendering.word_errors, rendering.words = words.errors, words.length
            rendering.char_errors, rendering.chars = chars.errors, chars.length
        if self.bank is not None:
            try:
                embedding = self.bank.meter.embed(wav, sample_rate)
            except ValueError as error:  # empty or silent
                logger.warning("no speaker embedding for a rendering of %s: %s", item.target.id, error)
                return rendering
            prompt = self.bank.embedding(item.prompt)
            own = self.bank.voice(item.target.speaker, exclude=(item.target.id, item.prompt.id))
            others = [self.bank.voice(s) for s in self.bank.speakers if s != item.target.speaker]
            rendering.sim_prompt = cosine_similarity(embedding, prompt) if prompt is not None else None
            rendering.sim_own = cosine_similarity(embedding, own) if own is not None else None
            rendering.sim_others = _mean([cosine_similarity(embedding, v) for v in others if v is not None])
        return rendering


# -- one item ----------------------------------------------------------------------------------------------


@dataclass
class ItemEvaluation:
    result: ItemResult  # the record that goes into the report
    # "prompt" and each rendered system -> (mono waveform [T], its sample rate), for figures
    waves: dict[str, tuple[torch.Tensor, int]] = field(default_factory=dict, repr=False)


def evaluate_item(tts: TTS, item: EvalItem, syntheses: Mapping[str, Synthesis | str],
                  resyntheses: Mapping[str, torch.Tensor], meters: Meters, prompt_mode: str = PROMPT_MODES[0],
                  wav_dir: Path | None = None) -> ItemEvaluation:
    """Every rendering of one item, heard by `meters`: the ground truth, its codec `resyntheses`, the NAR model
    on the recording's codebook 1 (in `prompt_mode`), and the `syntheses`, each written to `wav_dir` as
    `<id>.<system>.wav` with the AR's attention while it wrote them.

    syntheses: system -> the item's Synthesis, or why there is none. They are made beforehand
        (`_synthesize_items`) because many items are synthesized in one batch.
    resyntheses: CODEC / CODEC_1 -> the recording through the codec, mono [T] at `tts.sample_rate`
        (`evaluate_codec` makes them while it scores the codec).
    A recording that cannot be read is the item's only error; a rendering that fails is left out and
    its error recorded.
    """
    sr = tts.sample_rate
    result = ItemResult(item.target.id, item.target.speaker, item.family, item.target.text, item.prompt.id,
                        item.prompt.text, item.prompt.duration, item.seed)
    try:
        truth, truth_sr = load_audio(item.target.audio_path)  # [1, T]
        prompt, prompt_sr = load_audio(item.prompt.audio_path)
    except AudioError as error:
        result.errors[GROUND_TRUTH] = str(error)
        return ItemEvaluation(result)
    renderings = {GROUND_TRUTH: (truth[0], truth_sr), **{system: (wav, sr) for system, wav in resyntheses.items()}}
    try:
        completed = _nar_on_recording(tts, item, truth, truth_sr, prompt, prompt_sr, prompt_mode)
        renderings[NAR_ON_RECORDING] = (torch.from_numpy(completed), sr)
    except (PromptError, ValueError) as error:
        result.errors[NAR_ON_RECORDING] = str(error)
    for system, synthesis in syntheses.items():
        if not isinstance(synthesis, Synthesis):
            result.errors[system] = synthesis
            continue
        renderings[system] = (torch.from_numpy(synthesis.wav), synthesis.sample_rate)
        result.attention[system] = synthesis_attention(tts, synthesis)
        if wav_dir is not None:
            name = f"{item.target.id}.{system}.wav"
            write_audio(wav_dir / name, synthesis.wav, synthesis.sample_rate)
            result.wavs[system] = name
    result.renderings.update(meters.measure_all(renderings, item))
    return ItemEvaluation(result, {"prompt": (prompt[0], prompt_sr), **renderings})


def synthesis_attention(tts: TTS, synthesis: Synthesis) -> dict[str, float]:
    """Does the AR read the sentence as it writes it? Its attention onto the text while it wrote
    the synthesis's first segment, in its most focused layer (`app.figures.ar_attention`):
    focus_rate and monotonicity, and for a duration-guided AR `alignment_error`, the mean distance
    in tokens between the most attended token and the one its pointer said the frame speaks."""
    weights, _, _ = ar_attention(tts, synthesis)  # [T, N]
    pointer = synthesis.segments[0].chosen.alignment  # [T] or None
    T = weights.shape[0]
    return attention_stats(torch.from_numpy(weights)[None], torch.tensor([T]),
                           None if pointer is None else pointer[None].long())


def _nar_on_recording(tts: TTS, item: EvalItem, truth: torch.Tensor, truth_sr: int, prompt: torch.Tensor,
                      prompt_sr: int, mode: str) -> np.ndarray:
    """The target recording's codebook 1, completed by the NAR model in the item's prompt voice."""
    voice = tts.prepare_voice((prompt[0], prompt_sr), item.prompt.text if mode == "with" else None,
                              item.target.language)
    wav = resample(truth, truth_sr, tts.sample_rate).to(tts.device)  # [1, T]
    with torch.inference_mode():
        codes1 = tts.codec.encode(wav[None])[0, 0]  # [F]
    return tts.complete(item.target.text, codes1, voice, item.target.language)


# -- the summary ---------------------------------------------------------------------------------------


@dataclass
class SystemSummary:
    """One system over a group of items: corpus-level error rates, mean similarities."""

    items: int
    wer: float | None
    cer: float | None
    sim_prompt: float | None
    sim_own: float | None
    sim_others: float | None
    duration: float  # mean seconds
    wer_ratio: float | None = None  # wer ÷ the ground truth's over the same group (`summarize_items`)
    wer_ratio_interval: tuple[float, float] | None = None  # its 90 % paired bootstrap interval (`wer_ratio_interval`)

    @property
    def separation(self) -> float | None:
        """How much closer to the own voice than to the others'."""
        if self.sim_own is None or self.sim_others is None:
            return None
        return self.sim_own - self.sim_others


def _mean(values: Sequence[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def summarize(renderings: Sequence[Rendering]) -> SystemSummary:
    heard = [r for r in renderings if r.word_errors is not None]
    words = sum((ErrorCount(r.word_errors, r.words or 0) for r in heard), ErrorCount(0, 0))
    chars = sum((ErrorCount(r.char_errors or 0, r.chars or 0) for r in heard), ErrorCount(0, 0))
    return SystemSummary(
        items=len(renderings),
        wer=words.rate if heard else None,
        cer=chars.rate if heard else None,
        sim_prompt=_mean([r.sim_prompt for r in renderings]),
        sim_own=_mean([r.sim_own for r in renderings]),
        sim_others=_mean([r.sim_others for r in renderings]),
        duration=float(np.mean([r.duration for r in renderings])) if renderings else 0.0,
    )


def summarize_items(results: Sequence[ItemResult], systems: Sequence[str]) -> dict[str, dict[str, SystemSummary]]:
    """The per-item records -> voice family (and ALL) -> system -> its summary over the family's items.

    Only one group, ALL, when no item's family is known. Each system but the ground truth gets its WER
    ratio to the ground truth's of the same group, with the ratio's paired bootstrap interval.
    """
    families = sorted({r.family for r in results})
    groups = {ALL: list(results)} if families == [UNKNOWN_FAMILY] else {
        **{family: [r for r in results if r.family == family] for family in families}, ALL: list(results)}
    summary = {}
    for group, members in groups.items():
        rows = {system: summarize([r.renderings[system] for r in members if system in r.renderings])
                for system in systems if any(system in r.renderings for r in members)}
        truth = rows.get(GROUND_TRUTH)
        summary[group] = {
            system: row if system == GROUND_TRUTH or truth is None or not truth.wer or row.wer is None
            else replace(row, wer_ratio=row.wer / truth.wer, wer_ratio_interval=wer_ratio_interval(members, system))
            for system, row in rows.items()
        }
    return summary


def wer_ratio_interval(items: Sequence[ItemResult], system: str, confidence: float = 0.9, rounds: int = 2000,
                       seed: int = 0) -> tuple[float, float] | None:
    """The spread of a system's WER ÷ the ground truth's: a paired bootstrap over the items
    (resampling sentences, each with its synthesis and its ground truth), as (low, high)."""
    pairs = [(item.renderings[system].word_errors, item.renderings[GROUND_TRUTH].word_errors)
             for item in items
             if system in item.renderings and GROUND_TRUTH in item.renderings
             and item.renderings[system].word_errors is not None
             and item.renderings[GROUND_TRUTH].word_errors is not None]
    if len(pairs) < 2:
        return None
    totals = _resampled_totals(np.array(pairs, dtype=float), rounds, seed)  # [rounds, 2]: synthesis, ground truth
    ratios = totals[:, 0] / np.maximum(totals[:, 1], 1)
    tail = (1 - confidence) / 2
    return float(np.quantile(ratios, tail)), float(np.quantile(ratios, 1 - tail))


def word_error_change(before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]],
                      system: str | Sequence[str], confidence: float = 0.9, rounds: int = 5000,
                      seed: int = 0) -> tuple[float, float, float, int] | None:
    """How much a system's word errors changed between two evaluations of the same items: the relative
    change of the total (after / before - 1) and its paired bootstrap interval over the items they share.

    before / after: item id -> that item's renderings, as in report.json (`word_errors` of each system).
    system: one system, or several whose word errors are pooled per item (e.g. the syntheses with and
        without the prompt's transcript: an item is resampled with all of them).
    Returns (change, low, high, items), or None when fewer than two shared items were heard in both.
    """
    pairs = _paired_values(before, after, system, "word_errors")
    if len(pairs) < 2:
        return None
    errors = pairs.sum(2)  # [items, 2]: before, after, pooled over the systems
    totals = _resampled_totals(errors, rounds, seed)  # [rounds, 2]
    changes = totals[:, 1] / np.maximum(totals[:, 0], 1) - 1
    tail = (1 - confidence) / 2
    change = errors[:, 1].sum() / max(errors[:, 0].sum(), 1) - 1
    return float(change), float(np.quantile(changes, tail)), float(np.quantile(changes, 1 - tail)), len(pairs)


def similarity_change(before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]],
                      system: str | Sequence[str], confidence: float = 0.9, rounds: int = 5000,
                      seed: int = 0) -> tuple[float, float, float, int] | None:
    """How much a system's similarity to the speakers' own voices changed between two evaluations of the
    same items: the mean of the per-item differences (after - before, in cosine) and its paired bootstrap
    interval over the items they share.

    before / after: item id -> that item's renderings, as in report.json (`sim_own` of each system).
    system: one system, or several averaged per item (an item is resampled with all of them).
    Returns (change, low, high, items), or None when fewer than two shared items were scored in both.
    """
    pairs = _paired_values(before, after, system, "sim_own")
    if len(pairs) < 2:
        return None
    differences = (pairs[:, 1] - pairs[:, 0]).mean(1, keepdims=True)  # [items, 1]
    means = _resampled_totals(differences, rounds, seed)[:, 0] / len(differences)
    tail = (1 - confidence) / 2
    return (float(differences.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail)),
            len(differences))


def _paired_values(before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]],
                   system: str | Sequence[str], key: str) -> np.ndarray:
    """[items, 2 (before, after), systems]: `key` of each system's rendering, for the items both evaluations
    share and in which every system has a value (not None) on both sides."""
    systems = [system] if isinstance(system, str) else list(system)

    def measured(renderings: Mapping[str, Any]) -> bool:
        return all(s in renderings and renderings[s].get(key) is not None for s in systems)

    shared = [i for i in sorted(set(before) & set(after)) if measured(before[i]) and measured(after[i])]
    return np.array([[[side[i][s][key] for s in systems] for side in (before, after)] for i in shared],
                    dtype=float).reshape(len(shared), 2, len(systems))


def _resampled_totals(errors: np.ndarray, rounds: int, seed: int) -> np.ndarray:
    """errors [items, C] (C values per item) -> their totals [rounds, C] over items drawn with replacement,
    every column from the same draw: the paired bootstrap."""
    draws = np.random.default_rng(seed).integers(0, len(errors), (rounds, len(errors)))
    return errors[draws].sum(1)


# -- the evaluation ------------------------------------------------------------------------------------


def evaluate_tts(
    tts: TTS,
    items: Sequence[EvalItem],
    voices: Sequence[Utterance],
    *,
    asr: ASRMeter | None,
    speaker: SpeakerMeter | None,
    prompt_modes: Sequence[str] = PROMPT_MODES,
    n_references: int = N_REFERENCES,
    wav_dir: str | Path | None = None,
    keep_examples: int = 3,
    meter_notes: Mapping[str, str] | None = None,
    sampling: SamplingConfig = DEFAULT_SAMPLING,
    batch_size: int = SYNTHESIS_BATCH,
    best_of: int = 1,
    scorers: Sequence[Scorer] | str | None = None,
    targets: Targets = RELEASE_TARGETS,
) -> TTSReport:
    """Synthesize every item in each prompt mode and measure it with its ground truth and codec resynthesis.
    With no prompt mode nothing is synthesized: the ground truth, the codec's resynthesis and the NAR on the
    recordings' codebook 1 alone, in about half the time per item, so that the codec can be judged on many items.

    voices: the recordings that define each test speaker's voice (the whole test manifest).
    asr / speaker: meters, or None to skip those measurements (`meter_notes` says why, for the report).
    wav_dir: where each synthesis is written, as `<id>.<system>.wav`.
    The first `keep_examples` items keep their waveforms (prompt, syntheses, ground truth) for figures.
    batch_size: items synthesized together (`TTS.generate_batch`; each sounds as it would alone).
    best_of, scorers: candidates per sentence and what chooses among them (`TTS.synthesize`'s); candidate 0
    of each sentence is the synthesis that best_of=1 gives, so two reports compare item by item.
    targets: what the report judges the syntheses and the codec against.
    """
    if not items:
        raise ValueError("evaluate_tts got no items: the manifest needs speakers with at least two utterances")
    systems = [synthesis_system(mode) for mode in prompt_modes]
    sr = tts.sample_rate
    meters = Meters(asr, VoiceBank(speaker, voices, n_references) if speaker is not None else None)
    K = tts.nar.config.n_q  # the codebooks the models write: the codec resynthesis uses as many
    codec = evaluate_codec(tts.codec, [item.target for item in items], n_q_values=[K, 1], keep_examples=len(items))
    labels = {CODEC: reconstruction_label(tts.codec, K), CODEC_1: reconstruction_label(tts.codec, 1)}
    syntheses, synthesis_seconds = _synthesize_items(tts, items, prompt_modes, sampling, batch_size, best_of, scorers)
    synthesized = sum(s.duration for made in syntheses for s in made.values() if isinstance(s, Synthesis))
    wav_dir = Path(wav_dir) if wav_dir is not None else None

    nar_mode = prompt_modes[0] if prompt_modes else PROMPT_MODES[0]  # the prompt mode of the NAR on the recording
    results, examples, attention_example = [], {}, None
    progress = tqdm(items, desc="evaluating TTS", unit="item", disable=None)
    for index, item in enumerate(progress):
        resyntheses = {system: codec.examples[item.target.id][label] for system, label in labels.items()
                       if item.target.id in codec.examples}
        evaluation = evaluate_item(tts, item, syntheses[index], resyntheses, meters, nar_mode, wav_dir)
        results.append(evaluation.result)
        if index < keep_examples and evaluation.waves:
            examples[item.target.id] = _figure_waves(evaluation.waves, sr)
        if attention_example is None and evaluation.result.attention:
            attention_example = (item, syntheses[index][next(iter(evaluation.result.attention))])
        progress.set_postfix_str(_wer_postfix(evaluation.result))
    codec.examples = {k: v for k, v in codec.examples.items() if k in examples}  # the rest were only for the meters

    summary = summarize_items(results, [GROUND_TRUTH, CODEC, CODEC_1, NAR_ON_RECORDING, *systems])
    notes = dict(meter_notes or {})
    meter_names = {"asr": asr.name if asr is not None else f"unavailable: {notes.get('asr', 'not asked for')}",
                   "speaker": speaker.name if speaker is not None
                   else f"unavailable: {notes.get('speaker', 'not asked for')}"}
    settings = {"prompt_modes": list(prompt_modes), "n_references": n_references,
                "min_prompt_seconds": MIN_PROMPT_SECONDS, "sample_rate": sr, "best_of": best_of,
                "batch_size": batch_size, "targets": asdict(targets)}
    return TTSReport(meters=meter_names, settings=settings, items=results, summary=summary, targets=targets,
                     codec=codec, synthesis_rtf=synthesis_seconds / synthesized if synthesized else None,
                     examples=examples, sample_rate=sr, attention_example=attention_example)


def _figure_waves(waves: Mapping[str, tuple[torch.Tensor, int]], sample_rate: int) -> dict[str, torch.Tensor]:
    """An item's waveforms for its figure, labelled and at `sample_rate`: the prompt first, the ground truth last."""
    order = ["prompt", *(name for name in waves if name not in ("prompt", GROUND_TRUTH)), GROUND_TRUTH]
    return {SYSTEM_LABELS.get(name, name): resample(waves[name][0].reshape(1, -1), waves[name][1], sample_rate)[0]
            for name in order}


def _wer_postfix(result: ItemResult) -> str:
    """The progress bar's note: each rendering's WER on the item just measured."""
    short = {GROUND_TRUTH: "GT", CODEC: "codec", CODEC_1: "cb1", NAR_ON_RECORDING: "NAR",
             **{synthesis_system(m): m for m in PROMPT_MODES}}
    return "WER " + " ".join(f"{short[s]} {r.wer:.0%}" for s, r in result.renderings.items() if r.wer is not None)


def _synthesize_items(tts: TTS, items: Sequence[EvalItem], prompt_modes: Sequence[str], sampling: SamplingConfig,
                      batch_size: int, best_of: int = 1, scorers: Sequence[Scorer] | str | None = None,
                      ) -> tuple[list[dict[str, Synthesis | str]], float]:
    """Every item in every prompt mode, `batch_size` items at a time -> (per item, synthesis system -> its
    Synthesis or the error that stopped it, in `prompt_modes` order; seconds spent). A prompt the TTS
    refuses fails its own item only."""
    if not prompt_modes:
        return [{} for _ in items], 0.0
    out: dict[tuple[int, str], Synthesis | str] = {}
    voices: dict[tuple[int, str], Voice] = {}
    for index, item in enumerate(items):
        try:
            prompt, prompt_sr = load_audio(item.prompt.audio_path)
            for mode in prompt_modes:
                voices[index, mode] = tts.prepare_voice((prompt[0], prompt_sr),
                                                        item.prompt.text if mode == "with" else None,
                                                        item.target.language)
        except (AudioError, PromptError, ValueError) as error:
            for mode in prompt_modes:
                out[index, mode] = str(error)
    jobs = [(index, mode) for mode in prompt_modes for index in range(len(items)) if (index, mode) in voices]
    by_language: dict[str, list[tuple[int, str]]] = {}
    for job in jobs:
        by_language.setdefault(items[job[0]].target.language, []).append(job)
    start = time.perf_counter()
    progress = tqdm(total=len(jobs), desc="synthesizing", unit="item", disable=None)
    for language, group in by_language.items():
        for first in range(0, len(group), batch_size):
            batch = group[first:first + batch_size]
            texts = [items[index].target.text for index, _ in batch]
            try:
                results = tts.generate_batch(texts, voices=[voices[job] for job in batch],
                                             seeds=[items[index].seed for index, _ in batch], language=language,
                                             sampling=sampling, best_of=best_of, scorers=scorers)
            except ValueError:  # a text with nothing to say: find it, synthesize the rest one by one
                results = []
                for job, text in zip(batch, texts):
                    try:
                        results.append(tts.generate(text, voice=voices[job], seed=items[job[0]].seed,
                                                    language=language, sampling=sampling, best_of=best_of,
                                                    scorers=scorers))
                    except ValueError as error:
                        results.append(str(error))
            out.update(zip(batch, results))
            progress.update(len(batch))
    progress.close()
    seconds = time.perf_counter() - start
    return [{synthesis_system(mode): out[index, mode] for mode in prompt_modes} for index in range(len(items))], seconds


# -- the report ----------------------------------------------------------------------------------------


@dataclass
class TTSReport:
    """What `evaluate_tts` found: `to_dict()` / `to_json()` for machines, `to_markdown()` for people."""

    meters: dict[str, str]  # "asr" / "speaker" -> the meter's name, or "unavailable: why"
    settings: dict[str, Any]
    items: list[ItemResult]
    summary: dict[str, dict[str, SystemSummary]]  # family (and "all") -> system -> summary
    codec: CodecReport | None
    synthesis_rtf: float | None  # synthesis seconds per second of speech written
    targets: Targets = RELEASE_TARGETS  # what `verdicts` judges against
    # item id -> label -> mono waveform [T] at `sample_rate`, for figures; never serialized
    examples: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)
    sample_rate: int = 0
    attention_example: tuple[EvalItem, Synthesis] | None = field(default=None, repr=False)

    def verdicts(self) -> dict[str, dict[str, Any]]:
        """The syntheses and the codec against the targets (`Targets.check`)."""
        return self.targets.check(self.summary)

    def attention(self) -> dict[str, dict[str, float]]:
        """Per synthesis mode, the means over its items of `synthesis_attention`'s measures."""
        result = {}
        for system in (synthesis_system(mode) for mode in PROMPT_MODES):
            measured = [item.attention[system] for item in self.items if system in item.attention]
            if measured:
                result[system] = {key: float(np.mean([m[key] for m in measured])) for key in measured[0]}
        return result

    def to_dict(self) -> dict[str, Any]:
        """report.json's content. `targets` (synthesis system -> `wer_ratio`, `sim_own`, `separation`, ...) is
        read by recipes/quickstart.py, `items` (id, renderings) by recipes/compare_evaluations.py."""
        summary = {
            family: {system: {**asdict(s), "separation": s.separation} for system, s in systems.items()}
            for family, systems in self.summary.items()
        }
        verdicts = self.verdicts()
        return finite_or_none({
            "meters": self.meters,
            "settings": self.settings,
            "summary": summary,
            "targets": {system: verdict for system, verdict in verdicts.items() if system != CODEC},
            "codec_target": verdicts.get(CODEC),
            "attention": self.attention(),
            "synthesis_rtf": self.synthesis_rtf,
            "codec": self.codec.to_dict() if self.codec is not None else None,
            "items": [asdict(item) for item in self.items],
        })

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def to_markdown(self) -> str:
        lines = [
            f"ASR: {self.meters.get('asr')}; speaker encoder: {self.meters.get('speaker')}. "
            f"{len(self.items)} items by {len({i.speaker for i in self.items})} held-out speakers. "
            "WER ÷ GT: the synthesis' WER over the ground truth's (same sentences, same voices, same ASR), "
            "with its 90 % bootstrap interval over the items in brackets. "
            "Similarities are cosines to the speaker's voice (their other recordings), to the prompt "
            "recording, and to the other held-out voices (mean).",
            "",
            "| voices | system | items | WER | CER | WER ÷ GT | sim own voice | sim prompt | sim others |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for family, systems in self.summary.items():
            if family == ALL and len(self.summary) == 2:  # one family: its rows again
                continue
            for system, s in systems.items():
                lines.append(
                    f"| {family} | {SYSTEM_LABELS.get(system, system)} | {s.items} | {_percent(s.wer)} "
                    f"| {_percent(s.cer)} | {_ratio(s.wer_ratio, s.wer_ratio_interval)} | {_number(s.sim_own)} "
                    f"| {_number(s.sim_prompt)} | {_number(s.sim_others)} |"
                )
        verdicts = self.verdicts()
        if verdicts:
            family = self.targets.judged_family(self.summary)
            judged = "all voices" if family == ALL else f"the {family} voices"
            lines += ["", f"Targets for {self.targets.label}; WER judged on {judged}, similarity on all voices:", ""]
            for system, v in verdicts.items():
                lines.append(
                    f"- {SYSTEM_LABELS[system]}: WER ÷ GT {_number(v['wer_ratio'])} (≤ {v['wer_ratio_target']:g}: "
                    f"{_verdict(v['wer_ratio_met'])}); similarity to own voice {_number(v['sim_own'])} "
                    f"(≥ {v['sim_own_target']:g}: {_verdict(v['sim_own_met'])}); own − others "
                    f"{_number(v['separation'])} (ground truth: {_number(v['ground_truth_separation'])})"
                )
        attention = self.attention()
        if attention:
            lines += ["", "The AR's attention onto the text while it wrote the syntheses (its most focused layer, "
                          "mean over the items): focus rate (1: one token at a time), monotonicity, and distance in "
                          "tokens from the token its pointer spoke (duration-guided AR):", ""]
            for system, a in attention.items():
                lines.append(f"- {SYSTEM_LABELS[system]}: focus {a['focus_rate']:.2f}, monotonicity "
                             f"{a['monotonicity']:.2f}, distance to the pointer {_number(a.get('alignment_error'))}")
        if self.synthesis_rtf is not None:
            lines += ["", f"Synthesis real-time factor: {self.synthesis_rtf:.2f} (seconds of compute per second "
                          f"of speech, {self.settings.get('batch_size', SYNTHESIS_BATCH)} items per batch)."]
        failed = {f"{item.id} ({system})": why for item in self.items for system, why in item.errors.items()}
        if failed:
            lines += ["", f"{len(failed)} syntheses failed: "
                          + "; ".join(f"{k}: {v}" for k, v in list(failed.items())[:5])]
        return "\n".join(lines) + "\n"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _ratio(value: float | None, interval: tuple[float, float] | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" + ("" if interval is None else f" [{interval[0]:.2f}–{interval[1]:.2f}]")


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "not met")

"""Evaluate a codec on real audio: quality at each bitrate, codebook usage and speed.

    report = evaluate_codec(codec, read_manifest("dev.jsonl"), n_q_values=[8, 4, 1])
    print(report.to_markdown())
    Path("report.json").write_text(report.to_json())

Every item is encoded once with all codebooks; each bitrate is the decoding of the first n
codebooks, `decode(codes[:, :n])`. n = 1 is the AR stage's share of the tokens alone; it shows
how much of the voice the NAR stage has to restore.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from codec.interface import Codec
from codec.losses import mel_distance
from codec.metrics import CodebookUsage, bitrate, codebook_usage, pesq_wb, si_sdr, stoi
from data.audio import AudioError, load_audio
from data.manifest import Utterance

logger = logging.getLogger(__name__)

METRICS = ("pesq", "stoi", "si_sdr", "mel_distance")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")

AudioSource = Utterance | tuple[str, str | Path | torch.Tensor | np.ndarray]


@dataclass
class ItemScores:
    """One item decoded with `n_q` codebooks. A metric that could not be computed is NaN."""

    id: str
    n_q: int
    duration: float  # seconds of the original
    pesq: float
    stoi: float
    si_sdr: float  # dB
    mel_distance: float


@dataclass
class BitrateSummary:
    """Means over the items at one bitrate; `missing` counts the items each metric could not score."""

    n_q: int
    bitrate: float  # bits per second
    pesq: float
    stoi: float
    si_sdr: float
    mel_distance: float
    decode_rtf: float  # decoding seconds per second of audio
    missing: dict[str, int] = field(default_factory=dict)

    @property
    def kbps(self) -> float:
        return self.bitrate / 1000


@dataclass
class CodecReport:
    """What `evaluate_codec` found: `to_json()` for machines, `to_markdown()` for people."""

    codec: dict[str, Any]  # the codec's identity: name, sample rate, frame rate, n_q, codebook size
    device: str
    items: int
    total_duration: float  # seconds of audio evaluated
    summaries: list[BitrateSummary]  # one per n_q, in the order asked for
    rows: list[ItemScores]  # one per item and n_q
    usage: CodebookUsage  # over all encoded items, all codebooks
    encode_rtf: float  # encoding seconds per second of audio
    skipped: dict[str, str] = field(default_factory=dict)  # id -> why the item could not be evaluated
    # id -> {"original" or reconstruction_label(...): mono waveform [T]}, for plots; never serialised
    examples: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)

    def summary(self, n_q: int) -> BitrateSummary:
        for s in self.summaries:
            if s.n_q == n_q:
                return s
        raise KeyError(f"the report has no results for n_q={n_q}; it has {[s.n_q for s in self.summaries]}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(replace(self, examples={}))
        del d["examples"]
        for s, summary in zip(d["summaries"], self.summaries):
            s["kbps"] = summary.kbps
        return finite_or_none(d)

    def to_json(self) -> str:
        """The report as strict JSON: a metric that could not be computed is null, not NaN."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def _usage(self, k: int) -> str:
        """Row k's usage; an Echo codec's pitch stream (row 2) counts against its own pitch_bins codes."""
        used, ppl = self.usage.fraction_used[k], self.usage.perplexity[k]
        pitch_bins = self.codec.get("pitch_bins", 0)
        if k == 1 and pitch_bins:
            return f"2 (F0): {used * self.usage.codebook_size / pitch_bins:.0%} / {ppl:.0f} of {pitch_bins}"
        return f"{k + 1}: {used:.0%} / {ppl:.0f}"

    def to_markdown(self) -> str:
        """A table with one row per bitrate, then the items, the speed and the codebook usage."""
        lines = [
            "| n_q | kbps | PESQ | STOI | mel dist | SI-SDR (dB) |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for s in self.summaries:
            lines.append(
                f"| {s.n_q} | {s.kbps:.2f} | {_fmt(s.pesq, 2)} | {_fmt(s.stoi, 3)} "
                f"| {_fmt(s.mel_distance, 3)} | {_fmt(s.si_sdr, 1)} |"
            )
        sr = self.codec.get("sample_rate")
        lines += [
            "",
            f"{self.items} items, {self.total_duration:.1f} s of audio at {sr} Hz"
            + (f" ({len(self.skipped)} skipped)" if self.skipped else "")
            + f"; real-time factor on {self.device}: encode {self.encode_rtf:.3g}, "
            + "decode "
            + ", ".join(f"{s.decode_rtf:.3g} (n_q={s.n_q})" for s in self.summaries)
            + ".",
            "Codebook usage (fraction used / perplexity of "
            + f"{self.usage.codebook_size}): "
            + ", ".join(self._usage(k) for k in range(len(self.usage.fraction_used)))
            + ".",
        ]
        return "\n".join(lines) + "\n"


def _fmt(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"


def finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def audio_files(directory: str | Path) -> list[tuple[str, Path]]:
    """(id, path) for every .wav/.flac/.ogg file under `directory`, sorted by path.

    The id is the path relative to `directory` without its suffix, e.g. "spk1/utt3".
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"audio directory {directory} does not exist")
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no {'/'.join(AUDIO_SUFFIXES)} files under {directory}")
    return [(p.relative_to(directory).with_suffix("").as_posix(), p) for p in files]


def _id_and_source(item: AudioSource) -> tuple[str, str | Path | torch.Tensor | np.ndarray]:
    if isinstance(item, Utterance):
        return item.id, item.audio_path
    item_id, source = item
    return str(item_id), source


def _load(source: str | Path | torch.Tensor | np.ndarray, sample_rate: int) -> torch.Tensor:
    """Mono float32 [1, T] at `sample_rate`; an in-memory waveform is taken to be at that rate already."""
    if isinstance(source, (str, Path)):
        wav, _ = load_audio(source, sample_rate)
        return wav
    wav = torch.as_tensor(source, dtype=torch.float32).reshape(1, -1)
    if wav.shape[-1] == 0:
        raise AudioError("the waveform is empty")
    return wav


def _codec_device(codec: Codec) -> torch.device:
    param = next(codec.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _timed(
    fn: Callable[[torch.Tensor], torch.Tensor], arg: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, float]:
    """`fn(arg)` and its wall time; CUDA work is waited for, or the time would only be the launch time."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn(arg)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def _check_n_q_values(codec: Codec, n_q_values: Sequence[int] | None) -> list[int]:
    if n_q_values is None:
        n_q_values = [codec.n_q, 1]
    values = list(dict.fromkeys(int(n) for n in n_q_values))  # drop repeats, keep the order
    bad = [n for n in values if not 1 <= n <= codec.n_q]
    if not values or bad:
        raise ValueError(f"n_q values must lie in 1..{codec.n_q} (this codec's codebooks), got {list(n_q_values)}")
    return values


def reconstruction_label(codec: Codec, n_q: int) -> str:
    """How a reconstruction is named in a report's examples and plots, e.g. 'n_q=8 (6 kbps)'."""
    return f"n_q={n_q} ({bitrate(codec, n_q) / 1000:.3g} kbps)"


def evaluate_codec(
    codec: Codec,
    audio: Iterable[AudioSource],
    n_q_values: Sequence[int] | None = None,
    max_items: int | None = None,
    keep_examples: int = 0,
) -> CodecReport:
    """Encode and decode each item (one at a time, batch of 1) and score the reconstructions.

    `audio` holds `Utterance`s or `(id, source)` pairs, where a source is an audio file path or
    a mono waveform already at `codec.sample_rate`. `n_q_values` defaults to `[codec.n_q, 1]`:
    the full bitrate and the first codebook alone (what the AR stage predicts). Items that
    cannot be read are skipped and listed in `report.skipped`.

    The first `keep_examples` items' waveforms ('original' and one per `reconstruction_label`)
    are kept in `report.examples`, for `write_examples`.
    """
    n_q_values = _check_n_q_values(codec, n_q_values)
    items = list(audio)[:max_items] if max_items is not None else list(audio)
    if not items:
        raise ValueError("evaluate_codec got no audio to evaluate")
    device = _codec_device(codec)
    sr = codec.sample_rate
    rows: list[ItemScores] = []
    all_codes: list[torch.Tensor] = []
    skipped: dict[str, str] = {}
    examples: dict[str, dict[str, torch.Tensor]] = {}
    encode_time = 0.0
    decode_time = dict.fromkeys(n_q_values, 0.0)
    total_duration = 0.0
    was_training = codec.training
    codec.eval()  # quantizer dropout and EMA codebook updates must be off
    try:
        with torch.no_grad():
            warmed_up = False
            for item in tqdm(items, desc="evaluating codec", unit="item", disable=None):
                item_id, source = _id_and_source(item)
                try:
                    wav = _load(source, sr)
                except (AudioError, FileNotFoundError) as e:
                    logger.warning("skipping %s: %s", item_id, e)
                    skipped[item_id] = str(e)
                    continue
                T = wav.shape[-1]
                x = wav.to(device).unsqueeze(0)  # [1, 1, T]
                if not warmed_up:  # the first call pays for lazy initialisation; keep it out of the timings
                    codec.decode(codec.encode(x[..., : min(T, sr)]))
                    warmed_up = True
                codes, seconds = _timed(codec.encode, x, device)  # [1, K, F]
                encode_time += seconds
                total_duration += T / sr
                all_codes.append(codes.cpu())
                if len(examples) < keep_examples:
                    examples[item_id] = {"original": wav[0]}
                for n in n_q_values:
                    y, seconds = _timed(codec.decode, codes[:, :n], device)  # [1, 1, T']
                    decode_time[n] += seconds
                    y = y.float().cpu()[0, 0, :T]
                    ref = wav[0, : y.shape[-1]]
                    rows.append(ItemScores(id=item_id, n_q=n, duration=T / sr, **_scores(ref, y, sr)))
                    if item_id in examples:
                        examples[item_id][reconstruction_label(codec, n)] = y
    finally:
        codec.train(was_training)
    if not all_codes:
        raise ValueError(f"none of the {len(items)} items could be read; see the warnings above")
    summaries = []
    for n in n_q_values:
        scores = {m: np.array([getattr(r, m) for r in rows if r.n_q == n], dtype=np.float64) for m in METRICS}
        summaries.append(
            BitrateSummary(
                n_q=n,
                bitrate=bitrate(codec, n),
                **{m: _nanmean(v) for m, v in scores.items()},
                decode_rtf=decode_time[n] / total_duration,
                missing={m: int(np.isnan(v).sum()) for m, v in scores.items() if np.isnan(v).any()},
            )
        )
    return CodecReport(
        codec=_codec_fields(codec),
        device=str(device),
        items=len(all_codes),
        total_duration=total_duration,
        summaries=summaries,
        rows=rows,
        usage=codebook_usage(all_codes, codec.codebook_size),
        encode_rtf=encode_time / total_duration,
        skipped=skipped,
        examples=examples,
    )


def _scores(ref: torch.Tensor, y: torch.Tensor, sr: int) -> dict[str, float]:
    """Every metric of METRICS for a reconstruction y of ref (both [T] at sr)."""
    return {"pesq": pesq_wb(ref, y, sr), "stoi": stoi(ref, y, sr), "si_sdr": si_sdr(ref, y),
            "mel_distance": _mel_distance(ref, y, sr)}


def evaluate_codec2(audio: Iterable[AudioSource], modes: Sequence[str], sample_rate: int) -> list[dict[str, Any]]:
    """The Codec 2 baseline (codec/codec2.py) on the same audio, scored as `evaluate_codec` scores a
    bitrate (at `sample_rate`): per mode {"mode", "kbps", and the mean of each of METRICS}."""
    from codec.codec2 import CODEC2_MODES, codec2_programs, codec2_roundtrip

    codec2_programs()  # fail before any work when the programs are missing
    waves = []
    for item in audio:
        item_id, source = _id_and_source(item)
        try:
            waves.append(_load(source, sample_rate)[0])
        except (AudioError, FileNotFoundError) as e:
            logger.warning("skipping %s: %s", item_id, e)
    if not waves:
        raise ValueError("evaluate_codec2 got no audio it could read")
    results = []
    for mode in modes:
        scores = [_scores(wav, codec2_roundtrip(wav, sample_rate, mode), sample_rate)
                  for wav in tqdm(waves, desc=f"Codec 2 {mode}", unit="item", disable=None)]
        means = {m: _nanmean(np.array([row[m] for row in scores], dtype=np.float64)) for m in METRICS}
        results.append(finite_or_none({"mode": mode, "kbps": CODEC2_MODES[mode] / 1000, **means}))
    return results


def codec2_markdown(results: Sequence[dict[str, Any]]) -> str:
    """The Codec 2 baseline as a table shaped like `CodecReport.to_markdown`'s."""
    lines = ["| Codec 2 mode | kbps | PESQ | STOI | mel dist | SI-SDR (dB) |", "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        cells = [_fmt(math.nan if r[m] is None else r[m], d) for m, d in (("pesq", 2), ("stoi", 3),
                                                                          ("mel_distance", 3), ("si_sdr", 1))]
        lines.append(f"| {r['mode']} | {r['kbps']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _mel_distance(ref: torch.Tensor, deg: torch.Tensor, sr: int) -> float:
    """`codec.losses.mel_distance` for two equally long [T] waveforms; NaN (logged) when too short for its STFT."""
    try:
        return float(mel_distance(deg.view(1, 1, -1), ref.view(1, 1, -1), sr))
    except ValueError as e:
        logger.warning("mel distance skipped: %s", e)
        return math.nan


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def _codec_fields(codec: Codec) -> dict[str, Any]:
    try:
        return codec.identity.to_dict()  # an Echo codec's pitch_bins with it, where it has a pitch stream
    except NotImplementedError:
        return {
            "name": type(codec).__name__,
            "sample_rate": codec.sample_rate,
            "frame_rate": codec.frame_rate,
            "n_q": codec.n_q,
            "codebook_size": codec.codebook_size,
        }


def write_examples(report: CodecReport, sample_rate: int, out_dir: str | Path) -> list[Path]:
    """Write each kept example as a spectrogram figure (original over every bitrate) and as wav files.

    Files: `<id>.png` and `<id>/<label>.wav` under `out_dir`, with the id's slashes kept as folders.
    """
    from data.audio import write_audio
    from data.plots import plot_spectrograms

    out_dir = Path(out_dir)
    written = []
    for item_id, waves in report.examples.items():
        written.append(plot_spectrograms(waves, sample_rate, out_dir / f"{item_id}.png", title=item_id))
        for label, wav in waves.items():
            name = label.split(" ")[0].replace("=", "")  # "original", "n_q8"
            written.append(write_audio(out_dir / item_id / f"{name}.wav", wav, sample_rate))
    return written

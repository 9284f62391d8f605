"""Prompt hygiene: turn whatever the user recorded into a clean voice prompt for the codec.

    prompt = prepare_prompt("me.wav", sample_rate=24000)      # or (array, sr), or (tensor, sr)
    prompt.wav                                                 # float32 [T] at 24 kHz, 2-10 s

The steps, in order:

1. read: a path (anything soundfile reads), or a waveform with its sample rate as
   `(array_or_tensor, sr)` (Gradio's `(sr, int16 array)` is accepted too). Integer samples are
   scaled to [-1, 1]; [T], [C, T] and [T, C] layouts are understood.
2. check: not empty, no NaN/inf, not silent, not clipped beyond use (more than `max_clipped`
   of the samples at full scale: the distortion would be cloned with the voice).
3. mono, resampled to the codec's rate, leading and trailing silence trimmed.
4. a recording longer than `max_seconds` keeps its best span: the window with the most voiced
   frames and the fewest long pauses, its edges moved to the quietest nearby frame so that no
   word is cut in half. Such a prompt is `cropped`: a transcript of the whole recording no
   longer matches it.
5. loudness-normalised (ITU-R BS.1770) to `loudness` LUFS, never past -0.1 dBFS.
6. at least `min_seconds` of audio must be left (2 s: the shortest prompt the models were
   trained with; 3-10 s works best).

Every failure raises `PromptError` (a ValueError) saying what is wrong and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from data.audio import SILENCE_PEAK, normalize_loudness, resample, trim_silence

MIN_SECONDS = 2.0  # data.lm_data.PromptConfig trains on prompts of 2-4 s
MAX_SECONDS = 10.0
LOUDNESS = -20.0  # LUFS: the middle of the built-in corpus' range
MAX_CLIPPED = 0.01  # share of samples at full scale beyond which a prompt is refused
FULL_SCALE = 0.999
QUIET_DBFS = -60.0  # a prompt whose loudest 20 ms frame is quieter than this is taken as silent

FRAME_S = 0.02  # analysis frames for span selection
LONG_PAUSE_S = 0.3  # unvoiced runs at least this long count as long pauses
EDGE_SEARCH_S = 0.5  # how far a span's edges may move inwards to find a quiet frame


class PromptError(ValueError):
    """The voice prompt cannot be used; the message says what is wrong and what to do."""


@dataclass
class PreparedPrompt:
    wav: torch.Tensor  # float32 [T] at sample_rate
    sample_rate: int
    source: str  # the file name, or "audio" for an in-memory waveform
    original_duration: float  # seconds, as given (before trimming and cropping)
    cropped: bool  # a span was cut out of a longer recording

    @property
    def duration(self) -> float:
        return self.wav.shape[-1] / self.sample_rate


def prepare_prompt(
    prompt: Any,
    sample_rate: int,
    *,
    min_seconds: float = MIN_SECONDS,
    max_seconds: float = MAX_SECONDS,
    loudness: float | None = LOUDNESS,
    max_clipped: float = MAX_CLIPPED,
) -> PreparedPrompt:
    """Read, check and clean a voice prompt (see the module docstring); raise PromptError."""
    if not 0 < min_seconds <= max_seconds:
        raise ValueError(f"need 0 < min_seconds <= max_seconds, got {min_seconds} and {max_seconds}")
    wav, sr, source = read_prompt(prompt)  # [C, T]
    original_duration = wav.shape[-1] / sr
    check_prompt(wav, sr, source, max_clipped)
    wav = wav.mean(dim=0, keepdim=True)  # [1, T]
    wav = resample(wav, sr, sample_rate)
    wav = trim_silence(wav, sample_rate)
    cropped = False
    if wav.shape[-1] > max_seconds * sample_rate:
        start, end = best_span(wav[0], sample_rate, max_seconds)
        wav = trim_silence(wav[:, start:end], sample_rate)
        cropped = True
    duration = wav.shape[-1] / sample_rate
    if duration < min_seconds:
        raise PromptError(
            f"the voice prompt {source} holds {duration:.1f} s of sound after trimming silence; Echo needs at "
            f"least {min_seconds:g} s (3-10 s of clear speech works best): record or choose a longer sample"
        )
    if loudness is not None:
        wav = normalize_loudness(wav, sample_rate, loudness)
    return PreparedPrompt(wav[0].contiguous(), sample_rate, source, original_duration, cropped)


def read_prompt(prompt: Any) -> tuple[torch.Tensor, int, str]:
    """A path or (waveform, sample_rate) -> (float32 [C, T], sample_rate, a name for messages)."""
    if isinstance(prompt, (str, Path)):
        path = Path(prompt)
        if not path.is_file():
            raise PromptError(f"the voice prompt file {path} does not exist; give the path of a wav, flac or ogg file")
        try:
            data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [T, C]
        except (sf.LibsndfileError, RuntimeError, OSError) as error:
            raise PromptError(f"cannot read the voice prompt {path} ({error}); use a wav, flac or ogg file") from None
        return torch.from_numpy(data.T.copy()), int(sr), str(path)
    if isinstance(prompt, (tuple, list)) and len(prompt) == 2:
        wav, sr = prompt
        if isinstance(wav, (int, np.integer)) and not isinstance(sr, (int, np.integer)):
            wav, sr = sr, wav  # Gradio's (sample_rate, data)
        if not isinstance(sr, (int, np.integer)) or isinstance(sr, bool) or sr <= 0:
            raise PromptError(f"the voice prompt's sample rate must be a positive integer, got {sr!r}")
        return _as_channels(wav), int(sr), "audio"
    if isinstance(prompt, (np.ndarray, torch.Tensor)):
        raise PromptError("a voice prompt waveform needs its sample rate: pass (waveform, sample_rate)")
    raise PromptError(f"a voice prompt is a file path or (waveform, sample_rate), got {type(prompt).__name__}")


def _as_channels(wav: Any) -> torch.Tensor:
    """An array or tensor in [T], [C, T], [T, C] or [1, 1, T] layout -> float32 [C, T] in [-1, 1]."""
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().cpu()
        wav = (wav.float() if wav.dtype.is_floating_point else wav).numpy()
    array = np.asarray(wav)
    if array.dtype.kind not in "iuf":
        raise PromptError(f"a voice prompt waveform must hold numbers, got dtype {array.dtype}")
    if array.dtype.kind in "iu":  # PCM: full scale is the type's range
        info = np.iinfo(array.dtype)
        array = (array.astype(np.float64) - (info.max + 1 + info.min) / 2) / ((info.max - info.min + 1) / 2)
    wav = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    while wav.dim() > 2 and wav.shape[0] == 1:
        wav = wav[0]
    if wav.dim() == 1:
        wav = wav[None]
    if wav.dim() != 2:
        raise PromptError(f"a voice prompt waveform is [T] or [channels, T], got shape {tuple(wav.shape)}")
    if wav.shape[0] > 8 and wav.shape[1] <= 8:
        wav = wav.T  # [T, C] as soundfile returns it
    return wav.contiguous()


def check_prompt(wav: torch.Tensor, sr: int, source: str = "audio", max_clipped: float = MAX_CLIPPED) -> None:
    """Raise PromptError if wav [C, T] is empty, not finite, silent or clipped beyond use."""
    if wav.numel() == 0:
        raise PromptError(f"the voice prompt {source} is empty (0 samples); record a few seconds of speech")
    if not torch.isfinite(wav).all():
        raise PromptError(f"the voice prompt {source} contains NaN or infinite samples; "
                          "re-export it from the original recording")
    peak = float(wav.abs().max())
    if peak < SILENCE_PEAK:
        raise PromptError(f"the voice prompt {source} is silent (peak below -80 dBFS); "
                          "check the microphone and its input gain, or choose another file")
    hop = max(1, int(FRAME_S * sr))
    mono = wav.mean(dim=0)
    n = mono.shape[0] // hop
    frames = mono[: n * hop].reshape(n, hop) if n else mono[None]
    loudest = 20 * np.log10(max(float(frames.pow(2).mean(dim=1).sqrt().max()), 1e-10))
    if loudest < QUIET_DBFS:
        raise PromptError(f"the voice prompt {source} is nearly silent (its loudest moment is {loudest:.0f} dBFS); "
                          "record closer to the microphone or raise the input gain")
    if peak <= 1.0 + 1e-6:  # a float waveform beyond +-1 is unscaled, not clipped
        clipped = float((wav.abs() >= FULL_SCALE).float().mean())
        if clipped > max_clipped:
            raise PromptError(
                f"{clipped:.1%} of the voice prompt {source}'s samples are at full scale (clipped); the distortion "
                f"would be cloned with the voice. Record again with a lower input gain (peaks around -6 dBFS)"
            )


def best_span(wav: torch.Tensor, sr: int, max_seconds: float) -> tuple[int, int]:
    """The best span of at most `max_seconds` of wav [T] -> (start, end) in samples.

    Frames of 20 ms are voiced when within 35 dB of the recording's loud frames (its 95th
    percentile); the window of `max_seconds` with the most voiced frames, minus twice its
    frames in pauses of 0.3 s or more, wins (the earliest on a tie). Each edge then moves
    inwards, by up to 0.5 s, to the quietest frame there.
    """
    hop = max(1, int(FRAME_S * sr))
    n = wav.shape[-1] // hop
    W = int(max_seconds * sr) // hop  # window, in frames
    if n <= W:
        return 0, wav.shape[-1]
    energy = wav[: n * hop].reshape(n, hop).pow(2).mean(dim=1)
    db = 10 * torch.log10(energy.clamp_min(1e-12))  # [n]
    voiced = db > torch.quantile(db, 0.95) - 35.0
    long_pause = _long_runs(~voiced, int(round(LONG_PAUSE_S / FRAME_S)))
    score = voiced.float() - 2 * long_pause.float()
    cumulative = torch.cat([score.new_zeros(1), score.cumsum(0)])
    window_scores = cumulative[W:] - cumulative[:-W]  # [n - W + 1]
    first = int(window_scores.argmax())  # argmax returns the first maximum
    search = max(1, int(round(EDGE_SEARCH_S / FRAME_S)))
    start = first + int(db[first : first + search].argmin())  # the first quietest frame of the head
    last = first + W  # exclusive
    tail = db[last - search : last]
    end = last - int(tail.flip(0).argmin())  # just after the last quietest frame of the tail
    return start * hop, min(wav.shape[-1], max(end, start + 1) * hop)


def _long_runs(mask: torch.Tensor, min_length: int) -> torch.Tensor:
    """mask [n] bool -> True on the frames of runs of True at least `min_length` long."""
    out = torch.zeros_like(mask)
    run_start = None
    for i, value in enumerate(mask.tolist() + [False]):
        if value and run_start is None:
            run_start = i
        elif not value and run_start is not None:
            if i - run_start >= min_length:
                out[run_start:i] = True
            run_start = None
    return out

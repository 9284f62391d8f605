"""Audio I/O: read any file soundfile reads, mix to mono, resample, trim, normalise, validate.

Audio is read with soundfile (not `torchaudio.load`, which now needs torchcodec); torchaudio
does the resampling and the loudness measurement, imported where they run (speaking from a voice
preset needs neither, and a cold start saves the 0.05 s of torchaudio's import). Waveforms are
float32 tensors [1, T].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from data.pretrained import write_file

SILENCE_PEAK = 1e-4  # -80 dBFS: anything quieter is taken as digital silence


class AudioError(ValueError):
    """The audio cannot be used; the message says what is wrong and what to do."""


def audio_duration(path: str | Path) -> float:
    """Duration in seconds from the file header, without decoding the audio."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"cannot read audio file {path}: {e}") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError(f"audio file {path} is empty")
    return info.frames / info.samplerate


def load_audio(
    path: str | Path,
    sample_rate: int | None = None,
    *,
    trim: bool = False,
    loudness: float | None = None,
    min_duration: float = 0.0,
) -> tuple[torch.Tensor, int]:
    """Read `path` as mono float32 [1, T], resampled to `sample_rate` (None keeps the file's rate).

    `trim` removes leading and trailing silence; `loudness` normalises to that many LUFS.
    Raises AudioError for unreadable, empty, NaN/inf, all-silent or too short audio.
    """
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [T, C]
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"cannot read audio file {path}: {e}; use wav, flac or ogg") from None
    wav = torch.from_numpy(data.T.copy())  # [C, T]
    return prepare_audio(wav, sr, sample_rate, trim=trim, loudness=loudness, min_duration=min_duration, source=str(path))


def prepare_audio(
    wav: torch.Tensor | np.ndarray,
    sr: int,
    sample_rate: int | None = None,
    *,
    trim: bool = False,
    loudness: float | None = None,
    min_duration: float = 0.0,
    source: str = "audio",
) -> tuple[torch.Tensor, int]:
    """The in-memory half of `load_audio`: validate, mix to mono, resample, trim, normalise.

    `wav` is [T] (mono) or [C, T] (channels first).
    """
    wav = torch.as_tensor(wav, dtype=torch.float32)
    if wav.dim() == 1:
        wav = wav.unsqueeze(0)
    if wav.dim() != 2:
        raise AudioError(f"{source}: expected a waveform [T] or [channels, T], got shape {tuple(wav.shape)}")
    wav = wav.mean(dim=0, keepdim=True)
    check_audio(wav, sr, source)
    if sample_rate is not None and sample_rate != sr:
        wav = resample(wav, sr, sample_rate)
        sr = sample_rate
    if trim:
        wav = trim_silence(wav, sr)
    if loudness is not None:
        wav = normalize_loudness(wav, sr, loudness)
    duration = wav.shape[-1] / sr
    if duration < min_duration:
        raise AudioError(f"{source} is {duration:.2f} s long (after trimming silence); at least {min_duration:g} s is needed")
    return wav, sr


def check_audio(wav: torch.Tensor, sr: int, source: str = "audio") -> None:
    """Raise AudioError if `wav` [C, T] is empty, not finite, or silent."""
    if sr <= 0:
        raise AudioError(f"{source}: sample rate must be positive, got {sr}")
    if wav.numel() == 0:
        raise AudioError(f"{source} is empty (0 samples)")
    if not torch.isfinite(wav).all():
        raise AudioError(f"{source} contains NaN or infinite samples; re-export it from the original recording")
    if wav.abs().max() < SILENCE_PEAK:
        raise AudioError(f"{source} is silent (peak below -80 dBFS); check the recording and its input gain")


def resample(wav: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Band-limited resampling (torchaudio's windowed sinc)."""
    if orig_sr == new_sr:
        return wav
    import torchaudio.functional as AF

    return AF.resample(wav, orig_sr, new_sr)


def trim_silence(
    wav: torch.Tensor, sr: int, top_db: float = 40.0, frame_s: float = 0.02, keep_s: float = 0.1
) -> torch.Tensor:
    """Drop leading and trailing frames quieter than `top_db` below the loudest frame, keeping `keep_s` of margin."""
    start, end = speech_bounds(wav, sr, top_db, frame_s, keep_s)
    return wav[..., start:end]


def speech_bounds(
    wav: torch.Tensor, sr: int, top_db: float = 40.0, frame_s: float = 0.02, keep_s: float = 0.1
) -> tuple[int, int]:
    """The samples [start, end) of `wav` [C, T] that `trim_silence` keeps (0, T when no frame stands out)."""
    hop = max(1, int(frame_s * sr))
    T = wav.shape[-1]
    n_frames = -(-T // hop)
    padded = torch.nn.functional.pad(wav, (0, n_frames * hop - T))
    rms = padded.reshape(wav.shape[0], n_frames, hop).pow(2).mean(dim=(0, 2)).sqrt()  # [frames]
    db = 20 * torch.log10(rms.clamp_min(1e-10))
    voiced = torch.nonzero(db > db.max() - top_db).flatten()
    if voiced.numel() == 0:
        return 0, T
    keep = int(keep_s * sr)
    return max(0, int(voiced[0]) * hop - keep), min(T, (int(voiced[-1]) + 1) * hop + keep)


def normalize_loudness(wav: torch.Tensor, sr: int, target_lufs: float = -23.0, peak: float = 0.99) -> torch.Tensor:
    """Scale to `target_lufs` integrated loudness (ITU-R BS.1770), never past `peak` (no clipping)."""
    if wav.shape[-1] < int(0.4 * sr):  # BS.1770 gates on 400 ms blocks; shorter audio has no defined loudness
        measured = 20 * torch.log10(wav.pow(2).mean().sqrt().clamp_min(1e-10)) - 0.691
    else:
        import torchaudio.functional as AF

        measured = AF.loudness(wav, sr)
    if not torch.isfinite(measured):
        return wav
    gain = 10 ** ((target_lufs - measured) / 20)
    gain = torch.minimum(gain, peak / wav.abs().max().clamp_min(1e-10))
    return wav * gain


def write_audio(path: str | Path, wav: torch.Tensor | np.ndarray, sample_rate: int) -> Path:
    """Write mono audio ([T] or [1, T]) as 16-bit PCM; the format follows the suffix (.wav, .flac, .ogg).

    The file appears atomically, so an interrupted writer never leaves a truncated file behind.
    """
    path = Path(path)
    data = torch.as_tensor(wav, dtype=torch.float32).detach().cpu().reshape(-1).numpy()
    data = np.clip(data, -1.0, 1.0)
    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot write {path}: use a .wav, .flac or .ogg file name")
    subtype = "VORBIS" if fmt == "OGG" else "PCM_16"
    return write_file(path, lambda tmp: sf.write(str(tmp), data, sample_rate, format=fmt, subtype=subtype))


F0_WINDOW_SECONDS = 0.04  # f0_contour's analysis window


def f0_contour(wav: np.ndarray | torch.Tensor, sample_rate: int, fmin: float = 60.0, fmax: float = 450.0,
               hop_length: int | None = None) -> np.ndarray:
    """F0 in Hz of each 40 ms frame, every `hop_length` samples (10 ms by default); NaN where a frame is
    unvoiced or quiet. Frame i starts at sample i * hop_length.

    A frame is voiced when its normalised autocorrelation peaks above 0.5 at a lag between
    1 / fmax and 1 / fmin, and quiet when its energy is under 1 % of the loudest frame's.
    """
    wav = np.asarray(wav, dtype=np.float64).reshape(-1)
    frame, hop = int(F0_WINDOW_SECONDS * sample_rate), hop_length or int(0.01 * sample_rate)
    if wav.size < frame:
        return np.zeros(0)
    frames = np.lib.stride_tricks.sliding_window_view(wav, frame)[::hop]
    frames = frames - frames.mean(axis=1, keepdims=True)
    energy = (frames**2).sum(axis=1)
    n_fft = 1 << (2 * frame - 1).bit_length()
    autocorrelation = np.fft.irfft(np.abs(np.fft.rfft(frames, n_fft)) ** 2, n_fft)[:, :frame]  # [frames, lags]
    low, high = int(sample_rate / fmax), int(sample_rate / fmin)
    lags = low + autocorrelation[:, low:high].argmax(axis=1)
    strength = autocorrelation[np.arange(len(lags)), lags] / np.maximum(autocorrelation[:, 0], 1e-12)
    voiced = (strength > 0.5) & (energy > 0.01 * energy.max())
    return np.where(voiced, sample_rate / lags, np.nan)


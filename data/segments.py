"""What the codec trains on: fixed-length audio segments of a manifest's utterances, and whole
utterances with their phonemes (for the phonetic loss on codebook 1, codec/phonetic.py)."""

from __future__ import annotations

import soundfile as sf
import torch
from torch.utils.data import Dataset

from data.audio import load_audio, resample
from data.manifest import Utterance


class AudioSegments(Dataset):
    """Crops of `segment_seconds` from each utterance, resampled to `sample_rate`, as [1, T] float32.

    Random crops (training) draw from torch's global RNG, which Accelerate seeds and restores on
    resume; `random_crop=False` takes each utterance's first segment (validation, reproducible).
    Shorter utterances are zero-padded at the end. With `cache=True` every utterance is decoded
    once and kept in memory as 16-bit samples, which pays off when a small corpus is read many
    times per epoch (the CPU presets).
    """

    def __init__(
        self,
        utterances: list[Utterance],
        sample_rate: int,
        segment_seconds: float,
        random_crop: bool = True,
        cache: bool = False,
    ):
        if not utterances:
            raise ValueError("AudioSegments needs at least one utterance; is the manifest empty?")
        if segment_seconds <= 0:
            raise ValueError(f"segment_seconds must be positive, got {segment_seconds}")
        self.utterances = utterances
        self.sample_rate = sample_rate
        self.segment_length = round(segment_seconds * sample_rate)
        self.random_crop = random_crop
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.utterances)

    def _offset(self, available: int, wanted: int) -> int:
        if not self.random_crop or available <= wanted:
            return 0
        return int(torch.randint(0, available - wanted + 1, ()))

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.cache is not None:
            full = _read_cached(self.cache, index, self.utterances[index].audio_path, self.sample_rate)
            start = self._offset(full.shape[-1], self.segment_length)
            wav = full[:, start : start + self.segment_length].float() / 32767
        else:
            wav = self._read_crop(self.utterances[index].audio_path)
        return torch.nn.functional.pad(wav, (0, self.segment_length - wav.shape[-1]))

    def _read_crop(self, path: str) -> torch.Tensor:
        """Read only the frames of the crop (not the whole file), then resample."""
        info = sf.info(path)
        wanted = -(-self.segment_length * info.samplerate // self.sample_rate)  # in the file's rate
        start = self._offset(info.frames, wanted)
        data, sr = sf.read(path, start=start, frames=wanted, dtype="float32", always_2d=True)
        wav = torch.from_numpy(data.T.copy()).mean(dim=0, keepdim=True)
        return resample(wav, sr, self.sample_rate)[:, : self.segment_length]


class PhonemizedUtterances(Dataset):
    """Whole utterances with their phoneme targets: (wav [1, T] float32, targets LongTensor [N]).

    `targets` holds one list of phoneme classes per utterance (codec.phonetic.PhonemeTable);
    utterances longer than `max_seconds` or without phonemes are left out. `cache` keeps every
    utterance read in memory, as AudioSegments does.
    """

    def __init__(self, utterances: list[Utterance], targets: list[list[int]], sample_rate: int,
                 max_seconds: float, cache: bool = False):
        if len(utterances) != len(targets):
            raise ValueError(f"got {len(utterances)} utterances but {len(targets)} phoneme targets")
        kept = [(u, t) for u, t in zip(utterances, targets) if t and 0 < u.duration <= max_seconds]
        if not kept:
            raise ValueError(f"no utterance of at most {max_seconds} s has a transcript with phonemes")
        self.utterances, self.targets = zip(*kept)
        self.sample_rate = sample_rate
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        targets = torch.tensor(self.targets[index], dtype=torch.long)
        path = self.utterances[index].audio_path
        if self.cache is None:
            return load_audio(path, self.sample_rate)[0], targets
        return _read_cached(self.cache, index, path, self.sample_rate).float() / 32767, targets


def _read_cached(cache: dict[int, torch.Tensor], index: int, path: str, sample_rate: int) -> torch.Tensor:
    """Utterance `index` as 16-bit samples [1, T], decoded on first use and kept in `cache`."""
    if index not in cache:
        wav, _ = load_audio(path, sample_rate)
        cache[index] = (wav.clamp(-1, 1) * 32767).round().to(torch.int16)
    return cache[index]


def collate_phonemized(batch: list[tuple[torch.Tensor, torch.Tensor]], hop_length: int):
    """-> wav [B, 1, T] (zero-padded to whole frames), frame lengths [B], targets [B, N] (0-padded), lengths [B]."""
    wavs, targets = zip(*batch)
    samples = torch.tensor([w.shape[-1] for w in wavs])
    frames = -(-samples // hop_length)
    wav = torch.zeros(len(batch), 1, int(frames.max()) * hop_length)
    for b, w in enumerate(wavs):
        wav[b, :, : w.shape[-1]] = w
    target_lengths = torch.tensor([len(t) for t in targets])
    padded = torch.zeros(len(batch), int(target_lengths.max()), dtype=torch.long)
    for b, t in enumerate(targets):
        padded[b, : len(t)] = t
    return wav, frames, padded, target_lengths

"""Audio as bytes for the HTTP server and the CLI: 16-bit PCM, WAV and FLAC, whole or piece by piece.

    body = encode_audio(wav, 16000, "flac")                 # a whole file in memory
    header = wav_stream_header(16000)                        # then pcm16(piece) for each piece
    with ProgressiveAudioFile("story.wav", 16000) as out:    # a file written as the audio arrives
        for piece in tts.stream(text, voice=voice):
            out.write(piece)

Every format holds 16-bit samples, as `data.audio.write_audio` writes them. The conversion is
done here, once, for all formats (clip to [-1, 1], scale by 32767, round half to even): libsndfile
rounds differently for WAV and for FLAC (and between its versions), and a pcm, wav or flac
response of the same audio must hold the very same samples.

A streamed WAV cannot know its length when its header is sent: its RIFF and data sizes are
0xFFFFFFFF, "until the stream ends", as streaming TTS servers send it. libsndfile, ffmpeg and
browsers read such a file to its end.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import soundfile as sf

from data.pretrained import replacing_file

MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "pcm": "audio/pcm"}
STREAMABLE_FORMATS = ("wav", "pcm")  # FLAC's header wants the total length, and libsndfile seeks back to write it
FILE_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}  # by suffix, as data.audio.write_audio
UNKNOWN_LENGTH = 0xFFFFFFFF


def pcm16(wav: np.ndarray) -> bytes:
    """float audio [T] -> 16-bit little-endian PCM bytes (2 T bytes)."""
    return to_int16(wav).astype("<i2").tobytes()


def to_int16(wav: np.ndarray) -> np.ndarray:
    """float audio [T] -> int16 [T]: clipped to [-1, 1], scaled by 32767, rounded half to even."""
    return np.rint(np.clip(np.asarray(wav, dtype=np.float32).reshape(-1), -1.0, 1.0) * 32767.0).astype(np.int16)


def encode_audio(wav: np.ndarray, sample_rate: int, audio_format: str) -> bytes:
    """float audio [T] -> a whole mono 16-bit file in `audio_format` ("wav", "flac" or "pcm", headerless)."""
    if audio_format == "pcm":
        return pcm16(wav)
    if audio_format not in MEDIA_TYPES:
        raise ValueError(f"unknown audio format {audio_format!r}; use one of {', '.join(MEDIA_TYPES)}")
    buffer = io.BytesIO()
    sf.write(buffer, to_int16(wav), sample_rate, format=audio_format.upper(), subtype="PCM_16")
    return buffer.getvalue()


def wav_stream_header(sample_rate: int) -> bytes:
    """The 44-byte header of a mono 16-bit WAV of unknown length; the samples follow it as `pcm16` bytes."""
    channels, bytes_per_sample = 1, 2
    fmt = struct.pack("<HHIIHH", 1, channels, sample_rate, sample_rate * channels * bytes_per_sample,
                      channels * bytes_per_sample, 8 * bytes_per_sample)  # PCM, mono, rate, byte rate, align, bits
    return (b"RIFF" + struct.pack("<I", UNKNOWN_LENGTH) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", UNKNOWN_LENGTH))


class ProgressiveAudioFile:
    """A mono audio file (.wav, .flac or .ogg, by suffix; 16-bit as `write_audio`) written piece by piece.

    The pieces go to disk as they come, into a hidden file beside `path` that becomes `path` once the
    `with` block ends without an error: like `write_audio`, an interrupted run leaves no truncated file.
    """

    def __init__(self, path: str | Path, sample_rate: int):
        self.path = Path(path)
        audio_format = FILE_FORMATS.get(self.path.suffix.lower())
        if audio_format is None:
            raise ValueError(f"cannot write {self.path}: use a .wav, .flac or .ogg file name")
        self.sample_rate = sample_rate
        self.samples = 0
        self._replacing = replacing_file(self.path)  # open until the `with` block ends
        partial = self._replacing.__enter__()
        self._file = sf.SoundFile(str(partial), "w", sample_rate, 1, format=audio_format,
                                  subtype="VORBIS" if audio_format == "OGG" else "PCM_16")

    @property
    def duration(self) -> float:
        return self.samples / self.sample_rate

    def write(self, wav: np.ndarray) -> None:
        self._file.write(to_int16(wav) if self._file.subtype == "PCM_16" else _clipped(wav))
        self.samples += len(wav)

    def __enter__(self) -> "ProgressiveAudioFile":
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        self._file.close()
        self._replacing.__exit__(error_type, error, traceback)  # the file becomes `path` only without an error


def _clipped(wav: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(wav, dtype=np.float32).reshape(-1), -1.0, 1.0)

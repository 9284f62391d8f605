"""Codec 2, the open low-bitrate speech codec, as a baseline for Echo's codec (PESQ-wb / STOI at a bitrate).

    wav = codec2_roundtrip(wav, sample_rate, "1200")   # [T] float32 -> the same length and rate

It runs the reference programs `c2enc` and `c2dec` (Debian/Ubuntu: `apt-get install codec2`) on
8 kHz 16-bit mono audio, as Codec 2 is a narrowband codec: the waveform is resampled down, coded,
and resampled back, so everything above 4 kHz is lost, as it would be in use.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from data.audio import resample

CODEC2_SAMPLE_RATE = 8000
# Mode -> bits per second, as the programs name the modes.
CODEC2_MODES = {"3200": 3200, "2400": 2400, "1600": 1600, "1400": 1400, "1300": 1300, "1200": 1200,
                "700C": 700, "450": 450}


class Codec2Unavailable(RuntimeError):
    pass


def codec2_programs() -> tuple[str, str]:
    """The paths of c2enc and c2dec; Codec2Unavailable says how to install them when missing."""
    found = shutil.which("c2enc"), shutil.which("c2dec")
    if None in found:
        raise Codec2Unavailable("the Codec 2 programs c2enc / c2dec are not on PATH: "
                                "install them with `sudo apt-get install codec2`")
    return found


def codec2_roundtrip(wav: torch.Tensor, sample_rate: int, mode: str) -> torch.Tensor:
    """Encode and decode a mono waveform [T] (float, at `sample_rate`) with Codec 2 in `mode`.

    Returns float32 [T] at `sample_rate`: cut or zero-padded to the input's length, since Codec 2
    works in whole 20-40 ms frames."""
    if mode not in CODEC2_MODES:
        raise ValueError(f"unknown Codec 2 mode {mode!r}: choose one of {', '.join(CODEC2_MODES)}")
    if wav.dim() != 1 or wav.numel() == 0:
        raise ValueError(f"codec2_roundtrip needs a non-empty mono waveform [T], got shape {tuple(wav.shape)}")
    encoder, decoder = codec2_programs()
    narrow = resample(wav.float().reshape(1, -1), sample_rate, CODEC2_SAMPLE_RATE)[0]
    pcm = (narrow.clamp(-1.0, 1.0) * 32767.0).round().to(torch.int16).numpy()
    with tempfile.TemporaryDirectory(prefix="codec2-") as folder:
        raw, bits, decoded = (Path(folder) / name for name in ("in.raw", "coded.bit", "out.raw"))
        raw.write_bytes(pcm.astype("<i2").tobytes())
        for command in ([encoder, mode, str(raw), str(bits)], [decoder, mode, str(bits), str(decoded)]):
            run = subprocess.run(command, capture_output=True, text=True)
            if run.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed ({run.returncode}): {run.stderr.strip()[-500:]}")
        out = np.frombuffer(decoded.read_bytes(), dtype="<i2").astype(np.float32) / 32768.0
    back = resample(torch.from_numpy(out).reshape(1, -1), CODEC2_SAMPLE_RATE, sample_rate)[0]
    T = wav.shape[0]
    return back[:T] if back.shape[0] >= T else torch.nn.functional.pad(back, (0, T - back.shape[0]))

"""Where does a codec lose PESQ and STOI: in the magnitudes it renders or in their phase?

    python recipes/diagnose_codec.py --codec app/assets/model/codec --wav-dir runs/human

Each file is coded with all of the codec's codebooks, then the STFTs (512-sample Hann windows, hop
128) of the recording and of the codec's output are recombined and scored against the recording:

    codec                        the codec's output as it is
    codec magnitude, true phase  what a decoder with perfect phase would reach from these magnitudes
    true magnitude, codec phase  what the codec's phase alone costs
    true magnitude, random phase the same with no phase information at all (the floor for the phase)
    low-passed to 4 kHz          the recording and the codec's output band-limited as Codec 2 is (8 kHz)

Prints mean PESQ-wb and STOI over the files for each. Then the pitch: over the frames that both
the recording and the codec's output voice (`data.audio.f0_contour`), the share whose F0 the
output keeps within 6 % (a semitone) and the spread of log F0 in each, mean over the files: a
codec that codes a voice's pitch but not its intonation keeps the spread small. Writes both as
JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from codec.evaluation import audio_files
from codec.loading import load_codec
from codec.metrics import pesq_wb, stoi
from data.audio import f0_contour, load_audio, resample

N_FFT, HOP = 512, 128
PITCH_TOLERANCE = 1.06  # a semitone


def recombinations(recording: torch.Tensor, coded: torch.Tensor, sample_rate: int,
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The renderings of the table above, each [T], from the recording and the codec's output [T]."""
    window = torch.hann_window(N_FFT)
    stft = lambda x: torch.stft(x, N_FFT, HOP, window=window, return_complex=True)  # noqa: E731
    length = recording.shape[-1]
    istft = lambda s: torch.istft(s, N_FFT, HOP, window=window, length=length)  # noqa: E731
    true, codec = stft(recording), stft(coded)
    random_phase = 2 * math.pi * torch.rand(true.shape, generator=generator)
    band_limited = lambda x: resample(resample(x, sample_rate, 8000), 8000, sample_rate)[..., :length]  # noqa: E731
    return {
        "codec": coded,
        "codec magnitude, true phase": istft(torch.polar(codec.abs(), true.angle())),
        "true magnitude, codec phase": istft(torch.polar(true.abs(), codec.angle())),
        "true magnitude, random phase": istft(torch.polar(true.abs(), random_phase)),
        "recording low-passed to 4 kHz": band_limited(recording),
        "codec low-passed to 4 kHz": band_limited(coded),
    }


def pitch_agreement(recording: torch.Tensor, coded: torch.Tensor, sample_rate: int) -> dict[str, float]:
    """How the output's F0 follows the recording's over the frames both voice; NaN with fewer than 10."""
    f0_recording, f0_coded = f0_contour(recording, sample_rate), f0_contour(coded, sample_rate)
    both = ~np.isnan(f0_recording) & ~np.isnan(f0_coded)
    if both.sum() < 10:
        return {"within_a_semitone": math.nan, "log_f0_spread_recording": math.nan, "log_f0_spread_codec": math.nan}
    log_recording, log_coded = np.log(f0_recording[both]), np.log(f0_coded[both])
    return {"within_a_semitone": float(np.mean(np.abs(log_recording - log_coded) < math.log(PITCH_TOLERANCE))),
            "log_f0_spread_recording": float(log_recording.std()), "log_f0_spread_codec": float(log_coded.std())}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codec", required=True, help="codec directory (Echo or EnCodec) or hub id")
    parser.add_argument("--wav-dir", type=Path, required=True, help="directory searched for .wav/.flac/.ogg/.mp3 files")
    parser.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    args = parser.parse_args(argv)

    codec = load_codec(args.codec).eval()
    sr, generator = codec.sample_rate, torch.Generator().manual_seed(0)
    scores: dict[str, list[tuple[float, float]]] = {}
    pitch: list[dict[str, float]] = []
    files = audio_files(args.wav_dir)
    for _, path in tqdm(files, desc="files"):
        wav, _ = load_audio(path, sr)
        wav = wav[:, : wav.shape[-1] // codec.hop_length * codec.hop_length]
        with torch.inference_mode():
            coded = codec.decode(codec.encode(wav[None]))[0, 0, : wav.shape[-1]]
        recording = wav[0]
        pitch.append(pitch_agreement(recording, coded, sr))
        for name, rendering in recombinations(recording, coded, sr, generator).items():
            scores.setdefault(name, []).append((pesq_wb(recording, rendering, sr), stoi(recording, rendering, sr)))
    table = {name: {"pesq_wb": float(np.nanmean([p for p, _ in rows])), "stoi": float(np.nanmean([s for _, s in rows])),
                    "files": len(rows)} for name, rows in scores.items()}
    print(f"| rendering ({args.codec}, {len(files)} files) | PESQ-wb | STOI |\n|---|---:|---:|")
    for name, row in table.items():
        print(f"| {name} | {row['pesq_wb']:.2f} | {row['stoi']:.3f} |")
    table["pitch"] = {key: float(np.nanmean([p[key] for p in pitch])) for key in pitch[0]}
    print("\npitch over the frames both voice (mean over files): {within_a_semitone:.2f} within a semitone; spread of "
          "log F0 {log_f0_spread_recording:.3f} in the recordings, {log_f0_spread_codec:.3f} in the codec's output"
          .format(**table["pitch"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(table, indent=2) + "\n")
    return table


if __name__ == "__main__":
    main()

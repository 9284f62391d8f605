"""Where does a codec lose PESQ, STOI and words: in its quantizer, in the magnitudes it renders or in their phase?

    python recipes/diagnose_codec.py --codec app/assets/model/codec --wav-dir runs/human
    python recipes/diagnose_codec.py --codec app/assets/model/codec --manifest runs/long/corpus/test.jsonl \
        --families flite --per-speaker 36 --asr pocketsphinx

Each file is coded with all of the codec's codebooks, then the STFTs (512-sample Hann windows, hop
128) of the recording and of the codec's output are recombined and scored against the recording:

    codec                        the codec's output as it is
    codec magnitude, true phase  what a decoder with perfect phase would reach from these magnitudes
    true magnitude, codec phase  what the codec's phase alone costs
    true magnitude, random phase the same with no phase information at all (the floor for the phase)
    low-passed to 4 kHz          the recording and the codec's output band-limited as Codec 2 is (8 kHz)

and, for an Echo codec, decoded otherwise:

    latent unquantized           the encoder's latent decoded without the quantizer: what the codebooks cost
    codes without F0             (a codec with the pitch stream) its codes with every frame unvoiced: what
                                 the decoder renders without its harmonic source

Prints mean PESQ-wb and STOI over the files for each. With --manifest and --asr, the recordings and
every rendering are also transcribed: the word error rate of each, and its ratio to the recordings'
(per speaker too, in the JSON). Then the pitch: over the frames that both
the recording and the codec's output voice (`data.audio.f0_contour`), the share whose F0 the
output keeps within 6 % (a semitone) and the spread of log F0 in each, mean over the files: a
codec that codes a voice's pitch but not its intonation keeps the spread small. Writes all of it as
JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from app.evaluation import read_voice_families
from app.meters import ErrorCount, load_asr, transcribe_all, word_errors
from codec.evaluation import audio_files
from codec.interface import Codec
from codec.loading import load_codec
from codec.metrics import pesq_wb, stoi
from codec.model import EchoCodec
from data.audio import f0_contour, load_audio, resample
from data.manifest import read_manifest

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


def decodings(codec: Codec, wav: torch.Tensor) -> dict[str, torch.Tensor]:
    """wav [1, T] (whole frames) -> the codec's output and, for an Echo codec, its other decodings, each [T]."""
    length = wav.shape[-1]
    with torch.inference_mode():
        codes = codec.encode(wav[None])
        out = {"codec": codec.decode(codes)}
        if isinstance(codec, EchoCodec):
            out["latent unquantized"] = codec.decode_unquantized(wav[None])
            if codec.config.pitch_bins:
                unvoiced = codes.clone()
                unvoiced[:, 1] = 0  # the pitch stream's row: 0 is an unvoiced frame
                out["codes without F0"] = codec.decode(unvoiced)
    return {name: rendering[0, 0, :length] for name, rendering in out.items()}


def read_sources(args: argparse.Namespace) -> list[tuple[Path, str | None, str | None, str]]:
    """(audio path, transcript or None, speaker or None, language) of each file to diagnose."""
    if args.wav_dir is not None:
        return [(path, None, None, "en-us") for _, path in audio_files(args.wav_dir)]
    utterances = read_manifest(args.manifest)
    if args.families:
        families = read_voice_families(args.manifest.parent / "speakers.json")
        utterances = [u for u in utterances if families.get(u.speaker) in args.families]
    if args.per_speaker is not None:
        taken: Counter[str] = Counter()
        kept = []
        for utterance in utterances:
            taken[utterance.speaker] += 1
            if taken[utterance.speaker] <= args.per_speaker:
                kept.append(utterance)
        utterances = kept
    if not utterances:
        raise SystemExit(f"{args.manifest} has no utterances of the families {args.families}")
    return [(Path(u.audio_path), u.text, u.speaker, u.language) for u in utterances]


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codec", required=True, help="codec directory (Echo or EnCodec) or hub id")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--wav-dir", type=Path, help="directory searched for .wav/.flac/.ogg/.mp3 files")
    source.add_argument("--manifest", type=Path, help="manifest JSONL of utterances (with transcripts: --asr)")
    parser.add_argument("--families", nargs="+", default=None,
                        help="with --manifest: only voices of these families in the corpus' speakers.json (e.g. flite)")
    parser.add_argument("--per-speaker", type=int, default=None,
                        help="with --manifest: the first this many utterances of each speaker (default: all)")
    parser.add_argument("--asr", default="none",
                        help="with --manifest: pocketsphinx or a Whisper directory / hub id, to count the words each "
                             "rendering loses (default: none)")
    parser.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    args = parser.parse_args(argv)
    if args.manifest is None and (args.asr != "none" or args.families or args.per_speaker is not None):
        parser.error("--asr, --families and --per-speaker need --manifest (transcripts and speakers)")
    if args.per_speaker is not None and args.per_speaker < 1:
        parser.error(f"--per-speaker must be at least 1, got {args.per_speaker}")

    codec = load_codec(args.codec).eval()
    sr, generator = codec.sample_rate, torch.Generator().manual_seed(0)
    files = read_sources(args)
    asr = None if args.asr == "none" else load_asr(args.asr, files[0][3], "cpu")
    scores: dict[str, list[tuple[float, float]]] = {}
    pitch: list[dict[str, float]] = []
    words: dict[str, dict[str, ErrorCount]] = {}  # speaker -> rendering -> errors
    for path, text, speaker, language in tqdm(files, desc="files"):
        wav, _ = load_audio(path, sr)
        wav = wav[:, : wav.shape[-1] // codec.hop_length * codec.hop_length]
        renderings = decodings(codec, wav)
        recording = wav[0]
        pitch.append(pitch_agreement(recording, renderings["codec"], sr))
        renderings |= recombinations(recording, renderings["codec"], sr, generator)
        for name, rendering in renderings.items():
            scores.setdefault(name, []).append((pesq_wb(recording, rendering, sr), stoi(recording, rendering, sr)))
        if asr is not None:
            heard = transcribe_all(asr, [(recording, sr)] + [(r, sr) for r in renderings.values()])
            counts = words.setdefault(speaker, {})
            for name, transcript in zip(["recording", *renderings], heard):
                counts[name] = counts.get(name, ErrorCount(0, 0)) + word_errors(text, transcript, language)
    table = {name: {"pesq_wb": float(np.nanmean([p for p, _ in rows])), "stoi": float(np.nanmean([s for _, s in rows])),
                    "files": len(rows)} for name, rows in scores.items()}
    print(f"| rendering ({args.codec}, {len(files)} files) | PESQ-wb | STOI |\n|---|---:|---:|")
    for name, row in table.items():
        print(f"| {name} | {row['pesq_wb']:.2f} | {row['stoi']:.3f} |")
    if asr is not None:
        table["words"] = word_table(words, asr.name, len(files))
    table["pitch"] = {key: float(np.nanmean([p[key] for p in pitch])) for key in pitch[0]}
    print("\npitch over the frames both voice (mean over files): {within_a_semitone:.2f} within a semitone; spread of "
          "log F0 {log_f0_spread_recording:.3f} in the recordings, {log_f0_spread_codec:.3f} in the codec's output"
          .format(**table["pitch"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(table, indent=2) + "\n")
    return table


def word_table(words: dict[str, dict[str, ErrorCount]], asr_name: str, files: int) -> dict[str, dict[str, float]]:
    """Print and return each rendering's WER and its ratio to the recordings', over all speakers and per speaker."""
    total: dict[str, ErrorCount] = {}
    for counts in words.values():
        for name, count in counts.items():
            total[name] = total.get(name, ErrorCount(0, 0)) + count

    def ratios(counts: dict[str, ErrorCount]) -> dict[str, float]:
        truth = counts["recording"].rate
        return {name: count.rate / truth if truth else math.nan for name, count in counts.items()}

    speakers = sorted(words)
    print(f"\n| rendering ({files} files, {asr_name}) | WER | ÷ recording's | " + " | ".join(speakers)
          + " |\n|---|---:|---:|" + "---:|" * len(speakers))
    overall, each = ratios(total), {speaker: ratios(words[speaker]) for speaker in speakers}
    for name, count in total.items():
        print(f"| {name} | {100 * count.rate:.1f} % | {overall[name]:.2f} | "
              + " | ".join(f"{each[speaker][name]:.2f}" for speaker in speakers) + " |")
    return {name: {"wer": count.rate, "ratio": overall[name], "by_speaker": {s: each[s][name] for s in speakers}}
            for name, count in total.items()}


if __name__ == "__main__":
    main()

"""Evaluate a codec: PESQ, STOI, mel distance and SI-SDR at each bitrate, codebook usage, speed.

    python recipes/evaluate_codec.py --codec runs/quickstart/codec --manifest runs/quickstart/corpus/dev.jsonl
    python recipes/evaluate_codec.py --codec facebook/encodec_24khz --wav-dir my_wavs --n-q 32 8 2 1
    python recipes/evaluate_codec.py --codec runs/quickstart/codec/model --wav-dir human_speech --codec2 1600 1200 700C
    python recipes/evaluate_codec.py --codec runs/quickstart/codec/model \
        --manifest runs/quickstart/corpus/test.jsonl --families flite --max-items 36 --asr pocketsphinx

Prints a markdown table and writes report.json, report.md and, for the first few items, a
spectrogram figure (original over each bitrate) and the decoded audio into --out. With --asr
(a manifest's utterances have transcripts), every recording and reconstruction is also
transcribed: word error rates show what each number of codebooks keeps of the words, codebook 1
alone being what the AR model writes.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from app.evaluation import read_voice_families
from app.meters import ErrorCount, load_asr, transcribe_all, word_errors
from codec.codec2 import CODEC2_MODES
from codec.evaluation import audio_files, codec2_markdown, evaluate_codec, evaluate_codec2, write_examples
from codec.loading import load_codec
from data.manifest import Utterance, read_manifest


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--codec", required=True,
        help="codec directory (Echo or EnCodec) or a hub id such as facebook/encodec_24khz",
    )  # fmt: skip
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", type=Path, help="manifest JSONL of the utterances to evaluate")
    source.add_argument("--wav-dir", type=Path, help="directory searched recursively for .wav/.flac/.ogg files")
    parser.add_argument(
        "--n-q", type=int, nargs="+", default=None, metavar="N",
        help="numbers of codebooks to decode with (default: all of them, then 1)",
    )  # fmt: skip
    parser.add_argument("--max-items", type=int, default=None, help="evaluate at most this many items (default: all)")
    parser.add_argument(
        "--out", type=Path, default=None,
        help="output directory (default: <codec>/eval for a codec directory, ./codec_eval for a hub id)",
    )  # fmt: skip
    parser.add_argument("--examples", type=int, default=3, help="items to plot and write as audio (default: 3)")
    parser.add_argument("--asr", default="none",
                        help="with --manifest: pocketsphinx or a Whisper directory / hub id, to measure word error "
                             "rates (default: none)")
    parser.add_argument("--families", nargs="+", default=None,
                        help="with --manifest: only voices of these families in the corpus' speakers.json "
                             "(e.g. flite, which pocketsphinx reads best)")
    parser.add_argument("--codec2", nargs="+", default=None, metavar="MODE",
                        help="also score Codec 2 on the same audio at these modes, e.g. 3200 1600 1200 700C 450 "
                             "(needs its programs: sudo apt-get install codec2)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    args = parser.parse_args(argv)
    if (args.asr != "none" or args.families) and args.manifest is None:
        parser.error("--asr and --families need --manifest (transcripts and speakers)")
    if args.max_items is not None and args.max_items < 1:
        parser.error(f"--max-items must be at least 1, got {args.max_items}")
    if args.examples < 0:
        parser.error(f"--examples must be 0 or more, got {args.examples}")
    unknown = [mode for mode in args.codec2 or () if mode not in CODEC2_MODES]
    if unknown:
        parser.error(f"unknown Codec 2 modes {unknown}: choose from {', '.join(CODEC2_MODES)}")
    return args


def main(argv: list[str] | None = None) -> Path:
    """Run the evaluation; returns the output directory."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    codec = load_codec(args.codec).to(device)
    out = args.out or (Path(args.codec) / "eval" if Path(args.codec).is_dir() else Path("codec_eval"))
    audio = read_manifest(args.manifest) if args.manifest else audio_files(args.wav_dir)
    if args.families:
        families = read_voice_families(args.manifest.parent / "speakers.json")
        audio = [u for u in audio if families.get(u.speaker) in args.families]
    audio = audio[: args.max_items] if args.max_items is not None else audio
    asr = None if args.asr == "none" else load_asr(args.asr, audio[0].language if audio else "en-us", device)

    report = evaluate_codec(codec, audio, n_q_values=args.n_q,
                            keep_examples=len(audio) if asr is not None else args.examples)

    out.mkdir(parents=True, exist_ok=True)
    data = report.to_dict()
    markdown = report.to_markdown()
    if asr is not None:
        errors = word_errors_by_rendering(report.examples, audio, asr, codec.sample_rate)
        data["word_error_rates"] = {label: count.rate for label, count in errors.items()}
        truth = errors["original"].rate
        markdown += "\n| rendering | WER | WER ÷ recording's |\n|---|---:|---:|\n" + "".join(
            f"| {label} | {100 * count.rate:.1f} % | {count.rate / truth if truth else float('nan'):.2f} |\n"
            for label, count in errors.items())
        markdown += f"\nWER over {len(audio)} utterances, ASR: {asr.name}.\n"
        kept = list(report.examples)[: args.examples]
        report.examples = {k: report.examples[k] for k in kept}
    if args.codec2:
        data["codec2"] = evaluate_codec2(audio, args.codec2, codec.sample_rate)
        markdown += "\nCodec 2 on the same audio (8 kHz, resampled back; the reference programs c2enc / c2dec):\n\n"
        markdown += codec2_markdown(data["codec2"])
    (out / "report.json").write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    (out / "report.md").write_text(f"# Codec evaluation: {args.codec}\n\n{markdown}")
    write_examples(report, codec.sample_rate, out / "examples")
    print(markdown)
    print(f"wrote {out / 'report.json'}, {out / 'report.md'} and {len(report.examples)} examples in {out / 'examples'}")
    return out


def word_errors_by_rendering(examples: dict[str, dict[str, torch.Tensor]], utterances: list[Utterance], asr,
                             sample_rate: int) -> dict[str, ErrorCount]:
    """Word errors of the recordings ("original") and of each reconstruction, summed over the utterances."""
    totals: dict[str, ErrorCount] = {}
    for utterance in utterances:
        renderings = examples.get(utterance.id, {})
        transcripts = transcribe_all(asr, [(wav, sample_rate) for wav in renderings.values()])
        for label, transcript in zip(renderings, transcripts):
            heard = word_errors(utterance.text, transcript, utterance.language)
            totals[label] = totals.get(label, ErrorCount(0, 0)) + heard
    return totals


if __name__ == "__main__":
    main()

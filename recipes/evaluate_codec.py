"""Evaluate a codec: PESQ, STOI, mel distance and SI-SDR at each bitrate, codebook usage, speed.

    python recipes/evaluate_codec.py --codec runs/quickstart/codec --manifest runs/quickstart/corpus/dev.jsonl
    python recipes/evaluate_codec.py --codec facebook/encodec_24khz --wav-dir my_wavs --n-q 32 8 2 1

Prints a markdown table and writes report.json, report.md and, for the first few items, a
spectrogram figure (original over each bitrate) and the decoded audio into --out.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from codec.evaluation import audio_files, evaluate_codec, write_examples
from codec.interface import load_codec
from data.manifest import read_manifest


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
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    args = parser.parse_args(argv)
    if args.max_items is not None and args.max_items < 1:
        parser.error(f"--max-items must be at least 1, got {args.max_items}")
    if args.examples < 0:
        parser.error(f"--examples must be 0 or more, got {args.examples}")
    return args


def main(argv: list[str] | None = None) -> Path:
    """Run the evaluation; returns the output directory."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    codec = load_codec(args.codec).to(device)
    out = args.out or (Path(args.codec) / "eval" if Path(args.codec).is_dir() else Path("codec_eval"))
    audio = read_manifest(args.manifest) if args.manifest else audio_files(args.wav_dir)

    report = evaluate_codec(codec, audio, n_q_values=args.n_q, max_items=args.max_items, keep_examples=args.examples)

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(report.to_json())
    markdown = report.to_markdown()
    (out / "report.md").write_text(f"# Codec evaluation: {args.codec}\n\n{markdown}")
    write_examples(report, codec.sample_rate, out / "examples")
    print(markdown)
    print(f"wrote {out / 'report.json'}, {out / 'report.md'} and {len(report.examples)} examples in {out / 'examples'}")
    return out


if __name__ == "__main__":
    main()

"""Turn a corpus into manifests: read (or synthesize) it, filter by duration, split, summarise.

`python recipes/prepare_data.py synthetic --out DIR --hours H` builds the built-in corpus;
`python recipes/prepare_data.py libritts|ljspeech|vctk|jsonl --root DIR --out DIR` reads a real one.
Either way DIR receives:

    manifest.jsonl   every utterance kept
    train.jsonl      training utterances
    dev.jsonl        unseen utterances of the training speakers (validation)
    test.jsonl       every utterance of the held-out speakers (zero-shot evaluation)
    summary.json     hours, speakers, utterances and what was skipped, per split
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from data.manifest import CorpusSummary, Utterance, filter_by_duration, split_corpus, write_manifest

CORPORA = ("synthetic", "libritts", "ljspeech", "vctk", "jsonl")
SYNTHETIC_HELD_OUT_SPEAKERS = 12  # voices never trained on, for zero-shot evaluation


def write_corpus(
    out: str | Path,
    utterances: list[Utterance],
    skipped: Counter[str] | dict[str, int],
    *,
    min_duration: float,
    max_duration: float,
    dev_fraction: float,
    held_out_speakers: int,
    seed: int,
) -> dict[str, CorpusSummary]:
    """Filter, split and write the manifests of one corpus into `out`; return the summary of each split."""
    out = Path(out)
    skipped = Counter(skipped)
    kept, too_long_or_short = filter_by_duration(utterances, min_duration, max_duration)
    if too_long_or_short:
        skipped[f"outside {min_duration:g}-{max_duration:g} s"] += too_long_or_short
    if not kept:
        raise ValueError(
            f"no utterance is left in {out} after filtering ({dict(skipped)}); check the corpus root and the duration limits"
        )
    split = split_corpus(kept, dev_fraction=dev_fraction, held_out_speakers=held_out_speakers, seed=seed)
    write_manifest(out / "manifest.jsonl", kept)
    summaries = {"all": CorpusSummary.of(kept, skipped)}
    for name in ("train", "dev", "test"):
        part = getattr(split, name)
        write_manifest(out / f"{name}.jsonl", part)
        summaries[name] = CorpusSummary.of(part)
    (out / "summary.json").write_text(json.dumps({k: asdict(v) for k, v in summaries.items()}, indent=2) + "\n")
    return summaries


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("corpus", choices=CORPORA, help="which corpus to prepare")
    parser.add_argument("--out", required=True, type=Path, help="output directory for audio (synthetic) and manifests")
    parser.add_argument("--root", type=Path, help="the corpus directory (or the .jsonl/.csv file); not for synthetic")
    parser.add_argument("--language", default="en-us", help="language code recorded for every utterance")
    parser.add_argument("--hours", type=float, default=None, help="synthetic: how much audio to make")
    parser.add_argument("--speakers", type=int, default=None, help="synthetic: number of speakers")
    parser.add_argument("--workers", type=int, default=None, help="synthetic: parallel processes (default: all cores)")
    parser.add_argument("--no-flite", action="store_true", help="synthetic: use eSpeak NG voices only")
    parser.add_argument("--subsets", nargs="+", help="libritts: which subsets to read (default: all found)")
    parser.add_argument("--mic", choices=("mic1", "mic2"), default="mic1", help="vctk: which microphone")
    parser.add_argument("--speaker", help="jsonl: speaker for rows that name none (default: the file's name)")
    parser.add_argument("--min-duration", type=float, default=0.5, help="drop shorter utterances (seconds)")
    parser.add_argument("--max-duration", type=float, default=20.0, help="drop longer utterances (seconds)")
    parser.add_argument("--dev-fraction", type=float, default=0.02, help="share of utterances held out for validation")
    parser.add_argument(
        "--held-out-speakers",
        type=int,
        default=None,
        help="whole speakers held out for zero-shot evaluation (default: 12 for synthetic, 0 otherwise)",
    )
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> dict[str, CorpusSummary]:
    """Prepare the corpus named in `args` and print its summary."""
    if args.corpus == "synthetic":
        from data.synthetic import SYNTHETIC_QUICKSTART_HOURS, build_synthetic_corpus

        if args.root is not None:
            raise SystemExit("--root is for reading an existing corpus; the synthetic corpus is built into --out")
        options = {"seed": args.seed, "use_flite": False if args.no_flite else None}
        if args.speakers is not None:
            options["num_speakers"] = args.speakers
        if args.workers is not None:
            options["workers"] = args.workers
        hours = SYNTHETIC_QUICKSTART_HOURS if args.hours is None else args.hours
        utterances, skipped = build_synthetic_corpus(args.out, hours, **options), Counter()
        held_out = SYNTHETIC_HELD_OUT_SPEAKERS if args.held_out_speakers is None else args.held_out_speakers
    else:
        from data.corpora import READERS

        if args.root is None:
            raise SystemExit(f"{args.corpus} needs --root: the directory the corpus was unpacked into")
        options = {"libritts": {"subsets": args.subsets}, "vctk": {"mic": args.mic}, "jsonl": {"speaker": args.speaker}}
        result = READERS[args.corpus](args.root, language=args.language, **options.get(args.corpus, {}))
        utterances, skipped = result.utterances, result.skipped
        for reason, where in result.examples.items():
            print(f"skipped ({reason}), e.g. {', '.join(map(str, where))}")
        for reason, n in result.fallbacks.items():
            print(f"{n} transcripts: {reason}")
        held_out = args.held_out_speakers or 0
    summaries = write_corpus(
        args.out,
        utterances,
        skipped,
        min_duration=args.min_duration,
        max_duration=args.max_duration,
        dev_fraction=args.dev_fraction,
        held_out_speakers=held_out,
        seed=args.seed,
    )
    print(f"{args.corpus} corpus in {args.out}")
    for name, summary in summaries.items():
        print(f"  {name + ':':7}{summary}")
    return summaries

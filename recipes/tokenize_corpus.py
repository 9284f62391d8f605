r"""Tokenize manifests into one token directory: codec codes + phoneme ids, in shards (see data/tokens.py).

    python recipes/tokenize_corpus.py --codec runs/codec/model \
        --manifest runs/quickstart/corpus/train.jsonl --manifest runs/quickstart/corpus/dev.jsonl \
        --out runs/tokens

Each record keeps its manifest's name as its split ("train", "dev"): the LM reads
`TokenCorpus.open(DIR, splits="train")`. All splits of a directory share one text vocabulary,
built from the texts of every manifest given on the first run. Running the command again
continues an interrupted run, or adds new manifests with the directory's own vocabulary.
`--frontend-from DIR` takes the vocabulary of another token directory (its `text/`) or model.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from codec.loading import load_codec
from data.manifest import read_manifest
from data.tokenize import GROUPINGS, resolve_frontend, tokenize_corpus


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codec", required=True,
                        help="codec directory (save_pretrained) or a hub id such as facebook/encodec_24khz")
    parser.add_argument("--manifest", required=True, action="append", type=Path,
                        help="manifest .jsonl to tokenize; repeat for several (train, dev, ...)")
    parser.add_argument("--out", required=True, type=Path, help="token directory (created, or continued)")
    text = parser.add_mutually_exclusive_group()
    text.add_argument("--frontend-from", type=Path, help="directory holding a saved text front-end (text_vocab.json)")
    text.add_argument("--frontend", choices=("phoneme", "bpe"), default="phoneme",
                      help="kind of front-end to build from the manifests' texts (default: phoneme)")
    parser.add_argument("--bpe-vocab-size", type=int, default=512, help="for --frontend bpe")
    parser.add_argument("--batch-seconds", type=float, default=60.0, help="padded audio per codec batch")
    parser.add_argument("--grouping", choices=GROUPINGS, default="frames",
                        help="frames: batch items of equal frame count (codes identical to encoding one by one "
                             "with Echo's codec); samples: only equal sample counts (exact for any codec); "
                             "padded: pad similar lengths (faster on small corpora, exact only for causal codecs)")
    parser.add_argument("--shard-size", type=int, default=1000, help="utterances per shard")
    parser.add_argument("--workers", type=int, default=0, help="processes reading audio")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    names = [path.stem for path in args.manifest]
    if len(set(names)) != len(names):
        parser.error(f"manifests need distinct file names (each name becomes a split); got {names}")
    utterances, splits = [], []
    for path, name in zip(args.manifest, names):
        part = read_manifest(path)
        utterances += part
        splits += [name] * len(part)
        print(f"{path}: {len(part)} utterances, {sum(u.duration for u in part) / 3600:.2f} h (split {name!r})")

    codec = load_codec(args.codec)
    print(f"codec {args.codec}: {codec.sample_rate} Hz, {codec.frame_rate:g} frames/s, "
          f"{codec.n_q} x {codec.codebook_size} codes")
    frontend = resolve_frontend(args.out, utterances, frontend_from=args.frontend_from, kind=args.frontend,
                                bpe_vocab_size=args.bpe_vocab_size)
    print(f"text: {frontend}")
    summary = tokenize_corpus(codec, frontend, utterances, args.out, splits=splits, batch_seconds=args.batch_seconds,
                              grouping=args.grouping, shard_size=args.shard_size, device=args.device,
                              workers=args.workers)
    print(summary)


if __name__ == "__main__":
    sys.exit(main())

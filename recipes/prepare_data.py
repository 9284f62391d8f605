"""Prepare a corpus: build the built-in synthetic one, or read LibriTTS / LJSpeech / VCTK / JSONL into manifests.

    python recipes/prepare_data.py synthetic --out runs/quickstart/corpus --hours 1
    python recipes/prepare_data.py libritts --root /data/LibriTTS_R --out runs/libritts/corpus
"""

import argparse

from data.prepare import add_arguments, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run(parser.parse_args())


if __name__ == "__main__":
    main()

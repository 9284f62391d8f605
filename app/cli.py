"""The `echo-tts` command."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from data import prepare

    parser = argparse.ArgumentParser(
        prog="echo-tts",
        description="Echo: zero-shot voice-cloning text-to-speech (a neural codec + VALL-E language models).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    prepare_parser = commands.add_parser(
        "prepare-data",
        help="build the synthetic corpus or read a real one into manifests",
        description=prepare.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prepare.add_arguments(prepare_parser)
    prepare_parser.set_defaults(handler=prepare.run)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    args.handler(args)


if __name__ == "__main__":
    main()

"""The `hetgmp` command. Each subcommand lives in `hetgmp.commands.<name>`,
which registers its flags and imports heavy modules only when it runs."""

from __future__ import annotations

import argparse
import importlib
import sys

from hetgmp.errors import HetGMPError

# Order is the pipeline's order; each module defines register(subparsers).
SUBCOMMANDS = ("prepare", "synth", "partition", "train", "predict", "export", "demo", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hetgmp",
        description="Graph-partitioned embedding training for CTR models (HET-GMP on PyTorch).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"hetgmp.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except HetGMPError as e:
        print(f"hetgmp {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hetgmp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

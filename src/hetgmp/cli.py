"""The `hetgmp` command. Each subcommand lives in `hetgmp.commands.<name>`,
which registers its flags and imports heavy modules only when it runs."""

from __future__ import annotations

import argparse
import importlib
import sys

from hetgmp.errors import HetGMPError, Interrupted

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
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage and its `error:` line (or the help)
        return e.code if isinstance(e.code, int) else 2
    try:
        return int(args.run(args) or 0)
    except Interrupted as e:
        print(f"{args.prog}: interrupted; {e}", file=sys.stderr)
        return 130
    except HetGMPError as e:
        print(f"{args.prog}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.filename is None:
            raise  # not about a path the user gave: a bug, shown with its traceback
        print(f"{args.prog}: error: {path_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{args.prog}: interrupted", file=sys.stderr)
        return 130


def path_error(e: OSError) -> str:
    """An operating-system error about a path, as a user's mistake: what, where, how to fix."""
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    return (f"{e.strerror or e} ({paths}): check the paths given on the command line: a file where a folder is "
            "expected or a folder where a file is, a parent folder that is a file or missing, or no permission")


if __name__ == "__main__":
    sys.exit(main())

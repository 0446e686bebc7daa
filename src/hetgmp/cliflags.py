"""Helpers for argparse: every multi-word flag also answers to the original's
underscore spelling (`--batch-size` and `--batch_size`), and help shows defaults."""

from __future__ import annotations

import argparse
from typing import Any


def new_parser(sub: argparse._SubParsersAction, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """Add a subcommand whose help lists every flag's default."""
    return sub.add_parser(
        name,
        help=help,
        description=description or help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def add_flag(parser: argparse.ArgumentParser, *names: str, **kwargs: Any) -> argparse.Action:
    """`add_argument` that also registers `--a_b` for every `--a-b` given.

    Example: add_flag(p, "--batch-size", "-b", type=int, default=8192)
    accepts --batch-size, --batch_size and -b, stored as args.batch_size.
    """
    spellings: list[str] = []
    for name in names:
        spellings.append(name)
        if name.startswith("--") and "-" in name[2:]:
            spellings.append("--" + name[2:].replace("-", "_"))
    return parser.add_argument(*dict.fromkeys(spellings), **kwargs)

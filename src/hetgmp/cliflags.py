"""Helpers for argparse: every multi-word flag also answers to the original's
underscore spelling (`--batch-size` and `--batch_size`), help shows defaults,
and every numeric flag states its range, checked at parse time:

    add_flag(p, "--lr", type=float, default=1e-3, range=Range(0, low_open=True))
    hetgmp train --lr -1   ->   hetgmp train: error: argument --lr: must be above 0, got -1.0 (exit 2)
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Range:
    """The values a numeric flag accepts: [low, high], either end open or absent.
    NaN and infinities are never accepted."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def problem(self, value: float) -> str | None:
        """Why `value` is out of range, or None when it is in."""
        if not math.isfinite(value):
            return f"must be a finite number ({self.describe()}), got {value}"
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        return f"must be {self.describe()}, got {value}" if too_low or too_high else None

    def describe(self) -> str:
        """"at least 1", "above 0", "in [0, 1]", "in (0, 1)", "at most 5" ..."""
        low, high = _number(self.low), _number(self.high)
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'above' if self.low_open else 'at least'} {low}"
        if self.high is not None:
            return f"{'below' if self.high_open else 'at most'} {high}"
        return "any finite number"

    def parser(self, kind: type) -> Callable[[str], Any]:
        """An argparse `type` that reads `kind` and refuses values out of range."""

        def parse(text: str) -> Any:
            try:
                value = kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'} {self.describe()}, got {text!r}") from None
            problem = self.problem(value)
            if problem:
                raise argparse.ArgumentTypeError(problem)
            return value

        parse.__name__ = kind.__name__  # argparse names the type in its own messages
        parse.range = self  # type: ignore[attr-defined]  # read by the CLI's range test
        return parse


def _number(value: float | None) -> str:
    return "" if value is None else str(int(value)) if float(value).is_integer() else f"{value:g}"


POSITIVE = Range(1)  # counts: at least 1
NON_NEGATIVE = Range(0)  # 0 means "off" or "none"
ABOVE_ZERO = Range(0, low_open=True)  # rates and scales
FRACTION = Range(0, 1)
SEED = Range(0, 2**32 - 1)  # numpy's and torch's seeds


def new_parser(sub: argparse._SubParsersAction, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """Add a subcommand whose help lists every flag's default; its errors start with its
    prog ("hetgmp prepare criteo"), as argparse's own do."""
    parser = sub.add_parser(
        name,
        help=help,
        description=description or help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.set_defaults(prog=parser.prog)
    return parser


def add_flag(parser: argparse.ArgumentParser, *names: str, range: Range | None = None, **kwargs: Any) -> argparse.Action:
    """`add_argument` that also registers `--a_b` for every `--a-b` given, and
    checks a numeric flag's `range` as it parses.

    Example: add_flag(p, "--batch-size", "-b", type=int, default=8192, range=POSITIVE)
    accepts --batch-size, --batch_size and -b, stored as args.batch_size.
    """
    if kwargs.get("type") in (int, float):
        if range is None:
            raise TypeError(f"numeric flag {names[0]} needs a range=")  # every numeric flag states its range
        kwargs["type"] = range.parser(kwargs["type"])
    spellings: list[str] = []
    for name in names:
        spellings.append(name)
        if name.startswith("--") and "-" in name[2:]:
            spellings.append("--" + name[2:].replace("-", "_"))
    action = parser.add_argument(*dict.fromkeys(spellings), **kwargs)
    if kwargs.get("action") is argparse.BooleanOptionalAction:
        # `--no-progress` comes with the action; the underscore spelling of the negation is added here.
        for name in names:
            if name.startswith("--") and "-" not in name[2:]:
                parser.add_argument(f"--no_{name[2:]}", dest=action.dest, action="store_false", help=argparse.SUPPRESS)
    return action

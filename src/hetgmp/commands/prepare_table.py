"""`hetgmp prepare table`: your own CSV/TSV or Parquet files -> dataset directory.

    hetgmp prepare table --input clicks.parquet --label click --dense price,age \\
        --sparse user,item,city --multi-hot tags --bag-size tags=8 --min-count 5 --output ds
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from hetgmp.cliflags import POSITIVE, add_flag, new_parser
from hetgmp.errors import HetGMPError

DESCRIPTION = (
    "Prepare a dataset from your own CSV/TSV (with or without a header, any delimiter, optionally gzipped) or Parquet "
    "files (one, several, or a folder): categorical columns label-encoded per field in sorted string order with "
    "missing as its own value (as for Criteo), dense columns transformed, multi-hot columns as fixed-size bags, "
    "then the seeded shuffle and split. The dataset folder format is described in the README."
)


def _columns(text: str | None) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip()) if text else ()


def _pairs(items: list[str], flag: str) -> dict[str, int]:
    """["a=3,b=5", "c=2"] -> {"a": 3, "b": 5, "c": 2}."""
    out: dict[str, int] = {}
    for item in (part for text in items for part in text.split(",") if part):
        column, _, value = item.rpartition("=")
        try:
            out[column] = int(value)
        except ValueError:
            raise HetGMPError(f"{flag} {item!r}: expected COLUMN=INTEGER, e.g. {flag} tags=8") from None
        if not column:
            raise HetGMPError(f"{flag} {item!r}: expected COLUMN=INTEGER, e.g. {flag} tags=8")
    return out


def _hash_flags(items: list[str]) -> tuple[int | None, dict[str, int]]:
    """--hash-buckets N (every categorical column) and/or COL=N (one column)."""
    everywhere = [i for i in items if "=" not in i]
    if len(everywhere) > 1:
        raise HetGMPError(f"--hash-buckets given {len(everywhere)} bucket counts for every column ({', '.join(everywhere)}): give one, and COLUMN=N for single columns")
    try:
        total = int(everywhere[0]) if everywhere else None
    except ValueError:
        raise HetGMPError(f"--hash-buckets {everywhere[0]!r}: expected an integer N or COLUMN=N") from None
    return total, _pairs([i for i in items if "=" in i], "--hash-buckets")


def register_table(datasets: argparse._SubParsersAction, add_common_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    p = new_parser(datasets, "table", "prepare your own CSV/TSV or Parquet files", DESCRIPTION)
    add_flag(p, "--input", "-i", required=True, type=Path, nargs="+", metavar="FILE", help="CSV/TSV (.gz too) or Parquet files, or folders of them, read in this order")
    add_flag(p, "--label", required=True, metavar="COL", help="the 0/1 label column")
    add_flag(p, "--dense", default=None, metavar="COLS", help="comma-separated numeric columns (missing is 0)")
    add_flag(p, "--sparse", default=None, metavar="COLS", help="comma-separated categorical columns, one value a row; None: every column not named elsewhere")
    add_flag(p, "--multi-hot", default=None, metavar="COLS", help="comma-separated bag columns: Parquet lists, or strings of values joined by --list-delimiter")
    add_flag(p, "--bag-size", action="append", default=[], metavar="COL=K",
             help="bag size of a multi-hot column (longer bags keep their first K values); default: the column's largest bag")
    add_flag(p, "--list-delimiter", default="|", help="what joins the values of a multi-hot string column")
    add_flag(p, "--hash-buckets", action="append", default=[], metavar="N|COL=N",
             help="hash values into N buckets instead of label-encoding them, for every categorical column (N) or one (COL=N)")
    add_flag(p, "--min-count", type=int, range=POSITIVE, default=1, metavar="K", help="values seen fewer than K times share one rare id per field (1: keep all)")
    add_flag(p, "--dense-transform", default="criteo", choices=("criteo", "log", "none"),
             help="criteo: log(x+1) if x > -1 else -1; log: sign(x) log(1+|x|); none: as is")
    add_flag(p, "--format", default="auto", choices=("auto", "csv", "parquet"), help="input format (auto: Parquet for .parquet/.pq/.parq names)")
    add_flag(p, "--delimiter", default=None, help="CSV field delimiter (default: tab for .tsv/.tab names, else comma); \\t for tab")
    add_flag(p, "--no-header", action="store_true", help="CSV files have no header line (columns are f0, f1, ... unless --column-names)")
    add_flag(p, "--column-names", default=None, metavar="NAMES", help="comma-separated names of the CSV columns, for files without a header line")
    add_common_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hetgmp.data.encode import PrepareConfig
    from hetgmp.data.table import TableSpec, prepare_from_table
    from hetgmp.data.table_input import CsvOptions

    hash_all, hash_columns = _hash_flags(args.hash_buckets)
    names = _columns(args.column_names) or None
    delimiter = "\t" if args.delimiter == "\\t" else args.delimiter
    if delimiter is not None and len(delimiter) != 1:
        raise HetGMPError(f"--delimiter is {args.delimiter!r}; give one character, e.g. ',' or '\\t'")
    spec = TableSpec(
        inputs=list(args.input), label=args.label, dense=_columns(args.dense), sparse=_columns(args.sparse) if args.sparse else None,
        multi_hot=_columns(args.multi_hot), bag_sizes=_pairs(args.bag_size, "--bag-size"), hash_buckets=hash_all, hash_columns=hash_columns,
        min_count=args.min_count, dense_transform=args.dense_transform, list_delimiter=args.list_delimiter, format=args.format,
        csv=CsvOptions(delimiter=delimiter, header=not args.no_header and names is None, column_names=names, block_size=args.block_size),
    )
    config = PrepareConfig(input=args.input[0], output=args.output, seed=args.seed, val_fraction=args.val_fraction, force=args.force,
                           progress=args.progress, block_size=args.block_size)
    meta = prepare_from_table(spec, config)
    bags = meta.extra.get("bag_sizes")
    print(
        f"{args.output}: {meta.train_rows:,} train + {meta.test_rows:,} test rows, {meta.num_ids:,} ids over "
        f"{meta.num_fields} fields ({', '.join(meta.extra['vocab']['fields'])}){f', bag sizes {bags}' if bags else ''}, "
        f"{meta.num_dense} dense, seed {meta.seed}, {meta.extra['seconds']} s"
    )
    return 0

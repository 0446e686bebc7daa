"""`hetgmp prepare criteo|avazu|table`: raw download or a user's own files -> dataset directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hetgmp.cliflags import SEED, Range, add_flag, new_parser

INPUTS = {
    "criteo": "dac.tar.gz (train.txt is streamed out of it), train.txt or train.txt.gz",
    "avazu": "train.gz or train.csv (with its header line)",
}


def _add_common_flags(p: argparse.ArgumentParser) -> None:
    add_flag(p, "--output", "-o", required=True, type=Path, help="dataset directory to create (six .npy arrays, vocab.npz, meta.json)")
    add_flag(p, "--seed", type=int, range=SEED, default=0, help="seed of the row shuffle, recorded in meta.json")
    add_flag(p, "--val-fraction", type=float, range=Range(0, 1, high_open=True), default=0.1, help="fraction of rows, last in the shuffled order, kept as the test split")
    add_flag(p, "--force", action="store_true", help="replace --output if it exists (only once the new one is complete)")
    add_flag(p, "--block-size", type=int, range=Range(1024), default=4 << 20, help="bytes of text parsed per batch; up to 32 blocks are buffered ahead")
    add_flag(p, "--progress", action=argparse.BooleanOptionalAction, default=None,
             help="progress bars on stderr; by default only when stderr is a terminal")


def register(sub: argparse._SubParsersAction) -> None:
    parser = new_parser(sub, "prepare", "turn a raw CTR download or your own table into the dataset arrays (sorted label encoding, seeded split)")
    datasets = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name, inputs in INPUTS.items():
        p = new_parser(datasets, name, f"Prepare {name.capitalize()} from {inputs}.")
        add_flag(p, "--input", "-i", required=True, type=Path, help=f"the raw file: {inputs}")
        _add_common_flags(p)
        add_flag(p, "--skip-bad-rows", action="store_true", help="skip malformed rows (counted in meta.json) instead of stopping at the first")
        p.set_defaults(run=run)
    from hetgmp.commands.prepare_table import register_table

    register_table(datasets, _add_common_flags)


def run(args: argparse.Namespace) -> int:
    from hetgmp.compiling import announce_compiles
    from hetgmp.data.encode import PrepareConfig, prepare_table
    from hetgmp.data.avazu import AVAZU
    from hetgmp.data.criteo import CRITEO

    announce_compiles(args.prog)
    layout = {"criteo": CRITEO, "avazu": AVAZU}[args.dataset]
    config = PrepareConfig(
        input=args.input,
        output=args.output,
        seed=args.seed,
        val_fraction=args.val_fraction,
        skip_bad_rows=args.skip_bad_rows,
        force=args.force,
        progress=args.progress,
        block_size=args.block_size,
    )
    meta = prepare_table(layout, config)
    extra = meta.extra
    print(
        f"{args.output}: {meta.train_rows:,} train + {meta.test_rows:,} test rows, "
        f"{meta.num_ids:,} ids over {meta.num_fields} fields, {meta.num_dense} dense, seed {meta.seed}, {extra['seconds']} s"
    )
    if extra["bad_rows_skipped"]:
        print(f"skipped {extra['bad_rows_skipped']:,} bad rows; the first: {extra['first_bad_row']}", file=sys.stderr)
    return 0

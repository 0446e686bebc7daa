"""`hetgmp synth`: write a synthetic Criteo-shaped dataset directory."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from hetgmp.cliflags import ABOVE_ZERO, FRACTION, NON_NEGATIVE, POSITIVE, SEED, Range, add_flag, new_parser

# (flag, SynthConfig field, accepted values, help). Defaults come from SynthConfig itself.
_KNOBS = (
    ("--groups", "groups", NON_NEGATIVE, "latent communities; 0 picks rows // 500, clamped to [16, 4096]"),
    ("--group-exponent", "group_exponent", NON_NEGATIVE, "power-law exponent of community sizes"),
    ("--in-group", "in_group", FRACTION, "probability that a large field's id comes from the row's community pool"),
    ("--pool-fraction", "pool_fraction", ABOVE_ZERO, "community pool size per expected community row, times min(1, cap/rows)"),
    ("--pool-overlap", "pool_overlap", Range(0, 1, high_open=True), "fraction of a community pool shared with the previous community's"),
    ("--pool-zipf", "pool_zipf", NON_NEGATIVE, "Zipf exponent of id popularity inside a community pool"),
    ("--zipf", "zipf", NON_NEGATIVE, "Zipf exponent of global id popularity in every field"),
    ("--large-field", "large_field", NON_NEGATIVE, "fields with a larger vocabulary cap draw from community pools"),
    ("--signal", "signal", NON_NEGATIVE, "multiplier on the planted per-id weights and interaction terms"),
    ("--pair-scale", "pair_scale", NON_NEGATIVE, "scale of the pairwise interaction terms"),
    ("--dense-signal", "dense_signal", NON_NEGATIVE, "scale of the dense features' weights"),
    ("--click-rate", "click_rate", Range(0, 1, low_open=True, high_open=True), "mean click probability the bias is solved for"),
    ("--chunk-rows", "chunk_rows", POSITIVE, "rows generated per chunk (part of the seed: changing it changes the data)"),
)


def register(sub: argparse._SubParsersAction) -> None:
    from hetgmp.data.synth_world import SynthConfig

    p = new_parser(
        sub,
        "synth",
        help="generate a synthetic Criteo-shaped dataset",
        description="Generate a synthetic Criteo-shaped dataset: 26 sparse fields with Criteo's field sizes as "
        "vocabulary caps, power-law id popularity, latent communities sharing ids in the large fields, 13 "
        "log-transformed dense features, and labels from a planted logistic model whose own test AUC is stored "
        "in meta.json as planted_auc.",
    )
    add_flag(p, "--rows", type=int, range=Range(2), required=True, help="total rows; the last --test-fraction of them form the test split")
    add_flag(p, "--output", "-o", required=True, help="dataset directory to write")
    add_flag(p, "--seed", type=int, range=SEED, default=0, help="random seed: same seed and flags give byte-identical arrays")
    add_flag(p, "--scale", type=float, range=ABOVE_ZERO, default=1.0, help="multiplier on Criteo's 26 field sizes (each cap at least 2)")
    add_flag(p, "--test-fraction", type=float, range=Range(0, 1, low_open=True, high_open=True), default=0.1, help="fraction of rows in the test split")
    add_flag(p, "--force", action="store_true", help="replace an existing output directory")
    add_flag(p, "--save-groups", action="store_true", help="also write each row's community (train_groups.npy, test_groups.npy)")
    add_flag(p, "--multi-hot-sizes", default=None, metavar="K1,K2,...",
             help="multi-hot bags: ids per row of each of the 26 fields (e.g. MLPerf's 3,2,1,2,6,1,1,1,1,7,3,8,1,6,9,5,1,1,1,12,"
                  "100,27,10,3,1,1), or one number for all; a bag holds 1 to K ids, padded with its field's padding id "
                  "(local id 0); default: one id per field")
    add_flag(p, "--progress", action=argparse.BooleanOptionalAction, default=None,
             help="a progress bar on stderr; by default from 500k rows on, and only when stderr is a terminal")
    defaults = {f.name: f.default for f in dataclasses.fields(SynthConfig)}
    for flag, name, accepted, text in _KNOBS:
        add_flag(p, flag, dest=name, type=type(defaults[name]), range=accepted, default=defaults[name], help=text)
    p.set_defaults(run=run)


def show_progress(asked: bool | None, rows: int) -> bool:
    """--progress / --no-progress, else a bar for 500k rows or more when stderr is a terminal."""
    return asked if asked is not None else rows >= 500_000 and sys.stderr.isatty()


def _bags(sizes: list[int]) -> str:
    return f" ({sum(sizes)} ids a row in bags)" if sum(sizes) > len(sizes) else ""


def run(args: argparse.Namespace) -> int:
    from hetgmp.compiling import announce_compiles
    from hetgmp.data.synth_world import parse_bag_sizes
    from hetgmp.data.synthetic import generate_synthetic

    knobs = {name: getattr(args, name) for _, name, _, _ in _KNOBS}
    if args.multi_hot_sizes is not None:
        knobs["bag_sizes"] = parse_bag_sizes(args.multi_hot_sizes)
    announce_compiles(args.prog)
    meta = generate_synthetic(
        args.output, args.rows, seed=args.seed, scale=args.scale, test_fraction=args.test_fraction,
        force=args.force, progress=show_progress(args.progress, args.rows), save_groups=args.save_groups, **knobs,
    )
    extra = meta.extra
    print(
        f"wrote {args.output}: {meta.train_rows} train + {meta.test_rows} test rows, {meta.num_ids} ids over "
        f"{meta.num_fields} fields{_bags(meta.bag_sizes)}, click rate {extra['click_rate']:.4f}, planted AUC {extra['planted_auc']:.4f} "
        f"(train {extra['planted_auc_train']:.4f}), {extra['seconds']:.1f} s"
    )
    return 0

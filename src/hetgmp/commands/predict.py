"""`hetgmp predict`: score a dataset split or a raw file with a trained model.

    hetgmp predict --checkpoint runs/wdl-20261202-101500 --data DIR --output preds.npy [--split test|train]
    hetgmp predict --checkpoint CKPT --input day_24.gz --format criteo --vocab DIR --output preds.npy

Writes one float32 probability per row, in row order; prints AUC, log loss and
accuracy when the rows have labels (see hetgmp.serve.predict).
"""

from __future__ import annotations

import argparse

from hetgmp.cliflags import POSITIVE, add_flag, new_parser


def add_checkpoint_flag(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, as predict and export take it."""
    add_flag(parser, "--checkpoint", required=True, metavar="DIR",
             help="a training run's model: its --checkpoint-dir or run folder (the latest checkpoint), or one step-NNNNNN folder")


def register(sub: argparse._SubParsersAction) -> None:
    p = new_parser(
        sub, "predict", help="score a dataset split or raw rows with a trained model",
        description="Score rows with the latest checkpoint of a training run (one worker or many, any plan): a prepared "
        "dataset's split (--data; for a model trained on multi-hot bags, a dataset with the same bag sizes), or a raw "
        "Criteo/Avazu file encoded with the training set's vocabulary (--input, --format, --vocab; one-hot models only; "
        "a value never seen in training takes its field's out-of-vocabulary id, num_ids + field). "
        "Writes one float32 probability per row, in row order, and prints AUC/logloss when the rows have labels.",
    )
    add_checkpoint_flag(p)
    add_flag(p, "--output", "-o", required=True, help="probabilities to write (.npy, float32, one per row)")
    add_flag(p, "--data", metavar="DIR", help="dataset folder (from `hetgmp prepare`/`synth`) with the training vocabulary and bag sizes")
    add_flag(p, "--split", choices=("test", "train"), default="test", help="which split of --data to score")
    add_flag(p, "--input", metavar="RAW", help="raw rows to score (text, .gz or, for criteo, dac.tar.gz), with or without labels")
    add_flag(p, "--format", choices=("criteo", "avazu"), help="the raw file's format (with --input)")
    add_flag(p, "--vocab", metavar="DIR", help="the training dataset folder holding vocab.npz (with --input)")
    add_flag(p, "--batch-size", type=int, range=POSITIVE, default=65536, help="rows of --data scored at once (bounds the memory; raw input goes in 4 MiB blocks of text)")
    add_flag(p, "--device", choices=("cpu", "cuda", "auto"), default="auto", help="where to score (auto: CUDA when available)")
    add_flag(p, "--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar (stderr)")
    p.set_defaults(run=run)


def _check_sources(args: argparse.Namespace) -> None:
    from hetgmp.errors import HetGMPError

    if args.batch_size < 1:
        raise HetGMPError(f"--batch-size must be at least 1, got {args.batch_size}")
    if (args.data is None) == (args.input is None):
        raise HetGMPError("give either --data DIR (a prepared dataset) or --input RAW --format criteo|avazu --vocab DIR (raw rows)")
    if args.input is not None and (args.format is None or args.vocab is None):
        raise HetGMPError("--input RAW needs --format criteo|avazu and --vocab DIR (the training dataset folder, for its vocab.npz)")


def run(args: argparse.Namespace) -> int:
    _check_sources(args)
    from hetgmp.distributed import pick_device
    from hetgmp.serve import load_trained
    from hetgmp.serve.predict import check_output_folder, predict, progress_bar, split_batches

    output = check_output_folder(args.output)
    device = pick_device(args.device, 0)
    trained = load_trained(args.checkpoint)
    if args.data is not None:
        batches, total = split_batches(args.data, args.split, trained, args.batch_size)
        source = f"{args.data} {args.split} split"
    else:
        from hetgmp.serve.raw import FORMATS, RawRows, field_lookups  # numba and pyarrow: only for raw rows

        layout = FORMATS[args.format]
        batches, total = RawRows(args.input, layout, field_lookups(args.vocab, layout, trained)), None
        source = args.input
    scorer = trained.scorer(device)
    with progress_bar(args.progress, total, "rows") as bar:
        result = predict(scorer, batches, output, device, bar)
    rate = result.rows / max(result.seconds, 1e-9)
    print(f"scored {result.rows} rows of {source} with {trained.describe()} on {device.type} in {result.seconds:.1f} s ({rate:,.0f} rows/s)")
    if result.metrics is not None:
        m = result.metrics
        print(f"auc {m['auc']:.6f} logloss {m['logloss']:.6f} acc {m['accuracy']:.4f} rows {result.rows}")
    print(f"wrote {output}")
    return 0

"""`hetgmp demo`: the whole pipeline on synthetic data, on CPU, with 2 workers.

    synth (--rows, 90% train) -> partition (2 parts, mirror lists) -> train (2 workers,
    1% mirrors, bound 100, one epoch) -> evaluate -> a short random-placement run

It prints the AUC reached next to the planted model's AUC (the best any model
can do on this data), and the communication the partition saves over random
placement: the partitioner's own estimate (plan.json) and the rows actually
fetched per step in both runs. Everything lands in --output:

    data/          the synthetic dataset        plan.npz, plan.json   the partition (partition.log)
    train.log      TRAIN/EVAL lines             metrics.jsonl         the partitioned run
    random.jsonl   the random-placement run's metrics
    model/         the partitioned run's model   random-model/          the random-placement run's
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from hetgmp.cliflags import ABOVE_ZERO, FRACTION, NON_NEGATIVE, POSITIVE, SEED, Range, add_flag, new_parser
from hetgmp.errors import HetGMPError

WORKERS = 2


def register(sub: argparse._SubParsersAction) -> None:
    parser = new_parser(sub, "demo", help="the whole pipeline on synthetic data: CPU, 2 workers, a few minutes")
    add_flag(parser, "--output", default="hetgmp-demo", help="directory for the demo's data, plan, logs and metrics")
    add_flag(parser, "--rows", type=int, range=Range(100), default=200_000, help="synthetic rows (90%% train, 10%% test)")
    add_flag(parser, "--scale", type=float, range=ABOVE_ZERO, default=0.05, help="vocabulary scale of the synthetic data (1.0 = Criteo-like)")
    add_flag(parser, "--batch-size", type=int, range=POSITIVE, default=1024, help="samples per step on each worker")
    add_flag(parser, "--epochs", type=float, range=ABOVE_ZERO, default=1.0, help="passes over the training split")
    add_flag(parser, "--store-rate", type=float, range=FRACTION, default=0.01, help="fraction of each worker's candidate list kept as mirrors")
    add_flag(parser, "--bound", type=int, range=NON_NEGATIVE, default=100, help="staleness bound of the mirrors")
    add_flag(parser, "--rounds", type=int, range=NON_NEGATIVE, default=5, help="partition refinement rounds")
    add_flag(parser, "--random-steps", type=int, range=NON_NEGATIVE, default=20, help="steps of the random-placement comparison run (0 skips it)")
    add_flag(parser, "--seed", type=int, range=SEED, default=0, help="seed of the data, the partition and the training")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hetgmp.compiling import announce_compiles

    announce_compiles(args.prog)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    data, plan = out / "data", out / "plan.npz"
    print(f"hetgmp demo: {args.rows:,} synthetic rows, {WORKERS} CPU workers, {args.store_rate:.0%} mirrors, bound {args.bound}; files in {out}")
    meta, seconds = timed(make_data, args, data)
    print(f"  data       {meta.num_ids:,} ids over {meta.num_fields} fields, {meta.train_rows:,} train / {meta.test_rows:,} test rows ({seconds:.1f} s)")
    summary, seconds = timed(make_plan, args, data, plan)
    print(f"  partition  {estimate_line(summary)} ({seconds:.1f} s)")
    _, seconds = timed(train_partitioned, args, out, data, plan)
    final = last_record(out / "metrics.jsonl", "eval")
    trained = last_record(out / "metrics.jsonl", "train")
    print(f"  training   {trained['step']} steps in {seconds:.1f} s (process start and evaluation included)")
    print(f"  AUC reached {final['auc']:.4f} (planted model: {meta.extra.get('planted_auc', float('nan')):.4f}), logloss {final['logloss']:.4f}")
    if args.random_steps:
        timed(train_random, args, out, data)
        random_fetched = mean_fetched(out / "random.jsonl")
        print(f"  {measured_line(mean_fetched(out / 'metrics.jsonl'), random_fetched)}")
    return 0


def timed(fn, *args: Any) -> tuple[Any, float]:
    began = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - began


def make_data(args: argparse.Namespace, data: Path):
    from hetgmp.data.synthetic import generate_synthetic

    return generate_synthetic(data, args.rows, seed=args.seed, scale=args.scale, force=True)


def make_plan(args: argparse.Namespace, data: Path, plan: Path) -> dict[str, Any]:
    from hetgmp.cli import main

    # The partitioner's round-by-round report goes to partition.log; the demo prints its summary.
    argv = ["partition", str(data), "--parts", str(WORKERS), "--output", str(plan), "--rounds", str(args.rounds),
            "--batch-size", str(args.batch_size), "--store-rate", str(args.store_rate), "--seed", str(args.seed)]
    with open(plan.with_name("partition.log"), "w") as log, contextlib.redirect_stdout(log):
        code = main(argv)
    if code != 0:
        raise HetGMPError(f"the demo's partition step failed (its error is printed above; its log is {plan.with_name('partition.log')})")
    return json.loads(plan.with_suffix(".json").read_text())


def train_argv(args: argparse.Namespace, data: Path, metrics: Path, model: Path) -> list[str]:
    return ["train", "--data", str(data), "--device", "cpu", "--batch-size", str(args.batch_size), "--bound", str(args.bound),
            "--seed", str(args.seed), "--metrics", str(metrics), "--log-every", "20", "--checkpoint-dir", str(model)]


def train_partitioned(args: argparse.Namespace, out: Path, data: Path, plan: Path) -> None:
    from hetgmp.train.launch import launch_local

    for name in ("metrics.jsonl", "train.log"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "model", ignore_errors=True)  # an earlier demo's
    argv = train_argv(args, data, out / "metrics.jsonl", out / "model") + [
        "--partition", str(plan), "--store-rate", str(args.store_rate), "--epochs", str(args.epochs), "--val",
        "--output", str(out / "train.log"),
    ]
    if launch_local(WORKERS, argv) != 0:
        raise HetGMPError("the demo's partitioned training run failed (its errors are printed above)")


def train_random(args: argparse.Namespace, out: Path, data: Path) -> None:
    from hetgmp.train.launch import launch_local

    (out / "random.jsonl").unlink(missing_ok=True)
    shutil.rmtree(out / "random-model", ignore_errors=True)
    argv = train_argv(args, data, out / "random.jsonl", out / "random-model") + ["--iter", str(args.random_steps), "--log-every", str(args.random_steps), "--no-progress"]
    print(f"  comparison {args.random_steps} steps with random placement, no mirrors:")
    if launch_local(WORKERS, argv) != 0:
        raise HetGMPError("the demo's random-placement run failed (its errors are printed above)")


def records(path: Path, phase: str) -> list[dict[str, Any]]:
    found = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in found if r["phase"] == phase]


def last_record(path: Path, phase: str) -> dict[str, Any]:
    found = records(path, phase)
    if not found:
        raise HetGMPError(f"{path} holds no {phase} record: the training run ended early (see its log)")
    return found[-1]


def mean_fetched(path: Path) -> float:
    """Rows fetched per step per worker over the whole run (TRAIN lines weighted by their steps)."""
    lines = records(path, "train")
    steps = [b["step"] - a["step"] for a, b in zip([{"step": 0}, *lines], lines)]
    return sum(n * r.get("rows_fetched", 0.0) for n, r in zip(steps, lines)) / max(1, sum(steps))


def estimate_line(summary: dict[str, Any]) -> str:
    """The partitioner's estimate of remote rows per batch: random -> partitioned -> with mirrors."""
    remote = summary["remote_rows_per_batch"]
    random, parted = remote["random"]["count"], remote["partitioned"]["count"]
    mirrored = summary["remote_rows_per_batch_with_mirrors"]["count"]
    return (f"estimated remote rows per batch: {random:.0f} random -> {parted:.0f} partitioned -> {mirrored:.0f} with mirrors "
            f"({1 - mirrored / random:.1%} less communication than random placement)")


def measured_line(ours: float, random: float) -> str:
    saved = 1 - ours / random if random else float("nan")
    return (f"measured   rows fetched per step per worker: {ours:.0f} partitioned with mirrors vs "
            f"{random:.0f} random placement ({saved:.1%} less communication)")

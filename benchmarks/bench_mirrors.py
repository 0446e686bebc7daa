"""Rows fetched and pushed per step in real `hetgmp train` runs: mirror rankings, worker counts, bounds.

For each worker count P, makes `hetgmp synth --rows ROWS` data once, one plan per ranking
(`hetgmp partition --ranking original|staleness --bound B`), then trains with `--nproc P` on
this host for every (ranking, bound, table optimizer) asked for, and prints one markdown
table of the per-step counters of the TRAIN lines after the first (which holds warm-up):
rows fetched, rows pushed, mirrors read fresh and refreshed.

    python benchmarks/bench_mirrors.py --nproc 2 4 --rankings original staleness --bounds 100
    python benchmarks/bench_mirrors.py --nproc 2 --bounds 0 100 --sparse-optimizers sgd rowwise_adagrad
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

COUNTERS = ("rows_fetched", "rows_pushed", "mirror_hits", "mirror_refreshes")


def hetgmp(*argv: str) -> float:
    began = time.perf_counter()
    print("+ hetgmp", " ".join(argv), flush=True)
    subprocess.run([sys.executable, "-m", "hetgmp.cli", *argv], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def make_plan(args: argparse.Namespace, data: Path, parts: int, ranking: str, bound: int) -> Path:
    plan = args.work / f"plan-{args.rows}-{parts}-{ranking}-{bound if ranking == 'staleness' else 'any'}.npz"
    if not plan.is_file():
        hetgmp("partition", str(data), "--parts", str(parts), "--output", str(plan), "--batch-size", str(args.batch_size),
               "--gpus-per-node", str(parts), "--ranking", ranking, "--bound", str(bound))
    return plan


def train(args: argparse.Namespace, data: Path, plan: Path, parts: int, bound: int, sparse_optimizer: str) -> dict:
    metrics = args.work / f"{plan.stem}-b{bound}-{sparse_optimizer}.jsonl"
    metrics.unlink(missing_ok=True)
    seconds = hetgmp("train", "--data", str(data), "--model", args.model, "--nproc", str(parts), "--device", "cpu",
                     "--batch-size", str(args.batch_size), "--iter", str(args.iter), "--log-every", str(args.log_every),
                     "--partition", str(plan), "--store-rate", str(args.store_rate), "--bound", str(bound),
                     "--sparse-optimizer", sparse_optimizer, "--metrics", str(metrics), "--no-progress")
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    train_lines = [r for r in lines if r["phase"] == "train"][1:]
    return {k: statistics.mean(r.get(k, 0.0) for r in train_lines) for k in COUNTERS} | {"seconds": seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/hetgmp-bench-mirrors"))
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--nproc", type=int, nargs="+", default=[2])
    p.add_argument("--rankings", nargs="+", default=["original", "staleness"], choices=["original", "staleness"])
    p.add_argument("--bounds", type=int, nargs="+", default=[100])
    p.add_argument("--sparse-optimizers", nargs="+", default=["sgd"], choices=["sgd", "rowwise_adagrad"])
    p.add_argument("--model", default="wdl")
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--store-rate", type=float, default=0.01)
    p.add_argument("--iter", type=int, default=60)
    p.add_argument("--log-every", type=int, default=10)
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / f"synth-{args.rows}"
    if not (data / "meta.json").is_file():
        hetgmp("synth", "--rows", str(args.rows), "--output", str(data))
    rows = []
    for parts in args.nproc:
        for ranking in args.rankings:
            for bound in args.bounds:
                plan = make_plan(args, data, parts, ranking, bound)
                for opt in args.sparse_optimizers:
                    r = train(args, data, plan, parts, bound, opt)
                    rows.append(f"| {parts} | {ranking} | {bound} | {opt} | {r['rows_fetched']:,.0f} | {r['rows_pushed']:,.0f} | "
                                f"{r['mirror_hits']:,.0f} | {r['mirror_refreshes']:,.0f} | {r['seconds']:.0f} |")
    print(f"\n`hetgmp train --device cpu` on {args.rows:,} synth rows, {args.model}, batch {args.batch_size}/worker, "
          f"{args.iter} steps, {args.store_rate:g} mirrors; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; per step, "
          "mean over the TRAIN lines after the first\n")
    print("| workers | ranking | bound | table optimizer | rows fetched | rows pushed | mirrors read fresh | mirrors refreshed | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

"""Throughput and AUC of `hetgmp train` end to end (data in memory, loop, exchange, evaluation).

Makes a synthetic dataset (and, for several workers, a plan) under --work once,
then trains each model for --iter steps and prints one markdown table:
steady-state samples/s per worker and in total (median of the TRAIN lines
after the first, which holds warm-up), rows fetched per step, final AUC, wall
time. Several workers run under torchrun on this host. `--step fast general`
trains each model once per step kind (one GPU: the fast step against the
general one, in one run); `--amp` and `--compile` pass through to the fast step.

    python benchmarks/bench_train.py --device cuda                         # one GPU, WDL/DCN/DFM
    python benchmarks/bench_train.py --device cuda --models wdl --step fast general   # one GPU, fast vs general step
    python benchmarks/bench_train.py --device cuda --nproc 2 --bound 100   # two GPUs, a plan, 1% mirrors
    python benchmarks/bench_train.py --device cuda --nproc 2 --bound 100 --sparse-optimizer sgd --step fast general
                                                          # two GPUs: the sharded fast step against the general one
    python benchmarks/bench_train.py --device cpu --rows 200000 --iter 40 --batch-size 1024 --models wdl   # smoke run
    python benchmarks/bench_train.py --device cuda --models dlrm dcnv2 --model-shape mlperf --embed-dim 128 --amp bf16 --compile \
        --multi-hot-sizes 3,2,1,2,6,1,1,1,1,7,3,8,1,6,9,5,1,1,1,12,100,27,10,3,1,1        # MLPerf's bags, one GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from hetgmp.models.shapes import PRESETS


def run(cmd: list[str], env: dict[str, str] | None = None) -> float:
    began = time.perf_counter()
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - began


def prepare(args: argparse.Namespace) -> tuple[Path, Path | None]:
    bags = ["--multi-hot-sizes", args.multi_hot_sizes] if args.multi_hot_sizes else []
    data = args.work / (f"synth-{args.rows}" + (f"-bags-{args.multi_hot_sizes.replace(',', '_')}" if bags else ""))
    if not (data / "meta.json").is_file():
        run([sys.executable, "-m", "hetgmp.cli", "synth", "--rows", str(args.rows), "--output", str(data), "--scale", str(args.scale), *bags])
    if args.nproc == 1 or args.no_plan:
        return data, None
    plan = args.work / f"plan-{args.rows}-{args.nproc}.npz"
    if not plan.is_file():
        run([sys.executable, "-m", "hetgmp.cli", "partition", str(data), "--parts", str(args.nproc), "--output", str(plan),
             "--batch-size", str(args.batch_size), "--gpus-per-node", str(args.nproc), "--device", args.device])
    return data, plan


def train(args: argparse.Namespace, model: str, step: str, data: Path, plan: Path | None) -> dict:
    placement = "random" if plan is None else "plan"
    fast_flags = ["--amp", args.amp] + (["--compile"] if args.compile else [])
    shaped = model in PRESETS  # the models that take --model-shape
    tag = f"{step}-{args.amp}-{args.optimizer}-{args.sparse_optimizer}" + ("-compile" if args.compile else "") + (
        f"-{args.model_shape}" if shaped else "")
    out = args.work / f"run-{model}-{args.nproc}-{placement}-{args.bound}-{args.batch_size}-{args.embed_dim}-{tag}"
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    (out / "train.log").unlink(missing_ok=True)  # appended to by a run: its first line names the step taken
    flags = ["train", "--data", str(data), "--model", model, "--device", args.device, "--batch-size", str(args.batch_size),
             "--embed-dim", str(args.embed_dim), "--iter", str(args.iter), "--log-every", str(args.log_every), "--val",
             "--bound", str(args.bound), "--metrics", str(metrics), "--output", str(out / "train.log"), "--no-progress",
             "--step", step, "--optimizer", args.optimizer, "--sparse-optimizer", args.sparse_optimizer,
             *(fast_flags if step != "general" else []), *(["--model-shape", args.model_shape] if shaped else [])]
    if plan is not None:
        flags += ["--partition", str(plan), "--store-rate", str(args.store_rate)]
    if args.nproc == 1:
        seconds = run([sys.executable, "-m", "hetgmp.cli", *flags])
    else:
        seconds = run(["torchrun", "--standalone", "--nproc-per-node", str(args.nproc), "-m", "hetgmp.cli", *flags], env=dict(os.environ))
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    lines = [r for r in records if r["phase"] == "train"][1:] or [r for r in records if r["phase"] == "train"]
    final = [r for r in records if r["phase"] == "eval"][-1]
    return {
        "model": model, "step": step_taken(out / "train.log"), "per_worker": statistics.median(r["samples_per_s_per_worker"] for r in lines),
        "total": statistics.median(r["samples_per_s"] for r in lines),
        "fetched": statistics.median(r.get("rows_fetched", 0.0) for r in lines), "auc": final["auc"], "seconds": seconds,
    }


def step_taken(log: Path) -> str:
    """The step the run's start-up line names ("fast" or "general")."""
    head = log.read_text().splitlines()[0]
    return head.split("; step ")[-1].split(" ")[0] if "; step " in head else "?"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/hetgmp-bench-train"))
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--models", nargs="+", default=["wdl", "dcn", "dfm"])
    p.add_argument("--multi-hot-sizes", default=None, help="synthesise multi-hot bags (hetgmp synth --multi-hot-sizes)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--embed-dim", type=int, default=16)
    p.add_argument("--model-shape", default="default", choices=["default", "mlperf"], help="dlrm's and dcnv2's layer sizes (hetgmp train --model-shape)")
    p.add_argument("--iter", type=int, default=200)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--bound", type=int, default=0)
    p.add_argument("--store-rate", type=float, default=0.01)
    p.add_argument("--step", nargs="+", default=["auto"], choices=["auto", "fast", "general"],
                   help="training step(s) to measure, each model once per step")
    p.add_argument("--amp", default="none", choices=["none", "bf16"], help="--amp of the fast step")
    p.add_argument("--compile", action="store_true", help="--compile of the fast step")
    p.add_argument("--optimizer", default="adam", choices=["adam", "sgd"], help="the dense layers' optimizer")
    p.add_argument("--sparse-optimizer", default="rowwise_adagrad", choices=["rowwise_adagrad", "sgd"],
                   help="the table's optimizer")
    p.add_argument("--no-plan", action="store_true", help="random owners and no mirrors (row sharding as TorchRec/HugeCTR do it)")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data, plan = prepare(args)
    results = [train(args, model, step, data, plan) for model in args.models for step in args.step]
    print(f"\n{args.nproc} worker(s) on {args.device}, batch {args.batch_size}/worker, d={args.embed_dim}, "
          f"{args.iter} steps, bound {args.bound}, {'plan, store rate ' + str(args.store_rate) if plan else 'random owners'}, "
          f"{args.rows:,} synthetic rows{', bags ' + args.multi_hot_sizes if args.multi_hot_sizes else ''}, dense {args.optimizer}, table {args.sparse_optimizer}, amp {args.amp}{', compiled' if args.compile else ''}\n")
    print("| model | step | samples/s per worker | samples/s total | rows fetched/step | AUC | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['step']} | {r['per_worker']:.3g} | {r['total']:.3g} | {r['fetched']:.0f} | {r['auc']:.4f} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()

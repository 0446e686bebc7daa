"""Benchmark `hetgmp partition`: quality and time of ours against the original algorithm.

    python benchmarks/bench_partition.py --rows 2000000                 # CPU: random / original / ours
    python benchmarks/bench_partition.py --device cuda --rows 45840617 --data DIR

Generates `hetgmp synth --rows ROWS` into --data when that folder does not
exist (90% of the rows are train rows). Each algorithm runs as its own
`hetgmp partition` process, so its peak memory and CPU seconds (user + sys)
are its own; the load average before each run is printed, since on a shared
machine other processes stretch the wall time. numba's first-compile time
is measured once on a tiny graph with an empty cache. Prints a markdown
table (and writes it with the raw summaries to --json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2_000_000, help="synth rows to generate when --data is absent")
    p.add_argument("--data", default=None, help="dataset folder (default: $TMPDIR/hetgmp_synth_<rows>)")
    p.add_argument("--parts", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--store-rate", type=float, default=0.01)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--algorithms", default=None,
                   help="comma list of ALGORITHM[:RANKING], e.g. fast,fast:original,original (default: fast,original on cpu, fast on "
                        "cuda); without a ranking, ours takes the CLI's default and the original algorithm the original's")
    p.add_argument("--bound", type=int, default=100, help="the bound the staleness ranking assumes")
    p.add_argument("--skip-compile", action="store_true", help="do not measure numba's first compile")
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args()


def ensure_data(args: argparse.Namespace) -> Path:
    data = Path(args.data or Path(tempfile.gettempdir()) / f"hetgmp_synth_{args.rows}")
    if (data / "train_sparse_feats.npy").is_file():
        return data
    from hetgmp.data.synthetic import generate_synthetic

    t = time.perf_counter()
    generate_synthetic(data, rows=args.rows, seed=0, scale=1.0, force=False)
    print(f"generated {data} ({args.rows:,} rows) in {time.perf_counter() - t:.1f} s", flush=True)
    return data


# Runs the CLI in this interpreter, then prints its own CPU seconds and peak resident memory (KB on Linux).
_CHILD = (
    "import resource, sys; from hetgmp.cli import main; rc = main(sys.argv[1:]); "
    "u = resource.getrusage(resource.RUSAGE_SELF); "
    "print('cpu s', u.ru_utime + u.ru_stime); print('peak RSS KB', u.ru_maxrss); sys.exit(rc)"
)


def run_partition(data: Path, out: Path, args: argparse.Namespace, variant: str, device: str, env: dict | None = None) -> dict:
    """One `hetgmp partition` process: its plan.json as "summary", "wall_s", "cpu_s", "peak_rss_gb" and
    "load_before" (the 1-minute load average as it started)."""
    algorithm, _, ranking = variant.partition(":")
    cmd = [
        sys.executable, "-c", _CHILD, "partition", str(data), "--parts", str(args.parts), "--output", str(out),
        "--rounds", str(args.rounds), "--batch-size", str(args.batch_size), "--store-rate", str(args.store_rate),
        "--gpus-per-node", str(args.gpus_per_node), "--device", device, "--algorithm", algorithm,
        "--bound", str(args.bound),
    ]
    # the original algorithm with the original's ranking; ours with the CLI's default unless named
    ranking = ranking or ("original" if algorithm == "original" else "")
    cmd += ["--ranking", ranking] if ranking else []
    load = os.getloadavg()[0]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    cpu = float(lines[-2].split()[-1])
    print(*lines[-5:-3], sep="\n", flush=True)
    print(f"{variant}: {wall:.1f} s wall, {cpu:.1f} CPU s, load average {load:.2f} before the run", flush=True)
    peak_gb = int(lines[-1].split()[-1]) / 2**20
    summary = json.loads(out.with_suffix(".json").read_text())
    return {"summary": summary, "wall_s": wall, "cpu_s": cpu, "peak_rss_gb": peak_gb, "load_before": load}


def compile_seconds(workdir: Path) -> float:
    """Wall time of a tiny `hetgmp partition` with an empty numba cache, minus the same run cached.

    Ends with one more tiny run on the default cache, so the timed runs never compile.
    """
    rng = np.random.default_rng(0)
    tiny = workdir / "tiny"
    tiny.mkdir(exist_ok=True)
    np.save(tiny / "train_sparse_feats.npy", rng.integers(0, 500, size=(2000, 4)).astype(np.int32))
    env = {**os.environ, "NUMBA_CACHE_DIR": str(workdir / "numba_cache")}
    times = []
    for run_env in (env, env, None):
        t = time.perf_counter()
        for algorithm in ("fast", "original"):
            cmd = [sys.executable, "-m", "hetgmp.cli", "partition", str(tiny), "-n", "2", "-o", str(tiny / "p.npz"), "-r", "1", "--algorithm", algorithm]
            subprocess.run(cmd, env=run_env, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return times[0] - times[1]


def row(name: str, summary: dict, key: str, wall: float | None, cpu: float | None, peak: float | None) -> str:
    rr = summary["remote_rows_per_batch"][key] if key != "mirrors" else summary["remote_rows_per_batch_with_mirrors"]
    imb = summary["max_imbalance"]
    balance = f"{imb['samples']:.1%} / {imb['rows']:.1%}" if key != "random" else "exact"
    secs = summary["seconds_breakdown"]
    timing = f"{wall:.1f} (CPU {cpu:.1f}; refine {secs['refine']:.1f}, priority {secs['priority']:.1f})" if wall is not None else ""
    return f"| {name} | {rr['fraction']:.1%} | {rr['count']:,.0f} | {balance} | {timing} | {f'{peak:.1f}' if peak else ''} |"


def main() -> None:
    args = parse_args()
    data = ensure_data(args)
    algorithms = (args.algorithms or ("fast,original" if args.device == "cpu" else "fast")).split(",")
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        compile_s = None if args.skip_compile else compile_seconds(work)
        for variant in algorithms:
            results[variant] = run_partition(data, work / f"{variant.replace(':', '_')}.npz", args, variant, args.device)
    first = results[algorithms[0]]["summary"]
    rows.append(row("random placement", first, "random", None, None, None))
    names = {"original": "original algorithm (reference.py)", "fast": f"ours ({args.device})"}
    for variant in algorithms:
        r = results[variant]
        algorithm, _, ranking = variant.partition(":")
        name = names[algorithm] + (f", {ranking} ranking (bound {args.bound})" if ranking else "")
        rows.append(row(name, r["summary"], "partitioned", r["wall_s"], r["cpu_s"], r["peak_rss_gb"]))
        rows.append(row(f"{name} + {100 * args.store_rate:g}% mirrors", r["summary"], "mirrors", None, None, None))
    machine = f"{platform.node()}, {os.cpu_count()} cores" + (f", {_gpu_name()}" if args.device == "cuda" else "")
    header = [
        f"`hetgmp partition` on {data} ({first['train_rows']:,} train samples, {first['num_ids']:,} ids), "
        f"{args.parts} parts, {args.rounds} rounds, batch {args.batch_size}; {machine}; "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"numba first compile: {compile_s:.1f} s" if compile_s is not None else "numba first compile: not measured",
        "",
        "| placement | remote rows per batch | count | max imbalance samples / rows | seconds (wall, whole command; CPU = user + sys) | peak RSS GB |",
        "|---|---|---|---|---|---|",
    ]
    if "original" in results:
        base = results["original"]["summary"]["remote_rows_per_batch_with_mirrors"]["count"]
        rows += ["", *(f"{v}: remote rows per batch with mirrors {r['summary']['remote_rows_per_batch_with_mirrors']['count'] / base:.3f}x "
                       f"the original algorithm's; mirrors per part {r['summary']['mirrors_per_part']}"
                       for v, r in results.items())]
    table = "\n".join(header + rows)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"table": table, "compile_s": compile_s, "results": results}, indent=2))


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"


if __name__ == "__main__":
    main()

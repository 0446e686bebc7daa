"""The sharded fast step's benchmark runs on CPU over Gloo at tiny sizes and prints its table."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Plain torch kernels, as a CPU user gets them: other test modules turn on Triton's (slow) CPU
# interpreter for the whole session, and the benchmark's processes would inherit it.
ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def test_bench_sharded_fast_cpu_smoke():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_sharded_fast.py"), "--device", "cpu", "--num-ids", "5000",
           "--batch", "64", "--dim", "8", "--batches", "2", "--warmup", "1", "--steps", "2", "--repeats", "1", "--store-rate", "0.05"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    header = next(line for line in out.stdout.splitlines() if line.startswith("| mode"))
    fetched_col = header.split(" | ").index("rows fetched/step")
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "mode" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| plan+0.05 mirrors, bound 100", "| plan+0.05 mirrors, bound 0", "| row sharding",
                                                 "| one GPU (FastStep, rank 0 alone)"]
    fetched = {r.split(" | ")[0]: float(r.split(" | ")[fetched_col].replace(",", "")) for r in rows}
    assert 0 < fetched["| plan+0.05 mirrors, bound 0"] < fetched["| row sharding"], "the plan must fetch fewer rows"


def test_bench_sharded_fast_on_synth_data_with_a_plan(tmp_path):
    data, plan = tmp_path / "synth", tmp_path / "plan.npz"
    for args in (["synth", "--rows", "6000", "--output", str(data), "--no-progress"],
                 ["partition", str(data), "--parts", "2", "--output", str(plan), "--batch-size", "128"]):
        made = subprocess.run([sys.executable, "-m", "hetgmp.cli", *args], capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
        assert made.returncode == 0, made.stderr[-3000:]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_sharded_fast.py"), "--device", "cpu", "--data", str(data), "--partition", str(plan),
           "--batch", "128", "--dim", "8", "--batches", "2", "--warmup", "1", "--steps", "2", "--repeats", "1", "--modes", "plan+bound,rows:torch:late", "--model", "dfm"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "plan plan.npz" in out.stdout and ", dfm," in out.stdout
    rows = [line.split(" | ")[0] for line in out.stdout.splitlines() if line.startswith("| ") and "mode" not in line]
    assert rows == ["| plan+0.01 mirrors, bound 100", "| row sharding, torch stages, read in its own step", "| one GPU (FastStep, rank 0 alone)"]

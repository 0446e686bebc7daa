"""`hetgmp demo` end to end at a tiny size: synth -> partition -> 2 CPU workers -> eval -> comparison."""

import os
import subprocess
import sys

import pytest

from tinydata import read_metrics

pytestmark = pytest.mark.slow


def test_demo_runs_the_pipeline_and_reports(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "hetgmp.cli", "demo", "--output", str(out), "--rows", "6000", "--scale", "0.01",
           "--batch-size", "256", "--rounds", "1", "--random-steps", "3"]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = done.stdout
    assert "AUC reached" in text and "planted model:" in text
    assert "less communication than random placement" in text and "measured   rows fetched per step" in text
    assert {"data", "plan.npz", "plan.json", "partition.log", "train.log", "metrics.jsonl", "random.jsonl", "model", "random-model"} <= {p.name for p in out.iterdir()}
    assert (out / "model" / "latest").is_file()  # the partitioned run saved its model in the demo's folder
    evals = read_metrics(out / "metrics.jsonl", "eval")
    assert evals and evals[-1]["test_rows"] == 600 and evals[-1]["auc"] > 0.55

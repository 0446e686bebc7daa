"""Real multi-process training through the CLI: 2 local workers (Gloo) with a plan, resume, two torchrun nodes."""

import os
import subprocess
import sys

import pytest
import torch

from hetgmp.cli import main
from test_train_checkpoint import _assert_same_state
from tinydata import read_metrics, write_plan, write_planted
from workers import free_port

pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _hetgmp(*argv, timeout=240):
    done = subprocess.run([sys.executable, "-m", "hetgmp.cli", *argv], env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    write_planted(root / "ds", train_rows=3000, test_rows=1000)
    write_plan(root / "ds", root / "plan.npz", parts=2, gpus_per_node=1)
    return root


def _train_argv(root, ckpt, *extra):
    return ["train", "--data", str(root / "ds"), "--partition", str(root / "plan.npz"), "--batch-size", "100",
            "--device", "cpu", "--no-progress", "--store-rate", "0.05", "--checkpoint-dir", str(root / ckpt), *extra]


def test_two_workers_and_two_nodes_train_log_and_resume_exactly(planned):
    """One uninterrupted run (--nproc 2), an interrupted one on two torchrun "nodes", its resume (--nproc 2)."""
    root = planned
    _hetgmp(*_train_argv(root, "full", "--nproc", "2", "--iter", "16", "--val", "--eval-every", "8", "--log-every", "4",
                         "--metrics", str(root / "m.jsonl")))
    records = read_metrics(root / "m.jsonl")
    train_lines = [r for r in records if r["phase"] == "train"]
    evals = [r for r in records if r["phase"] == "eval"]
    assert [r["step"] for r in train_lines] == [4, 8, 12, 16] and [r["step"] for r in evals] == [8, 16]
    for r in train_lines:
        assert r["world_size"] == 2 and r["samples"] == r["step"] * 200
        assert r["samples_per_s"] == pytest.approx(2 * r["samples_per_s_per_worker"])
        assert {"rows_fetched", "rows_pushed", "mirror_hits", "local_hits", "bytes_sent", "bytes_received"} <= r.keys()
    assert train_lines[-1]["rows_fetched"] > 0 and train_lines[-1]["local_hits"] > 0
    assert evals[-1]["test_rows"] == 1000 and evals[-1]["auc"] > 0.75

    # Two single-worker "nodes" on loopback; the plan says 1 GPU per node, as the launch has.
    port = free_port()
    node_argv = _train_argv(root, "cut", "--iter", "7", "--log-every", "3", "--val", "--metrics", str(root / "nodes.jsonl"))
    procs = [
        subprocess.Popen(
            ["torchrun", "--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1", "--master-addr", "127.0.0.1",
             "--master-port", str(port), "-m", "hetgmp.cli", *node_argv],
            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for node in (0, 1)
    ]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    nodes = read_metrics(root / "nodes.jsonl")
    assert [(r["phase"], r["step"]) for r in nodes] == [("train", 3), ("train", 6), ("train", 7), ("eval", 7)]
    assert nodes[-1]["test_rows"] == 1000

    _hetgmp(*_train_argv(root, "cut", "--nproc", "2", "--iter", "16", "--resume"))
    for rank in (0, 1):
        full = torch.load(root / "full" / "step-000016" / f"rank-{rank}.pt", weights_only=True)
        resumed = torch.load(root / "cut" / "step-000016" / f"rank-{rank}.pt", weights_only=True)
        _assert_same_state(full, resumed)


def test_plan_of_another_shape_or_dataset_is_refused(planned, tmp_path, capsys):
    root = planned
    argv = ["train", "--iter", "1", "--device", "cpu", "--no-progress"]
    assert main([*argv, "--data", str(root / "ds"), "--partition", str(root / "plan.npz")]) == 2
    assert "partition has 2 parts but 1 workers were started" in capsys.readouterr().err
    write_plan(root / "ds", tmp_path / "one.npz", parts=1)
    write_planted(tmp_path / "other", train_rows=2000, test_rows=100, fields=(40, 30, 20, 11))
    assert main([*argv, "--data", str(tmp_path / "other"), "--partition", str(tmp_path / "one.npz")]) == 2
    err = capsys.readouterr().err
    assert "made for other data" in err and "Traceback" not in err

"""Real multi-process training through the CLI: 2 local workers (Gloo) with a plan, resume, two torchrun nodes."""

import os
import subprocess
import sys

import pytest
import torch

from hetgmp.cli import main
from hetgmp.errors import HetGMPError
from hetgmp.train import sharded_fast
from hetgmp.train.config import TrainConfig
from hetgmp.train.loop import StepWindow, choose_steps
from hetgmp.train.nonfinite import NonFiniteGuard
from hetgmp.train.setup import build_run
from test_train_checkpoint import _assert_same_state
from tinydata import read_metrics, write_plan, write_planted
from workers import free_port, run_workers

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
        assert {"rows_fetched", "rows_pushed", "bytes_sent", "bytes_received", "mirror_hits", "mirror_refreshes"} <= r.keys()  # the sharded fast step's
    assert train_lines[-1]["rows_fetched"] > 0 and train_lines[-1]["rows_pushed"] > 0
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


def test_sharded_fast_step_trains_as_the_general_step_and_resumes_its_checkpoint(planned):
    """2 workers take the sharded fast step (defaults: Adam, row-wise Adagrad). At bound 0 it trains as the
    general step does: the general step's first 8 steps, resumed by the fast step for 8 more, end where 16
    fast steps do (whose evaluation at step 8 reads the rows through the general table between two steps)."""
    root = planned
    flags = ("--nproc", "2", "--val", "--log-every", "4")
    fast = _hetgmp(*_train_argv(root, "fast", *flags, "--iter", "16", "--eval-every", "8", "--metrics", str(root / "fast.jsonl")))
    assert "step fast (--step auto, 2 workers, sharded; sharded fast step, eager on cpu" in fast.stdout
    # 100 ids, 50 owned by each worker: 5% of a 50-id list
    assert "mirrors 2 / 2 rows per worker (0.05 of each candidate list, original ranking)" in fast.stdout
    _hetgmp(*_train_argv(root, "mixed", *flags, "--iter", "8", "--step", "general", "--metrics", str(root / "general.jsonl")))
    _hetgmp(*_train_argv(root, "mixed", *flags, "--iter", "16", "--resume", "--metrics", str(root / "resumed.jsonl")))
    fast_lines, general_lines = read_metrics(root / "fast.jsonl"), read_metrics(root / "general.jsonl")
    for phase, step in (("train", 4), ("train", 8), ("eval", 8)):
        a, b = ([r for r in lines if (r["phase"], r["step"]) == (phase, step)][0] for lines in (fast_lines, general_lines))
        key = "loss" if phase == "train" else "auc"
        assert a[key] == pytest.approx(b[key], abs=1e-6), (phase, step)
    train_fast = [r for r in fast_lines if r["phase"] == "train"]
    assert all(r["rows_fetched"] > 0 and r["rows_pushed"] > 0 and r["bytes_sent"] > 0 for r in train_fast)
    assert read_metrics(root / "resumed.jsonl", "eval")[-1]["auc"] == pytest.approx(read_metrics(root / "fast.jsonl", "eval")[-1]["auc"], abs=1e-6)
    for rank in (0, 1):
        full = torch.load(root / "fast" / "step-000016" / f"rank-{rank}.pt", weights_only=True)
        resumed = torch.load(root / "mixed" / "step-000016" / f"rank-{rank}.pt", weights_only=True)
        _assert_same_state(full, resumed)


def _train_with_capacities_too_small(ctx, root, log_every):
    """Capacities measured at half what the batches need (no room, no rounding up): returns the error
    the first check raises, or None."""
    sharded_fast.CAPACITY_ROOM = 0.5
    sharded_fast.round_up = lambda count: max(1, count)
    cfg = TrainConfig(data=str(root / "ds"), partition=str(root / "plan.npz"), batch_size=100, device="cpu", progress=False,
                      sparse_optimizer="sgd", iter=8, log_every=log_every)
    run = build_run(cfg, ctx)
    window = StepWindow(cfg.log_every, ctx, 0)
    steps = choose_steps(run, NonFiniteGuard(False, ctx.world_size), 0, window, print)
    try:
        for step in range(cfg.iter):
            steps.train(step)
            window.add(steps.counters())
    except HetGMPError as e:
        return step, str(e)
    return None


@pytest.mark.parametrize("log_every, stops_at, reads", [(4, 3, 5), (100, 7, 9)])
def test_sharded_fast_step_stops_when_a_batch_overflows_its_capacity(planned, log_every, stops_at, reads):
    """At the first log point, or at the last step when no log point comes (a run never ends quietly)."""
    for step, error in run_workers(_train_with_capacities_too_small, 2, args=(planned, log_every)):
        assert step == stops_at
        # Read a step ahead: batches 0..step, and one more by then.
        assert f"dropped rows reading {reads} batch(es)" in error and "resume from the last checkpoint with --step general" in error


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

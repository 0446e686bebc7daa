"""Scenarios 1 and 7: a worker SIGKILLed mid-training, and workers started with different flags.

Real processes on Gloo. A lost worker must make every other worker exit
non-zero within 60 s with a message naming it (the `--nproc` launcher names
it; workers started by another launcher name it themselves, see
hetgmp.train.liveness), and `--resume` must then reach, with bound 0, the
weights of an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from jobs import children, finish, hetgmp, start, start_workers, wait_for
from test_train_checkpoint import _assert_same_state
from tinydata import write_planted

pytestmark = pytest.mark.slow
END = 60  # steps of the uninterrupted run: the killed one is stopped within its first few


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("lost")
    write_planted(root / "ds", train_rows=1200, test_rows=100)
    return root


def _argv(root, ckpt, *extra):
    return ["train", "--data", str(root / "ds"), "--batch-size", "50", "--device", "cpu", "--no-progress",
            "--log-every", "2", "--checkpoint-dir", str(root / ckpt), *extra]


def _latest_step(ckpt) -> int:
    return int((ckpt / "latest").read_text().strip().split("-")[1])


def test_launcher_names_the_killed_worker_and_resume_matches(data):
    root = data
    # The uninterrupted run goes on beside the one to be killed (END is well past the kill).
    full = start(*_argv(root, "full", "--nproc", "2", "--iter", str(END)))
    launcher = start(*_argv(root, "cut", "--nproc", "2", "--iter", "100000", "--checkpoint-every", "3"))
    wait_for(lambda: (root / "cut" / "latest").exists() or launcher.poll() is not None, what="the first checkpoint")
    ranks = children(launcher.pid)
    assert sorted(ranks) == [0, 1], ranks
    os.kill(ranks[1], signal.SIGKILL)
    killed = time.monotonic()
    [(code, err)] = finish([launcher], timeout=60)
    assert time.monotonic() - killed < 60
    assert code == 2 and "worker rank 1 of 2 was killed by signal 9 (SIGKILL: the out-of-memory killer or a kill) without an error" in err, err[-3000:]
    assert "the other workers were stopped; the last checkpoint is " in err and err.count(": error: ") == 1, err[-3000:]
    assert f"continue with: hetgmp train --data {root / 'ds'}" in err and err.rstrip().endswith("--resume"), err[-3000:]
    assert not any(os.path.exists(f"/proc/{pid}") and "zombie" not in open(f"/proc/{pid}/status").read().lower()
                   for pid in ranks.values())

    last = _latest_step(root / "cut")
    assert last < END
    resumed = hetgmp(*_argv(root, "cut", "--nproc", "2", "--iter", str(END), "--resume"))
    assert resumed.returncode == 0 and f"resumed at step {last}" in resumed.stdout, resumed.stderr[-3000:]
    [(code, err)] = finish([full], timeout=240)
    assert code == 0, err[-3000:]
    for rank in (0, 1):
        name = f"step-{END:06d}/rank-{rank}.pt"
        _assert_same_state(torch.load(root / "full" / name, weights_only=True), torch.load(root / "cut" / name, weights_only=True))


def test_workers_name_the_lost_rank_themselves(data):
    """Four workers started as torchrun would start them; rank 2 is SIGKILLed mid-training."""
    root = data
    procs = start_workers(_argv(root, "four", "--iter", "100000", "--checkpoint-every", "2"), world_size=4)
    wait_for(lambda: (root / "four" / "latest").exists() or any(p.poll() is not None for p in procs), what="the first checkpoint")
    procs[2].kill()
    killed = time.monotonic()
    results = finish(procs, timeout=60)
    assert time.monotonic() - killed < 60
    for rank, (code, err) in enumerate(results):
        if rank == 2:
            assert code == -signal.SIGKILL
            continue
        assert code == 2, (rank, code, err[-3000:])
        assert "worker rank 2 of 4 was lost (killed or crashed)" in err and "--resume" in err and "Traceback" not in err, err[-3000:]
    assert (root / "four" / "latest").exists()


def test_mismatched_flags_are_named_at_start_up(data):
    root = data
    per_rank = lambda r: ["--embed-dim", "8", "--bound", "100"] if r == 1 else []  # noqa: E731
    procs = start_workers(_argv(root, "mixed", "--iter", "4"), world_size=2, per_rank=per_rank)
    for code, err in finish(procs, timeout=120):
        assert code == 2 and "Traceback" not in err, err[-3000:]
        assert "workers were started with different settings: rank 1 differs from rank 0 in bound (100 vs 0), embed_dim (8 vs 16)" in err, err
    assert not (root / "mixed").exists()


def test_losing_rank_0_which_hosts_the_store_is_named(data):
    """Rank 0 hosts the rendezvous store under --nproc and mpirun: when it dies, the store goes with it."""
    root = data
    procs = start_workers(_argv(root, "zero", "--iter", "100000", "--checkpoint-every", "2"), world_size=2)
    wait_for(lambda: (root / "zero" / "latest").exists() or any(p.poll() is not None for p in procs), what="the first checkpoint")
    procs[0].kill()
    [(code0, _), (code1, err)] = finish(procs, timeout=60)
    assert code0 == -signal.SIGKILL and code1 == 2, err[-3000:]
    assert "worker rank 0 of 2 (it hosts the job's rendezvous store) or the network to it was lost" in err, err[-3000:]

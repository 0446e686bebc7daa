"""Scenario 3: SIGKILL during `hetgmp prepare` and `hetgmp partition` leaves nothing that looks complete.

Each command is killed while it is visibly working (prepare: its temporary
dataset directory holds arrays; partition: it has printed its starting
cost), then the output path must not exist, and the same command, run again
without --force, must succeed over whatever the kill left (hidden
`.NAME.tmp-PID` leftovers).
"""

from __future__ import annotations

import os
import random
import signal

import numpy as np
import pytest

from hetgmp.data.arrays import load_dataset
from hetgmp.partition.plan import PartitionPlan
from jobs import ENV, finish, hetgmp, start, wait_for
from prepare_reference import criteo_line

pytestmark = pytest.mark.slow


def _working_files(root, name):
    """Files inside the hidden temporary siblings of `root/name`."""
    return [f for d in root.glob(f".{name}.tmp-*") if d.is_dir() for f in d.iterdir()]


def _kill_prepare_then_rerun(tmp_path, argv, working, what):
    """SIGKILL `hetgmp prepare ... --output tmp_path/ds` once a file of its temporary folder is `working`;
    no output may be left, and the same command must then succeed."""
    proc = start(*argv)
    wait_for(lambda: any(working(f) for f in _working_files(tmp_path, "ds")) or proc.poll() is not None, what=what)
    proc.send_signal(signal.SIGKILL)
    [(code, _)] = finish([proc], timeout=30)
    assert code == -signal.SIGKILL, "prepare finished before it could be killed: use more rows"
    assert not (tmp_path / "ds").exists()
    done = hetgmp(*argv)
    assert done.returncode == 0, done.stderr[-3000:]


def test_killed_prepare_then_partition_leave_no_output(tmp_path):
    rng = random.Random(5)
    lines = [criteo_line(rng) for _ in range(1500)]
    (tmp_path / "train.txt").write_text("\n".join(lines * 40) + "\n")  # 60,000 rows: a few seconds of work

    argv = ["prepare", "criteo", "--input", str(tmp_path / "train.txt"), "--output", str(tmp_path / "ds"),
            "--no-progress", "--block-size", "200000"]
    _kill_prepare_then_rerun(tmp_path, argv, lambda f: f.suffix == ".npy", "prepare to write arrays")
    assert load_dataset(tmp_path / "ds").meta.train_rows == 54000

    plan = tmp_path / "plan.npz"
    argv = ["partition", str(tmp_path / "ds"), "--parts", "2", "--output", str(plan), "--batch-size", "512"]
    proc = start(*argv, "--rounds", "50", env={**ENV, "PYTHONUNBUFFERED": "1"})
    started = [proc.stdout.readline() for _ in range(2)]  # the graph's description, then the starting cost
    assert proc.poll() is None, started
    os.kill(proc.pid, signal.SIGKILL)
    [(code, _)] = finish([proc], timeout=30)
    assert code == -signal.SIGKILL
    assert not plan.exists() and not plan.with_suffix(".json").exists()
    done = hetgmp(*argv, "--rounds", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = PartitionPlan.load(plan)
    assert loaded.parts == 2 and len(loaded.data_partition) == 54000 and np.isin(loaded.embed_partition, [0, 1]).all()


def test_killed_prepare_table_leaves_no_output(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    rows = 400_000  # a few seconds of pass 1
    users = pa.array(rng.integers(0, 50_000, rows)).cast(pa.string())
    tags = pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * rows + 1, 2, dtype=np.int32)), pa.array(rng.integers(0, 900, 2 * rows)))
    pq.write_table(pa.table({"click": rng.integers(0, 2, rows), "user": users, "tags": tags}), tmp_path / "clicks.parquet")
    argv = ["prepare", "table", "--input", str(tmp_path / "clicks.parquet"), "--label", "click", "--multi-hot", "tags",
            "--bag-size", "tags=2", "--output", str(tmp_path / "ds"), "--no-progress"]
    _kill_prepare_then_rerun(tmp_path, argv, lambda f: f.name == ".work", "prepare table to start its buckets")
    assert load_dataset(tmp_path / "ds").meta.extra["bag_sizes"] == [1, 2]

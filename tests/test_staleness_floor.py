"""benchmarks/staleness_floor.py: the lag a read served one step early would have, on hand-made batches."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from staleness_floor import lags_beyond  # noqa: E402


def test_lags_count_the_owner_and_fetchers_but_not_mirrors_or_the_reader():
    owner = np.array([0, 0, 0, 1, 1, 1])
    mirrors = [np.array([3]), np.array([], dtype=np.int64)]  # worker 0 mirrors id 3: its updates stay pending
    batches = [[np.array([0, 0, 0, 3, 3, 4]), np.array([3, 4, 1])],
               [np.array([1, 1, 1, 3, 5, 5]), np.array([0, 2, 5])]]
    out = lags_beyond(batches, owner, mirrors, bound=2)
    # Worker 0 reads 3 (lag 1: its owner's update), 4 (its own update only: lag 0) and its own 1
    # (lag 3: worker 1 fetched it three times). Worker 1 reads 0 (lag 3: its owner's three updates),
    # 2 (lag 0) and its own 5 (its own updates only; worker 0's mirror of 3 would push later).
    assert out["remote"].tolist() == [[2, 2]] and out["owned"].tolist() == [[1, 1]]
    assert out["remote_beyond"].tolist() == [[0, 1]] and out["owned_beyond"].tolist() == [[1, 0]]
    assert out["max_lag"].tolist() == [[3, 3]]
    looser = lags_beyond(batches, owner, mirrors, bound=3)
    assert looser["remote_beyond"].sum() == 0 and looser["owned_beyond"].sum() == 0

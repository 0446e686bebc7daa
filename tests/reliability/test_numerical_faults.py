"""Scenario 6: NaN/inf in a batch stops the run at that step (keeping a good checkpoint), or is skipped.

A NaN in one row's dense features poisons exactly the batches holding that
row; which steps those are follows from the documented batch order
(hetgmp.train.data: epoch permutation seeded by (seed, epoch, rank)).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from hetgmp.errors import HetGMPError
from hetgmp.train.config import TrainConfig
from hetgmp.train.data import epoch_seed
from hetgmp.train.loop import train
from hetgmp.train.nonfinite import NonFiniteGuard
from jobs import hetgmp
from tinydata import write_planted

ROWS, BATCH, BAD_ROW = 1000, 100, 321


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """A dataset whose train row BAD_ROW has a NaN feature, and one where every row has."""
    root = tmp_path_factory.mktemp("nan")
    for name, rows in (("one", [BAD_ROW]), ("all", slice(None))):
        write_planted(root / name, train_rows=ROWS, test_rows=100)
        dense = np.load(root / name / "train_dense_feats.npy")
        dense[rows, 0] = np.nan
        np.save(root / name / "train_dense_feats.npy", dense)
    return root


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def bad_steps(row: int, rows: int, batch: int, steps: int, seed: int = 0, rank: int = 0) -> list[int]:
    """1-based steps whose batch holds `row` (one worker), from the documented batch order."""
    per_epoch = -(-rows // batch)
    found = []
    for step in range(steps):
        epoch, i = divmod(step, per_epoch)
        perm = torch.randperm(rows, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch, rank)))
        if row in perm[(i * batch + torch.arange(batch)) % rows].tolist():
            found.append(step + 1)
    return found


def _cfg(root, data, **kw):
    base = dict(data=str(root / data), batch_size=BATCH, log_every=2, device="cpu", progress=False, iter=20)
    return TrainConfig(**{**base, **kw})


def _tensors(state):
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for v in state.values():
            yield from _tensors(v)
    elif isinstance(state, (list, tuple)):
        for v in state:
            yield from _tensors(v)


def test_nan_stops_at_its_step_and_the_last_checkpoint_is_finite(poisoned, tmp_path):
    first = bad_steps(BAD_ROW, ROWS, BATCH, 20)[0]
    ckpt = tmp_path / "ck"
    with pytest.raises(HetGMPError, match=rf"NaN or infinite at step {first}; ") as caught:
        train(_cfg(poisoned, "one", checkpoint_dir=str(ckpt), checkpoint_every=2))
    good = (first - 1) // 2 * 2  # the last checkpoint step before the bad one
    if good:
        assert f"the last good checkpoint {ckpt / f'step-{good:06d}'} is kept" in str(caught.value)
        state = torch.load(ckpt / f"step-{good:06d}" / "rank-0.pt", weights_only=True)
        assert all(torch.isfinite(t).all() for t in _tensors(state) if t.is_floating_point())
    else:
        assert "no checkpoint was saved" in str(caught.value)
    assert not any(int(p.name[5:]) >= first for p in ckpt.glob("step-*"))


def test_skip_nonfinite_counts_and_skips_bad_batches(poisoned, tmp_path):
    expected = bad_steps(BAD_ROW, ROWS, BATCH, 20)
    metrics = tmp_path / "m.jsonl"
    result = train(_cfg(poisoned, "one", skip_nonfinite=True, metrics=str(metrics)))
    records = [json.loads(line) for line in open(metrics)]
    assert sum(r["skipped_batches"] for r in records) == len(expected) == 2  # once per epoch
    for r in records:
        window = range(r["step"] - 1, r["step"] + 1)
        assert r["skipped_batches"] == sum(s in window for s in expected) and np.isfinite(r["loss"])
    assert result["step"] == 20


@pytest.mark.parametrize("optimizer", ["adam", "adagrad", "sgd"])
def test_skipped_batches_change_nothing(poisoned, tmp_path, optimizer):
    """Every batch bad: after 2 or 5 skipped steps, weights and optimizer state are the initial ones
    (Adagrad's step counter aside, which only an lr decay would read)."""
    states = []
    for steps in (2, 5):
        ckpt = tmp_path / f"c{steps}"
        train(_cfg(poisoned, "all", skip_nonfinite=True, iter=steps, optimizer=optimizer, checkpoint_dir=str(ckpt)))
        states.append(torch.load(ckpt / f"step-{steps:06d}" / "rank-0.pt", weights_only=True))
    from test_train_checkpoint import _assert_same_state

    _assert_same_state(states[0]["model"], states[1]["model"], tol=0)
    if optimizer != "adagrad":
        _assert_same_state(states[0]["dense_optimizer"], states[1]["dense_optimizer"], tol=0)
    for key in ("values", "accumulator"):  # only the rows' update counts ("versions") move
        assert torch.equal(states[0]["embedding"][key], states[1]["embedding"][key])


@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])
def test_two_workers_skip_through_the_cli(poisoned, tmp_path, optimizer):
    """The flag through `--nproc 2`: rank 0 holds the bad row; counted over workers, the run finishes,
    and the sharded fast step skips exactly as the general step does (same losses)."""
    records = {}
    for step in ("auto", "general"):
        metrics = tmp_path / f"{step}.jsonl"
        done = hetgmp("train", "--data", str(poisoned / "one"), "--nproc", "2", "--batch-size", "50", "--iter", "20",
                      "--log-every", "10", "--device", "cpu", "--no-progress", "--skip-nonfinite", "--metrics", str(metrics),
                      "--step", step, "--optimizer", optimizer)
        assert done.returncode == 0, done.stderr[-3000:]
        assert re.search(r"TRAIN step 10 .* skipped 1 non-finite batches", done.stdout), done.stdout
        records[step] = [json.loads(line) for line in open(metrics)]
    expected = bad_steps(BAD_ROW, ROWS // 2, 50, 20)
    assert sum(r["skipped_batches"] for r in records["auto"]) == len(expected) == 2
    for fast, general in zip(records["auto"], records["general"], strict=True):
        assert fast["skipped_batches"] == general["skipped_batches"]
        assert fast["loss"] == pytest.approx(general["loss"], rel=1e-5)


@pytest.mark.parametrize("skip", [False, True])
def test_an_infinite_gradient_with_a_finite_loss_is_caught(skip):
    """sqrt at 0: the loss is 0, its gradient inf. The guard flags the step (default: a NaN loss record,
    stopping the run at the next check) or zeroes this worker's gradients (skip)."""
    guard = NonFiniteGuard(skip=skip, world_size=1)
    rows = torch.ones(4, 3, requires_grad=True)
    weight = torch.nn.Parameter(torch.ones(3))
    loss = torch.sqrt(guard.gate(rows) - 1).sum() + (weight * 0.5).sum()
    guard.begin(loss.detach())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(weight.grad).all()  # only the table's gradient is bad
    flat = torch.cat([weight.grad.reshape(-1), torch.zeros(1)])
    guard.flag_dense(flat)
    optimizer = torch.optim.Adam([weight], fused=True)
    guard.before_dense_step(optimizer, flat[-1])
    if skip:
        assert torch.equal(rows.grad, torch.zeros_like(rows)) and torch.equal(flat, torch.tensor([0.0, 0.0, 0.0, 1.0]))
        assert guard.loss_record(loss.detach()) == 0 and guard.skipped() == 1 and optimizer.found_inf == 1
    else:
        assert torch.isinf(rows.grad).all() and torch.isnan(guard.loss_record(loss.detach()))

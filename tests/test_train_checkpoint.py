"""Checkpoints: the folder layout, resume == uninterrupted (bound 0), refusing another run's checkpoint."""

import json

import numpy as np
import pytest
import torch

from hetgmp.errors import HetGMPError
from hetgmp.train.config import TrainConfig
from hetgmp.train.loop import train
from tinydata import write_plan, write_planted


@pytest.fixture
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the CI machine's two cores are shared with other tests


def _cfg(root, ckpt, **kw):
    base = dict(data=str(root / "ds"), batch_size=100, log_every=5, device="cpu", checkpoint_dir=str(root / ckpt), progress=False)
    return TrainConfig(**{**base, **kw})


def _assert_same_state(a, b, tol=1e-6):
    """Every tensor of two rank-R.pt states agrees within tol."""
    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=tol, rtol=0), (a - b).abs().max()
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same_state(a[k], b[k], tol)
    elif isinstance(a, (list, tuple)):
        for x, y in zip(a, b):
            _assert_same_state(x, y, tol)
    else:
        assert a == b


def test_resume_reaches_the_uninterrupted_weights(tmp_path, one_thread):
    write_planted(tmp_path / "ds", train_rows=1000, test_rows=200)
    train(_cfg(tmp_path, "full", iter=14, checkpoint_every=4))
    # The folders kept: the last two, and `latest` names the newest.
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["latest", "step-000012", "step-000014"]
    assert (tmp_path / "full" / "latest").read_text().strip() == "step-000014"
    meta = json.loads((tmp_path / "full" / "step-000014" / "meta.json").read_text())
    assert meta["step"] == 14 and meta["model"] == "wdl" and meta["plan"] == "single" and meta["config_hash"]

    train(_cfg(tmp_path, "cut", iter=6))  # an interrupted run: checkpoint at step 6 (the 10-step epoch is cut mid-way)
    result = train(_cfg(tmp_path, "cut", iter=14, resume=True))
    assert result["step"] == 14
    full = torch.load(tmp_path / "full" / "step-000014" / "rank-0.pt", weights_only=True)
    resumed = torch.load(tmp_path / "cut" / "step-000014" / "rank-0.pt", weights_only=True)
    _assert_same_state(full, resumed)


def test_resume_refuses_another_models_checkpoint(tmp_path, one_thread):
    write_planted(tmp_path / "ds", train_rows=400, test_rows=100)
    train(_cfg(tmp_path, "ck", iter=2))
    with pytest.raises(HetGMPError, match=r"model: checkpoint 'wdl', this run 'dcn'.*embed_dim: checkpoint 16, this run 8"):
        train(_cfg(tmp_path, "ck", iter=4, model="dcn", embed_dim=8, resume=True))
    with pytest.raises(HetGMPError, match=r"optimizer: checkpoint 'adam', this run 'sgd'.*the worker count and plan may differ"):
        train(_cfg(tmp_path, "ck", iter=4, optimizer="sgd", resume=True))
    # The DLRM family's layer sizes are the run's too: a resume with another top MLP is refused.
    train(_cfg(tmp_path, "dlrm", iter=2, model="dlrm", embed_dim=4, bottom_mlp="8", top_mlp="8"))
    with pytest.raises(HetGMPError, match=r"shape: checkpoint .*'top': \[8\].*this run .*'top': \[6\]"):
        train(_cfg(tmp_path, "dlrm", iter=4, model="dlrm", embed_dim=4, bottom_mlp="8", top_mlp="6", resume=True))
    assert train(_cfg(tmp_path, "dlrm", iter=4, model="dlrm", embed_dim=4, bottom_mlp="8", top_mlp="8", resume=True))["step"] == 4
    # Another plan is no other run: its rows are re-placed (train/reshard.py).
    write_plan(tmp_path / "ds", tmp_path / "plan.npz", parts=1)
    assert train(_cfg(tmp_path, "ck", iter=4, partition=str(tmp_path / "plan.npz"), resume=True))["step"] == 4


def test_nan_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, one_thread):
    write_planted(tmp_path / "ds", train_rows=400, test_rows=100)
    train(_cfg(tmp_path, "ck", iter=4))
    # The same dataset with NaN features: the resumed run's first step goes bad.
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in (tmp_path / "ds").iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    dense = np.load(bad / "train_dense_feats.npy")
    np.save(bad / "train_dense_feats.npy", np.full_like(dense, np.nan))
    with pytest.raises(HetGMPError, match=r"NaN or infinite at step 5; the last good checkpoint .*step-000004 is kept"):
        train(_cfg(tmp_path, "ck", data=str(bad), iter=12, checkpoint_every=2, resume=True, output=str(tmp_path / "run.log")))
    assert "NaN or infinite at step 5" in (tmp_path / "run.log").read_text()
    assert (tmp_path / "ck" / "latest").read_text().strip() == "step-000004"
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["latest", "step-000004"]

"""`hetgmp train` on multi-hot bags (`hetgmp synth --multi-hot-sizes`), on CPU.

One worker: the fast step trains as the general step does (same losses, same
table, padding rows untouched). Two workers with a plan: the sharded fast step
trains, and `predict` reproduces the run's evaluation. A checkpoint of another
pooling is refused.
"""

import numpy as np
import pytest
import torch

from cli_runs import assert_clean_error, hetgmp
from hetgmp.data.arrays import load_dataset
from hetgmp.data.synthetic import generate_synthetic
from hetgmp.embedding import EmbeddingConfig
from hetgmp.embedding.init import initial_rows
from hetgmp.train.config import TrainConfig
from hetgmp.train.loop import train
from test_train_checkpoint import _assert_same_state
from tinydata import read_metrics

# Bags in a few fields (one longer than Triton's 16-id tile), the rest one id.
SIZES = (3, 1, 2, 18) + (1,) * 22


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    out = tmp_path_factory.mktemp("train-bags") / "ds"
    generate_synthetic(out, rows=3000, seed=5, scale=0.0005, bag_sizes=SIZES)
    return out


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _cfg(data, out, step, **kw):
    base = dict(data=str(data), model="dlrm", embed_dim=8, batch_size=200, iter=10, log_every=1, device="cpu", progress=False,
                step=step, bag_pooling="mean", metrics=str(out / f"{step}.jsonl"), checkpoint_dir=str(out / f"ck-{step}"))
    return TrainConfig(**{**base, **kw})


def test_fast_and_general_steps_train_the_same_on_bags(bags, tmp_path):
    states = {}
    for step in ("fast", "general"):
        cfg = _cfg(bags, tmp_path, step)
        train(cfg)
        states[step] = torch.load(f"{cfg.checkpoint_dir}/step-000010/rank-0.pt", weights_only=True)
    fast_lines, general_lines = (read_metrics(tmp_path / f"{s}.jsonl", "train") for s in ("fast", "general"))
    np.testing.assert_allclose([r["loss"] for r in fast_lines], [r["loss"] for r in general_lines], rtol=1e-5)
    fast, general = states["fast"], states["general"]
    assert torch.equal(fast["embedding"]["versions"], general["embedding"]["versions"])
    _assert_same_state(fast["embedding"]["values"], general["embedding"]["values"], tol=1e-5)
    _assert_same_state(fast["model"], general["model"], tol=1e-5)  # Adam: about lr a step whatever the gradient
    # The padding rows were read (counted in the versions) and never moved from their initial values.
    meta = load_dataset(bags).meta
    padding = [meta.offsets[f] + p for f, p in enumerate(meta.padding_ids) if p is not None]
    assert len(padding) == 3 and (fast["embedding"]["versions"][padding] > 0).all()
    initial = initial_rows(torch.tensor(padding), EmbeddingConfig(num_ids=meta.num_ids, dim=8), torch.device("cpu"))
    assert torch.equal(fast["embedding"]["values"][padding], initial)
    assert not torch.equal(fast["embedding"]["values"], initial_rows(torch.arange(meta.num_ids), EmbeddingConfig(num_ids=meta.num_ids, dim=8),
                                                                     torch.device("cpu")))

def test_two_workers_train_bags_and_predict_reproduces_the_evaluation(bags, tmp_path):
    plan = tmp_path / "plan.npz"
    proc = hetgmp("partition", str(bags), "--parts", "2", "--output", str(plan), "--batch-size", "200", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # (The sharded fast step against one process, bags included, is test_sharded_bags.py's.)
    metrics = tmp_path / "fast.jsonl"
    proc = hetgmp("train", "--data", str(bags), "--model", "dcnv2", "--cross-rank", "4", "--embed-dim", "8", "--nproc", "2",
                  "--partition", str(plan), "--batch-size", "200", "--iter", "8", "--val", "--device", "cpu", "--no-progress",
                  "--metrics", str(metrics), "--checkpoint-dir", str(tmp_path / "fast"), cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mirrors" in proc.stdout and "sharded fast step" in proc.stdout
    auc = read_metrics(metrics, "eval")[-1]["auc"]
    assert auc > 0.55 and all(r["rows_fetched"] > 0 for r in read_metrics(metrics, "train"))
    proc = hetgmp("predict", "--checkpoint", str(tmp_path / "fast"), "--data", str(bags), "--output", str(tmp_path / "p.npy"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"auc {auc:.6f}" in proc.stdout


def test_resuming_with_another_pooling_is_refused(bags, tmp_path):
    cfg = _cfg(bags, tmp_path, "fast", iter=2)
    train(cfg)
    proc = hetgmp("train", "--data", str(bags), "--model", "dlrm", "--embed-dim", "8", "--batch-size", "200", "--iter", "4",
                  "--device", "cpu", "--bag-pooling", "sum", "--checkpoint-dir", cfg.checkpoint_dir, "--resume", cwd=tmp_path)
    assert_clean_error(proc, "train", "bag_pooling: checkpoint 'mean', this run 'sum'")

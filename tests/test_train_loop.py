"""Single-worker training in this process: it learns, and its AUC is sklearn's on the same predictions."""


import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from hetgmp.data.arrays import load_dataset
from hetgmp.models import build_model
from hetgmp.train.config import TrainConfig, config_to_argv
from hetgmp.train.data import BatchStream, Rows, contiguous_shard, shard_sizes, steps_per_epoch
from hetgmp.train.evaluate import metrics
from hetgmp.train.loop import train
from tinydata import read_metrics, write_planted


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    write_planted(root / "ds", train_rows=6000, test_rows=2000)
    cfg = TrainConfig(
        data=str(root / "ds"), batch_size=200, epochs=3, val=True, eval_every=40, log_every=15, device="cpu",
        metrics=str(root / "m.jsonl"), output=str(root / "train.log"), checkpoint_dir=str(root / "ck"), progress=False,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # the CI machine's two cores are shared with other tests
        result = train(cfg)
    return root, cfg, result


def test_single_worker_learns_and_logs(trained):
    root, cfg, result = trained
    records = read_metrics(root / "m.jsonl")
    train_lines = [r for r in records if r["phase"] == "train"]
    evals = [r for r in records if r["phase"] == "eval"]
    assert [r["step"] for r in evals] == [40, 80, 90]  # every 40 steps and at the end (3 epochs x 30 steps)
    assert [r["step"] for r in train_lines] == [15, 30, 45, 60, 75, 90]
    assert {"loss", "accuracy", "samples_per_s", "samples_per_s_per_worker", "world_size", "time_s", "rows_fetched", "rows_pushed", "epoch", "samples"} <= train_lines[0].keys()
    assert train_lines[-1]["samples"] == 90 * 200 and train_lines[-1]["epoch"] == 2
    assert train_lines[-1]["loss"] < train_lines[0]["loss"]
    assert evals[-1]["auc"] > 0.8 and evals[-1]["test_rows"] == 2000
    assert {"phase": "eval", **result["eval"]} == evals[-1]
    log = (root / "train.log").read_text()
    assert "TRAIN step 90" in log and "EVAL  step 90" in log


def test_eval_auc_equals_sklearn_on_the_final_weights(trained):
    root, cfg, result = trained
    state = torch.load(root / "ck" / "step-000090" / "rank-0.pt", weights_only=True)
    ds = load_dataset(cfg.data)
    model = build_model("wdl", ds.meta.num_fields, 3, cfg.embed_dim)
    model.load_state_dict(state["model"])
    table = state["embedding"]["values"]
    with torch.no_grad():
        ids = torch.from_numpy(np.array(ds.test.sparse)).long()
        logits = model(torch.from_numpy(np.array(ds.test.dense)), table[ids]).numpy()
    labels = np.asarray(ds.test.labels)
    assert result["eval"]["auc"] == pytest.approx(roc_auc_score(labels, logits), abs=1e-6)
    ours = metrics(labels, logits)
    assert ours["auc"] == pytest.approx(roc_auc_score(labels, logits), abs=1e-12)
    assert ours["logloss"] == pytest.approx(result["eval"]["logloss"], abs=1e-5)


def test_batches_wrap_and_reshuffle_per_epoch(tmp_path):
    write_planted(tmp_path / "ds", train_rows=7, test_rows=3)
    split = load_dataset(tmp_path / "ds").train
    rows = Rows(split, slice(0, 5), torch.device("cpu"))
    assert shard_sizes(None, 12, 2) == [6, 6] and contiguous_shard(10, 2, 3) == (6, 10)
    assert steps_per_epoch([5, 7], 4) == 2
    stream = BatchStream(rows, 4, 2, seed=0, rank=0)
    labels = np.asarray(split.labels[:5])
    epoch0 = [stream.batch(s) for s in (0, 1)]
    # 8 slots over 5 rows: every row once, then the permutation wraps.
    order = np.concatenate([b.labels.numpy() for b in epoch0])
    assert sorted(order[:5].tolist()) == sorted(labels.tolist()) and order[5:].tolist() == order[:3].tolist()
    perm0 = stream._perm.clone()
    stream.batch(2)
    assert not torch.equal(stream._perm, perm0)  # epoch 1 reshuffles
    assert torch.equal(BatchStream(rows, 4, 2, seed=0, rank=0).batch(1).ids, epoch0[1].ids)  # deterministic
    assert epoch0[0].ids.dtype == torch.int64


def test_config_round_trips_through_argv():
    from hetgmp.cli import build_parser
    from hetgmp.train.config import config_from_args

    cfg = TrainConfig(data="ds", iter=7, val=True, bound=3, sparse_optimizer="sgd", progress=False)
    args = build_parser().parse_args(["train", *config_to_argv(cfg)])
    assert config_from_args(args) == cfg
    args = build_parser().parse_args(["train", "--data", "x", "--batch_size", "64", "--eval_every", "5", "--sparse_lr", "0.1"])
    assert (args.batch_size, args.eval_every, args.sparse_lr) == (64, 5, 0.1)

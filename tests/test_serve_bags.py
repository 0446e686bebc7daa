"""Scoring a model trained on multi-hot bags: predict and export pool each field's bag as training did.

The runs are `hetgmp train` on a tiny `hetgmp synth --multi-hot-sizes` dataset
(four fields with bags of 2 to 4 ids, padded with their field's padding id):
DLRM with sum pooling, and DCNv2 with --cross-rank 8 and mean pooling. The
scorer is checked against the runs' EVAL lines and against a pooling written
out field by field from the checkpoint's meta.json, which the scorer's must
match and the pooling that forgets the padding must not.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hetgmp.cli import main
from hetgmp.serve import load_trained
from tinydata import read_metrics

BAGS = [3, 2, 3, 4] + [1] * 22
METRICS = re.compile(r"^auc (\S+) logloss (\S+) acc \S+ rows (\d+)$", re.M)
RUNS = {
    "dlrm": ["--model", "dlrm", "--embed-dim", "16"],
    "dcnv2": ["--model", "dcnv2", "--embed-dim", "8", "--cross-rank", "8", "--bag-pooling", "mean"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict[str, tuple[Path, dict]]]:
    """The dataset folder, and per model its checkpoint folder and last EVAL record."""
    root = tmp_path_factory.mktemp("bags")
    assert main(["synth", "--output", str(root / "ds"), "--rows", "3000", "--scale", "0.001",
                 "--multi-hot-sizes", ",".join(map(str, BAGS))]) == 0
    found = {}
    for name, flags in RUNS.items():
        assert main(["train", "--data", str(root / "ds"), *flags, "--batch-size", "256", "--iter", "10", "--val", "--device", "cpu",
                     "--checkpoint-dir", str(root / name), "--metrics", str(root / f"{name}.jsonl"),
                     "--no-progress"]) == 0
        found[name] = (root / name, read_metrics(root / f"{name}.jsonl", "eval")[-1])
    return root / "ds", found


def test_the_runs_record_their_bags_and_cross_rank(runs):
    _, found = runs
    dlrm, dcnv2 = load_trained(found["dlrm"][0]), load_trained(found["dcnv2"][0])
    assert dlrm.bags.sizes == tuple(BAGS) and dlrm.bags.mode == "sum" and dlrm.id_columns == sum(BAGS)
    assert dcnv2.bags.mode == "mean" and dcnv2.meta["shape"]["cross_rank"] == 8
    assert dcnv2.model.cross[0].down.weight.shape == (8, 8 * 27)  # rank 8 of the (26 fields + dense) x d cross input


@pytest.mark.parametrize("model", RUNS)
def test_predict_prints_the_runs_eval_line(runs, model, tmp_path, capsys):
    data, found = runs
    folder, evaluated = found[model]
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(folder), "--data", str(data), "--output", str(tmp_path / "p.npy"), "--device", "cpu",
                 "--batch-size", "128", "--no-progress"]) == 0
    out = capsys.readouterr().out
    auc, logloss, rows = METRICS.search(out).groups()
    assert int(rows) == evaluated["test_rows"] == 300
    assert abs(float(auc) - evaluated["auc"]) < 1e-6 and abs(float(logloss) - evaluated["logloss"]) < 1e-6
    assert f"-pooled bags of {sum(BAGS)} ids a row" in out
    preds = np.load(tmp_path / "p.npy").astype(np.float64)
    labels = np.load(data / "test_labels.npy").astype(np.float64)
    logloss_of_preds = -np.mean(labels * np.log(preds) + (1 - labels) * np.log1p(-preds))
    assert abs(logloss_of_preds - evaluated["logloss"]) < 1e-5


def _pooled_by_hand(folder: Path, table_ED: torch.Tensor, ids_BL: torch.Tensor, keep_padding: bool = False) -> torch.Tensor:
    """(B, F, d): each field's bag of rows summed (or averaged) over its ids other than its padding id, in float64."""
    meta = json.loads((folder / "meta.json").read_text())
    fields, start = [], 0
    for size, padding in zip(meta["bag_sizes"], meta["padding"]):
        bag = ids_BL[:, start: start + size]
        keep_BK = torch.ones_like(bag, dtype=torch.bool) if keep_padding else bag != padding
        pooled = (table_ED.double()[bag] * keep_BK[:, :, None]).sum(1)
        fields.append(pooled / keep_BK.sum(1).clamp(min=1)[:, None] if meta["bag_pooling"] == "mean" else pooled)
        start += size
    return torch.stack(fields, 1)


@pytest.mark.parametrize("model", RUNS)
def test_scorer_pools_the_bags_without_their_padding_and_with_oov_ids(runs, model):
    """Fails when the scorer feeds the unpooled rows or pools the padding slots too."""
    data, found = runs
    trained = load_trained(found[model][0])
    dense = torch.from_numpy(np.load(data / "test_dense_feats.npy")).float()
    ids = torch.from_numpy(np.load(data / "test_sparse_feats.npy")).long()
    padding_L = torch.tensor(np.repeat(trained.meta["padding"], BAGS))
    assert (ids == padding_L).float().mean() > 0.05  # the test rows do hold padding
    # Every 7th id that is not padding becomes its field's out-of-vocabulary id: pooled like any id.
    field_L = torch.arange(len(BAGS)).repeat_interleave(torch.tensor(BAGS))
    oov = (torch.arange(ids.numel()).view_as(ids) % 7 == 0) & (ids != padding_L)
    ids = torch.where(oov, trained.num_ids + field_L.expand_as(ids), ids)
    with torch.no_grad():
        got = trained.scorer().logits(dense, ids)
        want = trained.model(dense, _pooled_by_hand(trained.folder, trained.table_ED, ids).float())
        with_padding = trained.model(dense, _pooled_by_hand(trained.folder, trained.table_ED, ids, keep_padding=True).float())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (with_padding - want).abs().max() > 1e-3  # so the comparison above tells a scorer that pools the padding


def test_export_serves_the_scorers_probabilities(runs, tmp_path):
    data, found = runs
    folder, _ = found["dcnv2"]
    assert main(["export", "--checkpoint", str(folder), "--output", str(tmp_path / "m.pt2")]) == 0
    program = torch.export.load(tmp_path / "m.pt2").module()
    dense = torch.from_numpy(np.load(data / "test_dense_feats.npy")).float()
    ids = torch.from_numpy(np.load(data / "test_sparse_feats.npy")).long()
    with torch.no_grad():
        expected = load_trained(folder).scorer()(dense, ids)
        served = torch.cat([program(dense[a:b], ids[a:b]) for a, b in ((0, 1), (1, 8), (8, len(ids)))])  # batch sizes 1, 7, the rest
    torch.testing.assert_close(served, expected, atol=1e-6, rtol=0)


def _copy_dataset(data: Path, to: Path, meta_changes: dict, sparse=None) -> Path:
    """A copy of the dataset with meta.json's keys changed (None: removed) and its sparse arrays mapped by `sparse`."""
    shutil.copytree(data, to)
    meta = json.loads((to / "meta.json").read_text())
    meta.update(meta_changes)
    (to / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if v is not None}))
    for split in ("train", "test"):
        if sparse is not None:
            path = to / f"{split}_sparse_feats.npy"
            np.save(path, sparse(np.load(path)))
    return to


def _refused(argv, capsys, *expected) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err
    assert "Traceback" not in err


def test_datasets_of_other_bags_and_raw_rows_are_refused(runs, tmp_path, capsys):
    data, found = runs
    folder, _ = found["dlrm"]
    meta = json.loads((data / "meta.json").read_text())
    starts = np.concatenate([[0], np.cumsum(BAGS)[:-1]])
    one_hot = _copy_dataset(data, tmp_path / "one_hot", {"bag_sizes": None, "padding_ids": None}, lambda s: s[:, starts])
    # Bags of sizes 2, 3 instead of 3, 2: the same number of columns, every id inside its field.
    pad_1 = np.full((1, 1), meta["offsets"][1] + meta["padding_ids"][1])
    swapped = _copy_dataset(data, tmp_path / "swapped", {"bag_sizes": [2, 3, *BAGS[2:]]},
                            lambda s: np.concatenate([s[:, :2], s[:, 3:5], np.broadcast_to(pad_1, (len(s), 1)), s[:, 5:]], 1))
    repadded = _copy_dataset(data, tmp_path / "repadded", {"padding_ids": [1, *meta["padding_ids"][1:]]})
    predict = ["predict", "--checkpoint", str(folder), "--output", str(tmp_path / "p.npy"), "--device", "cpu", "--no-progress"]
    fix = "--multi-hot-sizes"
    _refused(predict + ["--data", str(one_hot)], capsys, f"{one_hot / 'meta.json'} has bag sizes {[1] * 26}",
             f"trained on bag sizes {BAGS}", fix)
    _refused(predict + ["--data", str(swapped)], capsys, f"{swapped / 'meta.json'} has bag sizes {[2, 3, *BAGS[2:]]}",
             f"trained on bag sizes {BAGS}", fix)
    _refused(predict + ["--data", str(repadded)], capsys, f"{repadded / 'meta.json'} has the checkpoint's bag sizes but padding_ids [1, 0, 0, 0, None",
             "trained with padding_ids [0, 0, 0, 0, None", fix)
    (tmp_path / "raw.txt").write_text("")
    _refused(predict + ["--input", str(tmp_path / "raw.txt"), "--format", "criteo", "--vocab", str(data)], capsys,
             "trained on multi-hot bags", "one value per field", "--data DIR")
    # A one-hot model refuses the bags, and scores the one-hot rows.
    assert main(["train", "--data", str(one_hot), "--iter", "2", "--batch-size", "256", "--device", "cpu", "--checkpoint-dir", str(tmp_path / "oh"),
                 "--no-progress"]) == 0
    one_hot_predict = [*predict[:2], str(tmp_path / "oh"), *predict[3:]]
    _refused(one_hot_predict + ["--data", str(data)], capsys, f"{data / 'meta.json'} has bag sizes {BAGS}", f"trained on bag sizes {[1] * 26}")
    assert main(one_hot_predict + ["--data", str(one_hot)]) == 0
    # A checkpoint whose meta.json bags do not fit its fields is damaged.
    damaged = tmp_path / "damaged"
    shutil.copytree(folder / (folder / "latest").read_text().strip(), damaged)
    ckpt_meta = json.loads((damaged / "meta.json").read_text())
    (damaged / "meta.json").write_text(json.dumps({**ckpt_meta, "bag_sizes": BAGS[:-1], "padding": ckpt_meta["padding"][:-1]}))
    _refused([*predict[:2], str(damaged), *predict[3:], "--data", str(data)], capsys, "records bag sizes", "for 25 fields but num_fields 26")

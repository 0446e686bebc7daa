"""Bad files through the CLI: each a HetGMPError (exit 2, message on stderr, no traceback).

Every case breaks one file of a valid dataset, plan or checkpoint and checks
that `hetgmp train` / `hetgmp partition` names the file, what it expected
and what it found, and never starts a silently wrong run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hetgmp.cli import main
from tinydata import write_plan, write_planted

TRAIN = ["train", "--iter", "1", "--batch-size", "50", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A valid dataset, a 2-part plan and a 1-worker checkpoint of it."""
    root = tmp_path_factory.mktemp("good")
    write_planted(root / "ds", train_rows=200, test_rows=60)
    write_plan(root / "ds", root / "plan.npz", parts=2)
    torch.set_num_threads(1)
    assert main([*TRAIN, "--data", str(root / "ds"), "--checkpoint-dir", str(root / "ck")]) == 0
    return root


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _fails(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI; it must exit 2 with every needle on stderr and no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith(f"hetgmp {argv[0]}: error:"), err
    for needle in needles:
        assert needle in err, err
    return err


def _npy(ds: Path, name: str) -> np.ndarray:
    return np.load(ds / name)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# (case, how to break the dataset, what stderr must say)
DATASET_CASES = {
    "truncated_npy": (lambda ds: _truncate(ds / "train_sparse_feats.npy"), ["train_sparse_feats.npy", "truncated or corrupt"]),
    "garbage_npy": (lambda ds: (ds / "train_labels.npy").write_bytes(b"\x00garbage" * 40), ["train_labels.npy", "not a readable .npy"]),
    "pickled_npy": (
        lambda ds: np.save(ds / "train_dense_feats.npy", np.array([{"a": 1}] * 200, dtype=object), allow_pickle=True),
        ["train_dense_feats.npy", "not a readable .npy"],
    ),
    "float_ids": (
        lambda ds: np.save(ds / "train_sparse_feats.npy", _npy(ds, "train_sparse_feats.npy").astype(np.float32)),
        ["train_sparse_feats.npy", "expected an integer dtype", "found float32"],
    ),
    "int_dense": (
        lambda ds: np.save(ds / "train_dense_feats.npy", _npy(ds, "train_dense_feats.npy").astype(np.int64)),
        ["train_dense_feats.npy", "expected a float dtype", "found int64"],
    ),
    "fewer_columns": (
        lambda ds: np.save(ds / "train_sparse_feats.npy", _npy(ds, "train_sparse_feats.npy")[:, :3]),
        ["train_sparse_feats.npy", "expected shape (200, 4)", "found (200, 3)"],
    ),
    "id_beyond_vocabulary": (
        lambda ds: _set(ds, "train_sparse_feats.npy", (7, 3), 100),
        ["train_sparse_feats.npy", "column 3 must hold the ids of field 3, 90..99", "holds 90..100"],
    ),
    "negative_id": (lambda ds: _set(ds, "test_sparse_feats.npy", (0, 0), -1), ["test_sparse_feats.npy", "column 0", "holds -1.."]),
    "ids_without_offsets": (
        lambda ds: _set(ds, "train_sparse_feats.npy", (slice(None), 1), _npy(ds, "train_sparse_feats.npy")[:, 1] - 40),
        ["train_sparse_feats.npy", "column 1 must hold the ids of field 1, 40..69", "field offset added"],
    ),
    "label_two": (lambda ds: _set(ds, "train_labels.npy", 5, 2.0), ["train_labels.npy", "labels must be 0 or 1", "[2.0]"]),
    "label_half": (lambda ds: _set(ds, "test_labels.npy", 9, 0.5), ["test_labels.npy", "labels must be 0 or 1", "[0.5]"]),
    "label_nan": (lambda ds: _set(ds, "train_labels.npy", 0, np.nan), ["train_labels.npy", "labels must be 0 or 1"]),
    "meta_not_json": (lambda ds: (ds / "meta.json").write_text("{\"fields\": [40, 30"), ["meta.json is not valid JSON"]),
    "meta_missing_keys": (lambda ds: (ds / "meta.json").write_text("{\"fields\": [40]}"), ["meta.json lacks", "num_ids"]),
    "meta_wrong_sum": (
        lambda ds: _edit_meta(ds, num_ids=101),
        ["meta.json is inconsistent", "sum to 100", "num_ids 101"],
    ),
    "rows_disagree_with_meta": (lambda ds: _edit_meta(ds, train_rows=300), ["train_sparse_feats.npy", "expected shape (300, 4)"]),
}


def _set(ds: Path, name: str, index, value) -> None:
    a = _npy(ds, name)
    a[index] = value
    np.save(ds / name, a)


def _edit_meta(ds: Path, **changes) -> None:
    meta = json.loads((ds / "meta.json").read_text())
    (ds / "meta.json").write_text(json.dumps({**meta, **changes}))


@pytest.mark.parametrize("case", sorted(DATASET_CASES))
def test_broken_dataset_is_refused(good, tmp_path, capsys, case):
    breaker, needles = DATASET_CASES[case]
    ds = _copy(good / "ds", tmp_path / "ds")
    breaker(ds)
    _fails(capsys, [*TRAIN, "--data", str(ds), "--val"], *needles)


def test_integer_labels_are_accepted(good, tmp_path, capsys):
    """Labels stored as int64 0/1 (the original's dtype) are the same data: the run trains."""
    ds = _copy(good / "ds", tmp_path / "ds")
    np.save(ds / "train_labels.npy", _npy(ds, "train_labels.npy").astype(np.int64))
    assert main([*TRAIN, "--data", str(ds)]) == 0


def test_empty_dataset_is_refused(tmp_path, capsys):
    write_planted(tmp_path / "ds", train_rows=0, test_rows=10)
    _fails(capsys, [*TRAIN, "--data", str(tmp_path / "ds")], "has no training rows (0 rows in all)")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_broken_plan_is_refused(good, tmp_path, capsys, damage):
    plan = tmp_path / "plan.npz"
    shutil.copy(good / "plan.npz", plan)
    if damage == "truncate":
        _truncate(plan)
    else:
        plan.write_bytes(b"PK\x03\x04" + bytes(200))
    _fails(capsys, [*TRAIN, "--data", str(good / "ds"), "--partition", str(plan)], str(plan), "truncated or corrupt", "hetgmp partition")


def test_partition_refuses_float_ids(good, tmp_path, capsys):
    ds = _copy(good / "ds", tmp_path / "ds")
    np.save(ds / "train_sparse_feats.npy", _npy(ds, "train_sparse_feats.npy").astype(np.float64))
    _fails(capsys, ["partition", str(ds), "--parts", "2", "--output", str(tmp_path / "p.npz")], "ids must be integers", "float64")
    assert not (tmp_path / "p.npz").exists()


def _break_rank_file(folder: Path, how: str) -> None:
    path = folder / "rank-0.pt"
    if how == "truncated":
        _truncate(path)
    elif how == "garbage":
        path.write_bytes(b"not a checkpoint" * 8)
    else:  # a pickled object that is not a tensor: weights_only=True must refuse to run its code
        torch.save({"step": 1, "model": Path("/etc")}, path)


@pytest.mark.parametrize("how", ["truncated", "garbage", "pickled_object"])
def test_broken_checkpoint_is_refused(good, tmp_path, capsys, how):
    ck = _copy(good / "ck", tmp_path / "ck")
    _break_rank_file(ck / "step-000001", how)
    argv = [*TRAIN, "--iter", "2", "--data", str(good / "ds"), "--checkpoint-dir", str(ck), "--resume"]
    err = _fails(capsys, argv, "no intact checkpoint in", "rank-0.pt is not a loadable checkpoint", "truncated or corrupt",
                 "start over with --force instead of --resume")
    assert "): the file is truncated or corrupt. Nothing there can be resumed" in err  # the message is whole


def test_broken_checkpoint_meta_and_pointer_are_refused(good, tmp_path, capsys):
    ck = _copy(good / "ck", tmp_path / "ck")
    (ck / "step-000001" / "meta.json").write_text("{\"model\": ")
    argv = [*TRAIN, "--iter", "2", "--data", str(good / "ds"), "--checkpoint-dir", str(ck), "--resume"]
    _fails(capsys, argv, "meta.json is not readable JSON", "checkpoint is damaged")
    (ck / "latest").write_text("step-000009\n")
    _fails(capsys, argv, "names 'step-000009', which is not a complete checkpoint", "step-000001/meta.json is not readable JSON")

"""The shared plumbing: flag spellings, atomic outputs, dataset directories, launch detection."""

import argparse
import json

import numpy as np
import pytest

from hetgmp.atomic import atomic_directory, atomic_file
from hetgmp.cliflags import POSITIVE, add_flag
from hetgmp.data.arrays import DatasetMeta, load_dataset, save_split, write_meta
from hetgmp.distributed import detect_launch
from hetgmp.errors import HetGMPError


def test_flags_accept_both_spellings():
    p = argparse.ArgumentParser()
    add_flag(p, "--batch-size", "-b", type=int, default=8192, range=POSITIVE)
    assert p.parse_args(["--batch_size", "5"]).batch_size == 5
    assert p.parse_args(["--batch-size", "6"]).batch_size == 6
    assert p.parse_args(["-b", "7"]).batch_size == 7


def test_atomic_file_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "plan.npz"
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            np.savez(tmp, a=np.arange(3))
            raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []
    with atomic_file(target) as tmp:
        np.savez(tmp, a=np.arange(3))
    assert np.load(target)["a"].tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["plan.npz"]


def test_atomic_directory_refuses_overwrite_and_cleans_up(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(ValueError):
        with atomic_directory(out) as tmp:
            (tmp / "x").write_text("partial")
            raise ValueError("bad row")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_directory(out) as tmp:
        (tmp / "x").write_text("one")
    with pytest.raises(HetGMPError, match="--force"):
        with atomic_directory(out):
            pass
    # --force replaces only a dataset (a folder holding meta.json), never a folder of other files.
    with pytest.raises(HetGMPError, match="folder without meta.json"):
        with atomic_directory(out, force=True):
            pass
    (out / "meta.json").write_text("{}")
    with atomic_directory(out, force=True) as tmp:
        (tmp / "x").write_text("two")
    assert (out / "x").read_text() == "two" and not (out / "meta.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def _write_tiny(directory, rows=5, fields=(3, 2)):
    rng = np.random.default_rng(0)
    meta = DatasetMeta(fields=list(fields), num_ids=sum(fields), train_rows=rows, test_rows=2, seed=0)
    directory.mkdir()
    for split, n in (("train", rows), ("test", 2)):
        sparse = np.stack([rng.integers(0, f, n) + o for f, o in zip(fields, meta.offsets)], 1).astype(np.int32)
        save_split(directory, split, rng.random((n, 13)), sparse, rng.integers(0, 2, n))
    write_meta(directory, meta)
    return meta


def test_dataset_round_trip_and_meta_keys(tmp_path):
    meta = _write_tiny(tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds")
    assert ds.meta.offsets == [0, 3] and len(ds.train) == 5 and len(ds.test) == 2
    on_disk = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert {"fields", "offsets", "num_ids", "train_rows", "test_rows", "seed"} <= on_disk.keys()
    assert ds.train.sparse.dtype == np.int32 and meta.id_dtype() == np.int32


def test_dataset_shape_mismatch_names_the_file(tmp_path):
    _write_tiny(tmp_path / "ds")
    np.save(tmp_path / "ds" / "train_labels.npy", np.zeros(4, np.float32))
    with pytest.raises(HetGMPError, match="train_labels.npy"):
        load_dataset(tmp_path / "ds")


def test_truncated_array_is_a_clear_error(tmp_path):
    _write_tiny(tmp_path / "ds")
    path = tmp_path / "ds" / "train_sparse_feats.npy"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(HetGMPError, match="truncated or corrupt"):
        load_dataset(tmp_path / "ds", mmap=False)


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, (0, 1, "none")),
        ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, (3, 4, "torchrun")),
        ({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "8"}, (2, 8, "mpirun")),
    ],
)
def test_launch_detection(monkeypatch, env, expected):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    got = detect_launch()
    assert (got.rank, got.world_size, got.launcher) == expected

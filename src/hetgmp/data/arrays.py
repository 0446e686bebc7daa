"""The dataset directory: HET-GMP's six arrays plus meta.json.

Layout of DIR (N train rows, M test rows, F sparse fields, I dense features):

    train_dense_feats.npy   float32 (N, I)   log-transformed; (N, 0) when there are none
    train_sparse_feats.npy  int32   (N, F)   global ids (int64 when num_ids >= 2**31); (N, sum(bag_sizes))
                                             for multi-hot data, each field's bag in its own columns
    train_labels.npy        float32 (N,)     0.0 or 1.0
    test_*                  the same with M rows
    meta.json               {"fields": [...], "offsets": [...], "num_ids": E,
                             "train_rows": N, "test_rows": M, "seed": S, ...}; multi-hot data adds
                             "bag_sizes": [...] and "padding_ids": [...] (each field's local id
                             filling bags shorter than their size, null where none)

Global ids: field f's local id j becomes offsets[f] + j, offsets being the
running sum of the previous fields' sizes. Example with fields [3, 2]:
offsets [0, 3], num_ids 5; field 1's local id 1 is global id 4.

The original stored float64/int64; these compact dtypes hold the same values
(ids fit int32 below 2**31) at a third of the size. Loading accepts any
integer/float dtype and labels shaped (N,) or (N, 1).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hetgmp.errors import HetGMPError

SPLITS = ("train", "test")
META_FILE = "meta.json"


def array_name(split: str, kind: str) -> str:
    """kind is "dense", "sparse" or "labels": array_name("train", "sparse") == "train_sparse_feats.npy"."""
    return f"{split}_labels.npy" if kind == "labels" else f"{split}_{kind}_feats.npy"


@dataclass
class DatasetMeta:
    """meta.json. `extra` keeps any further keys (dataset name, planted AUC, ...)."""

    fields: list[int]
    num_ids: int
    train_rows: int
    test_rows: int
    seed: int
    offsets: list[int] = field(default_factory=list)
    num_dense: int = 13
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        expected = np.concatenate([[0], np.cumsum(self.fields)[:-1]]).astype(int).tolist() if self.fields else []
        if not self.offsets:
            self.offsets = expected
        if self.offsets != expected or sum(self.fields) != self.num_ids:
            raise HetGMPError(
                f"meta.json is inconsistent: fields {self.fields} sum to {sum(self.fields)} with offsets {expected}, "
                f"but it says num_ids {self.num_ids} and offsets {self.offsets}: re-run `hetgmp prepare`"
            )

    @property
    def num_fields(self) -> int:
        return len(self.fields)

    @property
    def bag_sizes(self) -> list[int]:
        """Ids per row of each field: meta.json's "bag_sizes", all 1 when absent (one-hot)."""
        sizes = self.extra.get("bag_sizes")
        if sizes is None:
            return [1] * self.num_fields
        if len(sizes) != self.num_fields or not all(isinstance(k, int) and k >= 1 for k in sizes):
            raise HetGMPError(f"meta.json's bag_sizes {sizes} must hold one integer >= 1 for each of the {self.num_fields} fields: re-run `hetgmp prepare`")
        return list(sizes)

    @property
    def padding_ids(self) -> list[int | None]:
        """Each field's local padding id (meta.json's "padding_ids"), None where the field has none
        (all None when absent): the id that fills a bag shorter than its size."""
        ids = self.extra.get("padding_ids")
        if ids is None:
            return [None] * self.num_fields
        if len(ids) != self.num_fields or not all(i is None or (isinstance(i, int) and 0 <= i < n) for i, n in zip(ids, self.fields)):
            raise HetGMPError(f"meta.json's padding_ids {ids} must hold, for each of the {self.num_fields} fields, null or a local id "
                              "below the field's size: re-run `hetgmp prepare`")
        return list(ids)

    def padding_columns(self) -> np.ndarray:
        """(id_columns,) int64: the global padding id of each sparse column's field, -1 where none,
        so that `sparse == meta.padding_columns()` marks the padding slots (pool_bags' pad_mask)."""
        per_field = [-1 if i is None else offset + i for i, offset in zip(self.padding_ids, self.offsets)]
        return np.repeat(np.array(per_field, dtype=np.int64), self.bag_sizes)

    @property
    def id_columns(self) -> int:
        """Columns of the sparse arrays: sum(bag_sizes), field by field."""
        return sum(self.bag_sizes)

    def id_dtype(self) -> np.dtype:
        return np.dtype(np.int32) if self.num_ids < 2**31 else np.dtype(np.int64)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(out.pop("extra"))
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "DatasetMeta":
        known = {"fields", "num_ids", "train_rows", "test_rows", "seed", "offsets", "num_dense"}
        missing = {"fields", "num_ids", "train_rows", "test_rows", "seed"} - data.keys()
        if missing:
            raise HetGMPError(f"meta.json lacks {sorted(missing)}: re-run `hetgmp prepare` or `hetgmp synth`")
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**{k: data[k] for k in known if k in data}, extra=extra)


def write_meta(directory: Path, meta: DatasetMeta) -> None:
    (Path(directory) / META_FILE).write_text(json.dumps(meta.to_json(), indent=2) + "\n")


def read_meta(directory: str | Path) -> DatasetMeta:
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise HetGMPError(f"{path} not found: {directory} is not a prepared dataset (run `hetgmp prepare` or `hetgmp synth`)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise HetGMPError(f"{path} is not valid JSON ({e}): re-run `hetgmp prepare`") from e
    return DatasetMeta.from_json(data)


@dataclass
class Split:
    """One split's arrays, memory-mapped: dense (N, I) float, sparse (N, F) int, labels (N,)."""

    dense: np.ndarray
    sparse: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    directory: Path
    meta: DatasetMeta
    train: Split
    test: Split


def load_array(path: Path, mmap: bool = True) -> np.ndarray:
    """np.load with the errors a user can act on (missing, truncated, pickled)."""
    if not path.is_file():
        raise HetGMPError(f"{path} is missing: re-run `hetgmp prepare` for this dataset")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise HetGMPError(f"{path} is not a readable .npy array ({e}): the file is truncated or corrupt; re-run `hetgmp prepare`") from e


def _check_split(directory: Path, split: str, s: Split, meta: DatasetMeta, rows: int) -> None:
    name = lambda kind: directory / array_name(split, kind)  # noqa: E731
    if s.labels.ndim == 2 and s.labels.shape[1] == 1:
        s.labels = s.labels[:, 0]
    checks = [
        (s.sparse.ndim == 2 and s.sparse.shape == (rows, meta.id_columns), name("sparse"), f"shape ({rows}, {meta.id_columns})", s.sparse.shape),
        (s.dense.ndim == 2 and s.dense.shape[0] == rows, name("dense"), f"{rows} rows", s.dense.shape),
        (s.labels.ndim == 1 and s.labels.shape[0] == rows, name("labels"), f"shape ({rows},)", s.labels.shape),
        (np.issubdtype(s.sparse.dtype, np.integer), name("sparse"), "an integer dtype", s.sparse.dtype),
        (np.issubdtype(s.dense.dtype, np.floating), name("dense"), "a float dtype", s.dense.dtype),
    ]
    for ok, path, expected, found in checks:
        if not ok:
            raise HetGMPError(f"{path}: expected {expected} (from meta.json), found {found}: the dataset is damaged; re-run `hetgmp prepare`")


def load_dataset(directory: str | Path, mmap: bool = True) -> Dataset:
    """Open a dataset directory, checking shapes and dtypes against meta.json."""
    directory = Path(directory)
    meta = read_meta(directory)
    splits = {}
    for split, rows in (("train", meta.train_rows), ("test", meta.test_rows)):
        s = Split(*(load_array(directory / array_name(split, k), mmap) for k in ("dense", "sparse", "labels")))
        _check_split(directory, split, s, meta, rows)
        splits[split] = s
    return Dataset(directory, meta, splits["train"], splits["test"])


def save_split(directory: Path, split: str, dense: np.ndarray, sparse: np.ndarray, labels: np.ndarray) -> None:
    """Write one split's three arrays in the compact dtypes (see module doc)."""
    np.save(directory / array_name(split, "dense"), np.ascontiguousarray(dense, dtype=np.float32))
    np.save(directory / array_name(split, "sparse"), np.ascontiguousarray(sparse))
    np.save(directory / array_name(split, "labels"), np.ascontiguousarray(labels, dtype=np.float32))

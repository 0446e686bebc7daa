"""Tiny CTR datasets with a planted model, written in the dataset directory format.

    meta = write_planted(tmp_path / "ds", train_rows=4000, test_rows=1000)

Labels are Bernoulli(sigmoid(sum of per-id weights + dense . w)), so a model
that learns the ids' weights beats AUC 0.5 by a wide margin in a few steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hetgmp.data.arrays import DatasetMeta, save_split, write_meta


def write_planted(directory: Path, train_rows: int = 4000, test_rows: int = 1000, fields=(40, 30, 20, 10), num_dense: int = 3, seed: int = 0) -> DatasetMeta:
    rng = np.random.default_rng(seed)
    meta = DatasetMeta(fields=list(fields), num_ids=sum(fields), train_rows=train_rows, test_rows=test_rows, seed=seed, num_dense=num_dense)
    weight = rng.normal(0, 1.5, meta.num_ids)
    dense_w = rng.normal(0, 1.0, num_dense)
    directory = Path(directory)
    directory.mkdir(parents=True)
    for split, n in (("train", train_rows), ("test", test_rows)):
        # Zipf-like field values: a few hot ids, as in CTR data.
        local = [np.minimum(rng.zipf(1.6, n) - 1, f - 1) for f in fields]
        sparse = np.stack([l + o for l, o in zip(local, meta.offsets)], 1).astype(np.int32)
        dense = rng.normal(0, 1, (n, num_dense)).astype(np.float32)
        logit = weight[sparse].sum(1) + dense @ dense_w
        labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        save_split(directory, split, dense, sparse, labels)
    write_meta(directory, meta)
    return meta


def write_plan(dataset: Path, path: Path, parts: int = 2, gpus_per_node: int = 8) -> None:
    """A simple valid plan for `dataset`: samples by their first id, rows round-robin,
    each part's candidates every id it does not own: those it reads, most used first, then the rest."""
    from hetgmp.data.arrays import load_dataset
    from hetgmp.partition.plan import PartitionPlan

    ds = load_dataset(dataset)
    ids = np.asarray(ds.train.sparse, dtype=np.int64)
    owner = np.arange(ds.meta.num_ids) % parts
    data_partition = (ids[:, 0] % parts).astype(np.int32)
    lists = []
    for p in range(parts):
        counts = np.bincount(ids[data_partition == p].ravel(), minlength=ds.meta.num_ids)
        remote = np.flatnonzero((counts > 0) & (owner != p))
        never_read = np.flatnonzero((counts == 0) & (owner != p))
        lists.append(np.concatenate([remote[np.argsort(-counts[remote], kind="stable")], never_read]).astype(np.int32))
    meta = {"parts": parts, "gpus_per_node": gpus_per_node, "num_ids": ds.meta.num_ids, "train_rows": ds.meta.train_rows}
    PartitionPlan(owner.astype(np.int32), data_partition, lists, meta).save(path)


def read_metrics(path: Path, phase: str | None = None) -> list[dict]:
    """The JSONL metrics file's records, optionally only those of one phase ("train" or "eval")."""
    import json

    records = [json.loads(line) for line in open(path)]
    return [r for r in records if phase is None or r["phase"] == phase]

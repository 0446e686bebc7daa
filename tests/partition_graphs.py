"""Small seeded bigraphs for the partition tests: communities plus power-law ids.

`community_graph(n, fields, vocab, groups, seed)` draws each sample's group
g (power law over groups), then per field with probability `in_group` an id
from g's private pool of that field, else a Zipf-ranked global id. Field f
owns ids [f * vocab, (f + 1) * vocab), so num_ids = fields * vocab.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def community_graph(n: int, fields: int = 6, vocab: int = 400, groups: int = 16, seed: int = 0, in_group: float = 0.7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    gw = 1.0 / np.arange(1, groups + 1) ** 0.8
    group = rng.choice(groups, size=n, p=gw / gw.sum())
    zw = 1.0 / np.arange(1, vocab + 1) ** 1.1
    out = np.empty((n, fields), dtype=np.int32)
    pool = max(vocab // groups, 1)
    for f in range(fields):
        global_ids = rng.permutation(vocab)[rng.choice(vocab, size=n, p=zw / zw.sum())]
        local = (group * pool + rng.integers(0, pool, size=n)) % vocab
        pick = rng.random(n) < in_group
        out[:, f] = f * vocab + np.where(pick, local, global_ids)
    return out


def write_dataset(directory: Path, ids: np.ndarray, num_ids: int | None = None, meta: bool = True) -> Path:
    """A folder with train_sparse_feats.npy (and a minimal meta.json unless meta=False)."""
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "train_sparse_feats.npy", ids)
    if meta:
        fields = ids.shape[1]
        num_ids = int(ids.max()) + 1 if num_ids is None else num_ids
        sizes = [num_ids // fields] * (fields - 1) + [num_ids - (num_ids // fields) * (fields - 1)]
        body = {"fields": sizes, "num_ids": num_ids, "train_rows": len(ids), "test_rows": 0, "seed": 0}
        (directory / "meta.json").write_text(json.dumps(body))
    return directory

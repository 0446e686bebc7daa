"""Shared set-up of the sharded embedding tests: toy data and hand-made placements."""

import numpy as np

from hetgmp.embedding import Placement

NUM_IDS, FIELDS, LOCAL_BATCH, STEPS, DIM = 400, 3, 24, 20, 4


def plan_like(ids: np.ndarray, world_size: int, store_rate: float, seed: int = 5) -> Placement:
    """Owners by a seeded rule; each rank mirrors its most-read remote ids (its top `store_rate`)."""
    owner = np.random.default_rng(seed).integers(0, world_size, NUM_IDS).astype(np.int16)
    rows = ids.shape[1] // world_size
    lists = []
    for rank in range(world_size):
        reads = np.bincount(ids[:, rank * rows : (rank + 1) * rows].ravel(), minlength=NUM_IDS)
        remote = np.nonzero((owner != rank) & (reads > 0))[0]
        lists.append(remote[np.argsort(-reads[remote], kind="stable")])
    return Placement.from_plan(owner, lists, store_rate)

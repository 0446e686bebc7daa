"""Where every embedding row lives: its owner, and which workers mirror it.

    owner   = [0, 1, 1, 0, 1]          # id 0 and 3 on rank 0; ids 1, 2, 4 on rank 1
    mirrors = [array([2]), array([0])] # rank 0 keeps a copy of id 2, rank 1 of id 0

A plan from `hetgmp partition` gives `embed_partition` (the owner array) and
one ranked candidate list per part; worker p mirrors the first
floor(store_rate * len(list)) ids of its list. Without a plan, owners are
random (seeded) and nobody mirrors: the row-wise sharding of TorchRec/HugeCTR.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hetgmp.errors import HetGMPError
from hetgmp.partition.priority import mirror_count


def owner_dtype(world_size: int) -> np.dtype:
    """The narrowest integer type that holds every rank (2 bytes per id below 32768 workers)."""
    return np.dtype(np.int16) if world_size <= np.iinfo(np.int16).max else np.dtype(np.int32)


@dataclass
class Placement:
    owner: np.ndarray          # int[E]: owning rank of every id
    mirrors: list[np.ndarray]  # per rank: ids that rank mirrors

    @classmethod
    def random(cls, num_ids: int, world_size: int, seed: int) -> "Placement":
        """Seeded uniform owners, no mirrors."""
        rng = np.random.default_rng(seed)
        owner = rng.integers(0, world_size, size=num_ids, dtype=owner_dtype(world_size))
        return cls(owner, [np.zeros(0, dtype=np.int64) for _ in range(world_size)])

    @classmethod
    def from_plan(cls, embed_partition: np.ndarray, candidate_lists: list[np.ndarray], store_rate: float) -> "Placement":
        """Owners from the plan; rank p mirrors the top floor(store_rate * len) of its list."""
        if not 0.0 <= store_rate <= 1.0:
            raise HetGMPError(f"--store-rate must be within [0, 1], got {store_rate}")
        mirrors = [np.asarray(lst[: mirror_count(len(lst), store_rate)], dtype=np.int64) for lst in candidate_lists]
        return cls(np.asarray(embed_partition), mirrors)

    @classmethod
    def from_partition(cls, plan, store_rate: float) -> "Placement":
        """Owners and mirrors of a PartitionPlan (compact lists are rebuilt only as far as needed)."""
        if not 0.0 <= store_rate <= 1.0:
            raise HetGMPError(f"--store-rate must be within [0, 1], got {store_rate}")
        mirrors = [np.asarray(plan.mirror_ids(p, store_rate), dtype=np.int64) for p in range(plan.parts)]
        return cls(np.asarray(plan.embed_partition), mirrors)

    @property
    def world_size(self) -> int:
        return len(self.mirrors)

    def validate(self, num_ids: int, world_size: int) -> None:
        """Check the placement against the table and the job; raise HetGMPError with the fix."""
        if len(self.owner) != num_ids:
            raise HetGMPError(
                f"the placement covers {len(self.owner)} ids but the table has {num_ids}: "
                "re-run `hetgmp partition` on this dataset (embed_partition must span the whole vocabulary)"
            )
        if self.world_size != world_size:
            raise HetGMPError(
                f"the placement has {self.world_size} parts but {world_size} workers were started: "
                f"re-run `hetgmp partition --parts {world_size}` or start {self.world_size} workers"
            )
        if num_ids and (int(self.owner.min()) < 0 or int(self.owner.max()) >= world_size):
            raise HetGMPError(f"owners must lie in [0, {world_size}), the placement has {int(self.owner.min())}..{int(self.owner.max())}")
        for rank, ids in enumerate(self.mirrors):
            self._validate_mirrors(rank, ids, num_ids)

    def _validate_mirrors(self, rank: int, ids: np.ndarray, num_ids: int) -> None:
        if len(ids) == 0:
            return
        if int(ids.min()) < 0 or int(ids.max()) >= num_ids:
            raise HetGMPError(f"rank {rank}'s mirror list has ids outside [0, {num_ids}): the plan was made for another dataset")
        if len(np.unique(ids)) != len(ids):
            raise HetGMPError(f"rank {rank}'s mirror list repeats ids: a candidate list must list each id once")
        if np.any(self.owner[ids] == rank):
            raise HetGMPError(f"rank {rank}'s mirror list holds ids that rank owns: candidate lists must hold only remote ids")

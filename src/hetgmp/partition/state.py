"""A partition in progress: who holds each sample and row, and the counts both
refinements update in place.

Start (SPEC: random placement), seeded and exactly balanced: a random
permutation of the samples is dealt round-robin over the P parts, and
likewise the E ids, so part sizes differ by at most one. Example with N=5,
P=2 and permutation [3, 0, 4, 1, 2]: samples 3, 4, 2 go to part 0 and 0, 1
to part 1, so part = [1, 1, 0, 0, 0].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hetgmp.partition import cost
from hetgmp.partition.graph import count_matrix


@dataclass
class PartitionState:
    """Everything a pass reads or writes.

    ids (N, F) int, part int32[N], owner int32[E], counts int32 (E, P) (see
    graph.py), sizes int64[P] samples per part, rows int64[P] ids per part,
    deg int64[E] uses per id, soft / marginal the S and S(c+1)-S(c) tables,
    weights (P, P) link weights, m = N/P, batch = B.
    """

    ids: np.ndarray
    part: np.ndarray
    owner: np.ndarray
    counts: np.ndarray
    sizes: np.ndarray
    rows: np.ndarray
    deg: np.ndarray
    soft: np.ndarray
    marginal: np.ndarray
    weights: np.ndarray
    m: float
    batch: int

    @property
    def parts(self) -> int:
        return len(self.weights)

    @property
    def num_ids(self) -> int:
        return len(self.owner)

    def traffic(self) -> np.ndarray:
        """comm[p][q] for the current assignment (see cost.py)."""
        return cost.traffic_matrix(self.counts, self.owner, self.soft, self.m, self.batch)

    def cost(self) -> float:
        return cost.total_cost(self.traffic(), self.weights)

    def recount(self) -> None:
        """Rebuild counts and sizes from `part` (after an assignment was replaced)."""
        self.counts = count_matrix(self.ids, self.part, self.num_ids, self.parts)
        self.sizes = np.bincount(self.part, minlength=self.parts).astype(np.int64)


def balanced_random(n: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """int32[n]: a random permutation dealt round-robin, so sizes differ by at most one."""
    out = np.empty(n, dtype=np.int32)
    out[rng.permutation(n)] = np.arange(n, dtype=np.int64) % parts
    return out


def random_state(ids: np.ndarray, num_ids: int, parts: int, batch: int, gpus_per_node: int, seed: int) -> PartitionState:
    """The seeded random start: samples first, then ids, from one generator."""
    rng = np.random.default_rng(seed)
    part = balanced_random(len(ids), parts, rng)
    owner = balanced_random(num_ids, parts, rng)
    counts = count_matrix(ids, part, num_ids, parts)
    deg = counts.sum(axis=1, dtype=np.int64)
    m = len(ids) / parts
    soft = cost.soft_table(int(deg.max(initial=0)), m, batch)
    return PartitionState(
        ids=ids,
        part=part,
        owner=owner,
        counts=counts,
        sizes=np.bincount(part, minlength=parts).astype(np.int64),
        rows=np.bincount(owner, minlength=parts).astype(np.int64),
        deg=deg,
        soft=soft,
        marginal=cost.marginal_table(soft),
        weights=cost.link_weights(parts, gpus_per_node),
        m=m,
        batch=batch,
    )

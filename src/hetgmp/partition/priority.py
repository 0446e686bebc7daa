"""Mirror priority and each part's ranked candidate list (SPEC §2).

The priority of id e for part p (p does not own e, c[p][e] > 0) is

    w[p][owner(e)] * S(c[p][e])^2 * (1/deg(e) + 1/c[p][e])

Part p's candidate list holds every such id in descending priority, ties
broken by ascending id, so the list is a pure function of the partition.
Ids p owns or never reads are not listed. Worker p mirrors the first
floor(store_rate * len(list)) entries.

Example (one node, so every w is 0.1; M = 2, B = 2 as in cost.py): part 0
reads id 2 (owned by part 1) once, deg(2) = 3: priority 0.1 * 0.75^2 *
(1/3 + 1) = 0.075.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _count_candidates(counts, owner, chunks):  # pragma: no cover - compiled
    num_ids, parts = counts.shape
    per = np.zeros((chunks, parts), dtype=np.int64)
    for t in prange(chunks):
        for e in range(num_ids * t // chunks, num_ids * (t + 1) // chunks):
            for p in range(parts):
                if counts[e, p] > 0 and owner[e] != p:
                    per[t, p] += 1
    return per


@njit(parallel=True, cache=True)
def _fill_candidates(counts, owner, deg, soft, w, starts, ids_out, prio_out):  # pragma: no cover - compiled
    """Write every candidate, in id order, at starts[t, p]: chunk t's slot in part p's segment."""
    num_ids, parts = counts.shape
    chunks = starts.shape[0]
    top = len(soft) - 1
    for t in prange(chunks):
        pos = starts[t].copy()
        for e in range(num_ids * t // chunks, num_ids * (t + 1) // chunks):
            o = owner[e]
            for p in range(parts):
                c = counts[e, p]
                if c > 0 and o != p:
                    s = soft[min(c, top)]
                    ids_out[pos[p]] = e
                    prio_out[pos[p]] = w[p, o] * s * s * (1.0 / deg[e] + 1.0 / c)
                    pos[p] += 1


@njit(parallel=True, cache=True)
def _rank(bounds, ids_out, prio_out):  # pragma: no cover - compiled
    """Sort each part's segment by descending priority; mergesort is stable, so ties keep id order."""
    for p in prange(len(bounds) - 1):
        lo, hi = bounds[p], bounds[p + 1]
        order = np.argsort(-prio_out[lo:hi], kind="mergesort")
        ids_out[lo:hi] = ids_out[lo:hi][order]
        prio_out[lo:hi] = prio_out[lo:hi][order]


def candidate_lists(counts: np.ndarray, owner: np.ndarray, deg: np.ndarray, soft: np.ndarray, weights: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(ids, priorities) per part, ranked; ids are int32 (int64 past 2^31 ids).

    All parts share one flat buffer, part p holding [bounds[p], bounds[p+1]);
    the returned arrays are views into it.
    """
    parts = counts.shape[1]
    per = _count_candidates(counts, owner, numba.get_num_threads() * 4)
    bounds = np.concatenate([[0], np.cumsum(per.sum(axis=0))]).astype(np.int64)
    starts = bounds[None, :-1] + np.vstack([np.zeros((1, parts), dtype=np.int64), np.cumsum(per, axis=0)[:-1]])
    ids_out = np.empty(bounds[-1], dtype=np.int32 if len(owner) < 2**31 else np.int64)
    prio_out = np.empty(bounds[-1], dtype=np.float64)
    _fill_candidates(counts, owner, deg, soft, weights, starts, ids_out, prio_out)
    _rank(bounds, ids_out, prio_out)
    return np.split(ids_out, bounds[1:-1]), np.split(prio_out, bounds[1:-1])


def mirror_count(list_length: int, store_rate: float) -> int:
    """How many of a part's candidates it mirrors: floor(store_rate * len(list))."""
    return int(math.floor(store_rate * list_length + 1e-9))

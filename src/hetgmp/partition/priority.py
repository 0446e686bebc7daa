"""Mirror priority and each part's ranked candidate list (SPEC §2).

Part p's candidate list holds **every** id p does not own, as the original's
script writes it (it sorts p's whole priority row and drops the owned ids):
first the ids p reads, in descending priority with ties broken by ascending
id, then the ids p never reads (priority 0), by ascending id. So the list is
a pure function of the partition, its length is E - |rows owned by p|, and
worker p mirrors the first floor(store_rate * len(list)) entries: about 1%
of the whole vocabulary at store_rate 0.01.

Two rankings of the read ids (`Ranking`):

- "original" (HET-GMP's): w[p][owner(e)] * S(c)^2 * (1/deg(e) + 1/c), with
  c = c[p][e] and S the soft count of cost.py.
- "staleness": the fetches a mirror of e saves p per step under the bound.
  With pi = S(c) B/M (the chance e is in a batch of p) and u = (deg(e) - c) B/M
  (the updates other parts make to e per step), a refreshed mirror stays fresh
  for T = (bound + 1) / u steps; the next read after that refreshes it, so a
  mirror costs pi / (pi T + 1) fetches a step instead of pi. Priority =
  w[p][owner(e)] * (pi - pi / (pi T + 1)) = w * pi^2 T / (pi T + 1), and
  w * pi when no other part reads e. A row other parts update more than
  `bound` times a step is refreshed at nearly every read and ranks low.

Example (one node, so every w is 0.1; M = 2, B = 2 as in cost.py): part 0
reads id 2 (owned by part 1) once, deg(2) = 3: original priority
0.1 * 0.75^2 * (1/3 + 1) = 0.075. Staleness at bound 0: pi = 0.75,
u = 2, T = 0.5, priority 0.1 * 0.5625 * 0.5 / 1.375 = 0.0205.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange

RANKINGS = ("original", "staleness")


@dataclass(frozen=True)
class Ranking:
    """How read candidates are ranked: `kind` one of RANKINGS; `bound` and `rate` (B/M) for "staleness"."""

    kind: str = "original"
    bound: int = 100
    rate: float = 1.0

    def code(self) -> float:
        """The compiled kernels' form: -1 for the original priority, else the bound."""
        return -1.0 if self.kind == "original" else float(self.bound)


@njit(cache=True)
def _priority(w, s, c, deg, rate, bound):  # pragma: no cover - compiled
    """One read candidate's priority (module docstring); bound < 0 selects the original's."""
    if bound < 0:
        return w * s * s * (1.0 / deg + 1.0 / c)
    pi = s * rate
    others = (deg - c) * rate
    if others <= 0:
        return w * pi
    t = (bound + 1.0) / others
    return w * pi * pi * t / (pi * t + 1.0)


@njit(parallel=True, cache=True)
def _count_candidates(counts, owner, chunks):  # pragma: no cover - compiled
    """per[0][t][p] / per[1][t][p]: ids of chunk t that part p reads / never reads and does not own."""
    num_ids, parts = counts.shape
    per = np.zeros((2, chunks, parts), dtype=np.int64)
    for t in prange(chunks):
        for e in range(num_ids * t // chunks, num_ids * (t + 1) // chunks):
            for p in range(parts):
                if owner[e] != p:
                    per[0 if counts[e, p] > 0 else 1, t, p] += 1
    return per


@njit(parallel=True, cache=True)
def _fill_candidates(counts, owner, deg, soft, w, rate, bound, head_at, tail_at, prio_shift, ids_out, prio_out):  # pragma: no cover - compiled
    """Write chunk t's candidates of part p, in id order, from head_at[t, p] (read ids, with their
    priority at the same index minus prio_shift[p]) and tail_at[t, p] (never-read ids)."""
    num_ids, parts = counts.shape
    chunks = head_at.shape[0]
    top = len(soft) - 1
    for t in prange(chunks):
        head, tail = head_at[t].copy(), tail_at[t].copy()
        for e in range(num_ids * t // chunks, num_ids * (t + 1) // chunks):
            o = owner[e]
            for p in range(parts):
                if o == p:
                    continue
                c = counts[e, p]
                if c > 0:
                    ids_out[head[p]] = e
                    prio_out[head[p] - prio_shift[p]] = _priority(w[p, o], soft[min(c, top)], c, deg[e], rate, bound)
                    head[p] += 1
                else:
                    ids_out[tail[p]] = e
                    tail[p] += 1


@njit(parallel=True, cache=True)
def _rank(bounds, prio_bounds, ids_out, prio_out):  # pragma: no cover - compiled
    """Sort each part's read ids by descending priority; mergesort is stable, so ties keep id order."""
    for p in prange(len(bounds) - 1):
        lo, plo, n = bounds[p], prio_bounds[p], prio_bounds[p + 1] - prio_bounds[p]
        order = np.argsort(-prio_out[plo: plo + n], kind="mergesort")
        ids_out[lo: lo + n] = ids_out[lo: lo + n][order]
        prio_out[plo: plo + n] = prio_out[plo: plo + n][order]


def _starts(per: np.ndarray, first: np.ndarray) -> np.ndarray:
    """[chunks, P]: where chunk t's entries of part p begin, given each part's first position."""
    return first[None, :] + np.vstack([np.zeros((1, per.shape[1]), dtype=np.int64), np.cumsum(per, axis=0)[:-1]])


def candidate_lists(counts: np.ndarray, owner: np.ndarray, deg: np.ndarray, soft: np.ndarray, weights: np.ndarray,
                    ranking: Ranking = Ranking()) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(ids, priorities) per part: ids is the whole ranked list (int32, int64 past 2^31 ids),
    priorities those of its read head (len(priorities[p]) ids p reads; the rest have priority 0).

    All parts' lists share one flat buffer, part p holding [bounds[p], bounds[p+1]);
    the returned arrays are views into it.
    """
    if ranking.kind not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking.kind!r}")
    per = _count_candidates(counts, owner, numba.get_num_threads() * 4)
    heads, tails = per[0].sum(axis=0), per[1].sum(axis=0)
    bounds = np.concatenate([[0], np.cumsum(heads + tails)]).astype(np.int64)
    prio_bounds = np.concatenate([[0], np.cumsum(heads)]).astype(np.int64)
    head_at = _starts(per[0], bounds[:-1])
    tail_at = _starts(per[1], bounds[:-1] + heads)
    ids_out = np.empty(bounds[-1], dtype=np.int32 if len(owner) < 2**31 else np.int64)
    prio_out = np.empty(prio_bounds[-1], dtype=np.float64)
    _fill_candidates(counts, owner, deg, soft, weights, ranking.rate, ranking.code(), head_at, tail_at,
                     bounds[:-1] - prio_bounds[:-1], ids_out, prio_out)
    _rank(bounds, prio_bounds, ids_out, prio_out)
    return np.split(ids_out, bounds[1:-1]), np.split(prio_out, prio_bounds[1:-1])


def mirror_count(list_length: int, store_rate: float) -> int:
    """How many of a part's candidates it mirrors: floor(store_rate * len(list))."""
    return int(math.floor(store_rate * list_length + 1e-9))

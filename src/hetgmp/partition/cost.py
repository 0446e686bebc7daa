"""The partition cost of SPEC §2: soft counts, link weights, the traffic matrix.

Notation: P parts, N samples, E ids, B batch size, M = N / P (the even part
size; every formula uses this M, also for parts slightly off even).

Soft count. A row used by c samples of a part of M samples appears in one
random batch of B of them with probability 1 - (1 - c/M)^B; over the M/B
batches of an epoch that is S(c) = (M/B)(1 - (1 - c/M)^B), with c/M clamped
to 1. S(0) = 0, S is increasing and concave, S(c) <= M/B.

Traffic matrix. comm[p][q] = (B/M) * sum over ids e owned by q of S(c[p][e])
is the expected number of distinct rows one batch of part p reads from part
q (the diagonal: rows it reads from itself). Total cost = sum over p != q of
w[p][q] * comm[p][q], where w[p][q] is 0 on the diagonal, 0.1 between two
GPUs of one node (parts p and q with p // g == q // g for g GPUs per node)
and 1 across nodes.

Remote rows per batch. For part p, remote_p = sum_{q != p} comm[p][q]: the
expected number of distinct rows a batch of B samples of part p reads from
other parts, i.e. the sum over non-owned ids e of 1 - (1 - c[p][e]/M)^B.
distinct_p = sum_q comm[p][q] is the expected distinct rows of the batch.
We report the mean over parts of remote_p (a count) and
sum_p remote_p / sum_p distinct_p (a fraction). With mirrors, the ids part p
mirrors count as local: their terms move from remote_p to the local side.

Worked example (P=2, N=4, B=2, so M=2): samples 0,1 in part 0 use ids {0,1}
and {0,2}; samples 2,3 in part 1 use {1,2} and {1,2}; owners [0, 0, 1].
c[0] = [2, 1, 1], c[1] = [0, 2, 2]. S(1) = 1 - 0.25 = 0.75, S(2) = 1.
comm[0][1] = 1 * S(1) (id 2) = 0.75; comm[1][0] = S(2) (id 1) = 1.
With one node (w = 0.1 off the diagonal) the total cost is 0.175.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange


def link_weights(parts: int, gpus_per_node: int) -> np.ndarray:
    """w[p][q]: 0 if p == q, 0.1 within a node of `gpus_per_node` GPUs, 1 across.

    Example: link_weights(4, 2) == [[0, .1, 1, 1], [.1, 0, 1, 1], [1, 1, 0, .1], [1, 1, .1, 0]].
    """
    node = np.arange(parts) // max(gpus_per_node, 1)
    w = np.where(node[:, None] == node[None, :], 0.1, 1.0)
    np.fill_diagonal(w, 0.0)
    return w


def soft_count(c: np.ndarray | float, m: float, batch: int) -> np.ndarray:
    """S(c) = (M/B)(1 - (1 - c/M)^B), computed with log1p/expm1 so small c stay exact."""
    frac = np.minimum(np.asarray(c, dtype=np.float64) / m, 1.0)
    with np.errstate(divide="ignore"):
        return (m / batch) * -np.expm1(batch * np.log1p(-frac))


def soft_table(max_count: int, m: float, batch: int) -> np.ndarray:
    """S(c) for c = 0 .. L-1, where index L-1 stands for every larger c.

    L = min(max_count, ceil(M)) + 2, so a lookup S[min(c, L-1)] is exact for
    every count that can occur: either c <= max_count < L-1, or c >= M where
    S is flat at M/B.
    """
    length = int(min(max_count, math.ceil(m))) + 2
    return soft_count(np.arange(length), m, batch)


def marginal_table(soft: np.ndarray) -> np.ndarray:
    """D[c] = S(c+1) - S(c): what one more sample using a row adds to a part's soft count."""
    return np.append(np.diff(soft), 0.0)


@njit(parallel=True, cache=True)
def _comm_sums(counts, owner, soft, chunks):  # pragma: no cover - compiled
    """Unscaled traffic: out[p][q] = sum over e owned by q of S(c[e, p])."""
    num_ids, parts = counts.shape
    partial = np.zeros((chunks, parts, parts))
    top = len(soft) - 1
    for t in prange(chunks):
        lo = num_ids * t // chunks
        hi = num_ids * (t + 1) // chunks
        for e in range(lo, hi):
            q = owner[e]
            for p in range(parts):
                c = counts[e, p]
                if c > 0:
                    partial[t, p, q] += soft[min(c, top)]
    return partial.sum(axis=0)


def traffic_matrix(counts: np.ndarray, owner: np.ndarray, soft: np.ndarray, m: float, batch: int) -> np.ndarray:
    """comm[p][q], the expected distinct rows one batch of part p reads from part q.

    `counts` is c laid out (E, P) (one cache line per id), `owner` int[E],
    `soft` from `soft_table`.
    """
    return _comm_sums(counts, owner, soft, numba.get_num_threads() * 4) * (batch / m)


def total_cost(comm: np.ndarray, weights: np.ndarray) -> float:
    """sum over p != q of w[p][q] * comm[p][q] (w has a zero diagonal)."""
    return float((comm * weights).sum())


def remote_rows(comm: np.ndarray) -> tuple[float, float]:
    """(mean remote rows per batch over parts, remote fraction of distinct rows)."""
    local = np.diag(comm)
    distinct = comm.sum(axis=1)
    remote = distinct - local
    frac = float(remote.sum() / distinct.sum()) if distinct.sum() > 0 else 0.0
    return float(remote.mean()), frac


def mirrored_rows(counts: np.ndarray, mirrors: list[np.ndarray], soft: np.ndarray, m: float, batch: int) -> np.ndarray:
    """Per part p, the expected distinct rows per batch that its mirrors serve locally."""
    top = len(soft) - 1
    out = np.zeros(len(mirrors))
    for p, ids in enumerate(mirrors):
        out[p] = soft[np.minimum(counts[ids, p], top)].sum() * (batch / m)
    return out


def remote_rows_with_mirrors(comm: np.ndarray, mirrored: np.ndarray) -> tuple[float, float]:
    """`remote_rows` after moving each part's mirrored rows to its local side."""
    distinct = comm.sum(axis=1)
    remote = distinct - np.diag(comm) - mirrored
    frac = float(remote.sum() / distinct.sum()) if distinct.sum() > 0 else 0.0
    return float(remote.mean()), frac

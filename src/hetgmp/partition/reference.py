"""The original HET-GMP refinement, move by move, as a yardstick (`--algorithm original`).

One round = a sample pass then a row pass, each visiting every vertex once in
index order and moving it at once, so every decision sees all earlier moves
(the original ran this loop from 16 OpenMP threads; one thread here keeps it
deterministic):

- sample i: take it out of its part (counts and sizes drop), then put it in
  the part k maximising
      alpha * |samples of k| - sum over its ids e of w[k][owner(e)] * (S(c[k][e]+1) - S(c[k][e]))
  with alpha = -100 P / N; ties keep the sample where it was.
- row e: take it out of its part, then give it to the part k maximising
      beta * |rows of k| - sum_j w[j][k] S(c[j][e]) - 0.01 * W[k] * S(deg(e))
  with beta = -100 P / E and W[k] the weighted traffic part k serves
  (sum over its rows e' and parts j of w[j][k] S(c[j][e'])), divided by
  the mean over parts so that W is 1 for an even load.

Balance is held only by the soft alpha / beta terms, as in the original.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from hetgmp.partition.state import PartitionState

LOAD_WEIGHT = 0.01


def alpha_beta(state: PartitionState) -> tuple[float, float]:
    """The soft balance weights of SPEC §2: -100 P / N and -100 P / E."""
    p = state.parts
    return -100.0 * p / len(state.part), -100.0 * p / state.num_ids


@njit(cache=True)
def _sample_score(ids, i, k, cur, owner, counts, sizes, marginal, w, alpha):  # pragma: no cover - compiled
    """alpha |k| - sum_e w[k][owner e] (S(c+1) - S(c)), with sample i already out of `cur`."""
    own = 1 if k == cur else 0
    top = len(marginal) - 1
    s = alpha * (sizes[k] - own)
    for f in range(ids.shape[1]):
        e = ids[i, f]
        s -= w[k, owner[e]] * marginal[min(counts[e, k] - own, top)]
    return s


@njit(cache=True)
def sample_pass_sequential(ids, part, owner, counts, sizes, marginal, w, alpha):  # pragma: no cover - compiled
    """One sequential sample pass; returns the number of samples moved."""
    moved = 0
    for i in range(ids.shape[0]):
        cur = part[i]
        best, best_score = cur, _sample_score(ids, i, cur, cur, owner, counts, sizes, marginal, w, alpha)
        for k in range(counts.shape[1]):
            if k != cur:
                s = _sample_score(ids, i, k, cur, owner, counts, sizes, marginal, w, alpha)
                if s > best_score:
                    best, best_score = k, s
        if best != cur:
            move_sample(ids, i, cur, best, part, counts, sizes)
            moved += 1
    return moved


@njit(cache=True)
def move_sample(ids, i, cur, k, part, counts, sizes):  # pragma: no cover - compiled
    """Move sample i from part cur to part k, keeping counts and sizes exact."""
    for f in range(ids.shape[1]):
        counts[ids[i, f], cur] -= 1
        counts[ids[i, f], k] += 1
    sizes[cur] -= 1
    sizes[k] += 1
    part[i] = k


@njit(cache=True)
def row_costs(counts, e, soft, w, out):  # pragma: no cover - compiled
    """out[k] = sum_j w[j][k] S(c[j][e]): the weighted traffic id e causes if part k owns it."""
    parts = counts.shape[1]
    top = len(soft) - 1
    out[:] = 0.0
    for j in range(parts):
        c = counts[e, j]
        if c > 0:
            s = soft[min(c, top)]
            for k in range(parts):
                out[k] += w[j, k] * s


@njit(cache=True)
def served_traffic(counts, owner, soft, w):  # pragma: no cover - compiled
    """served[k] = weighted traffic part k serves: sum over its rows of row_costs[k]."""
    parts = counts.shape[1]
    served = np.zeros(parts)
    tmp = np.zeros(parts)
    for e in range(counts.shape[0]):
        row_costs(counts, e, soft, w, tmp)
        served[owner[e]] += tmp[owner[e]]
    return served


@njit(cache=True)
def row_pass_sequential(counts, owner, rows, deg, soft, w, beta, load_weight):  # pragma: no cover - compiled
    """One sequential row pass; returns the number of rows moved."""
    parts = counts.shape[1]
    top = len(soft) - 1
    served = served_traffic(counts, owner, soft, w)
    cost_k = np.zeros(parts)
    moved = 0
    for e in range(counts.shape[0]):
        cur = owner[e]
        row_costs(counts, e, soft, w, cost_k)
        served[cur] -= cost_k[cur]
        rows[cur] -= 1
        mean = served.sum() / parts
        s_deg = soft[min(deg[e], top)]
        best, best_score = cur, -np.inf
        for k in range(parts):
            load = served[k] / mean if mean > 0 else 1.0
            s = beta * rows[k] - cost_k[k] - load_weight * load * s_deg
            if s > best_score or (s == best_score and k == cur):
                best, best_score = k, s
        owner[e] = best
        rows[best] += 1
        served[best] += cost_k[best]
        moved += best != cur
    return moved


def run_round(state: PartitionState) -> tuple[int, int]:
    """One round of the original: sample pass then row pass. Returns (samples moved, rows moved)."""
    alpha, beta = alpha_beta(state)
    ids = np.asarray(state.ids)
    moved_s = sample_pass_sequential(ids, state.part, state.owner, state.counts, state.sizes, state.marginal, state.weights, alpha)
    moved_r = row_pass_sequential(state.counts, state.owner, state.rows, state.deg, state.soft, state.weights, beta, LOAD_WEIGHT)
    return int(moved_s), int(moved_r)

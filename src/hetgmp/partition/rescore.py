"""Which samples the first sweep of a round re-scores: a bound on how far each gap can have fallen.

A sample's gap is score(cur) - the best other score, from the last time it
was scored (see sample_moves._choose). Its score for part k is
alpha |k| - sum over its ids e of w[k][o(e)] D(c[e][k] - [k == cur]), so
between two moments each score moves by at most the sum over its ids of
how far one term of that id moved, and the gap by at most twice that, plus
the balance term's share. At the start of a round:

    drift[e] = max over parts k, and over the term read from inside and from
               outside k, of |w'[k][o'(e)] D(c'[e][k] - s) - w[k][o(e)] D(c[e][k] - s)|,
               s in {0, 1}, between the counts and owners now (') and at the
               start of the previous round;
    gap[i]  -= 2 * sum over ids e of sample i of drift[e] + 2 |alpha| max_k |sizes' - sizes|.

A sample whose lowered gap is still above `settled` keeps its part without
being scored. The bound covers all changes since its score was taken only
up to the staleness of a chunk (proposals read the counts at their chunk's
start), so it is a filter, not a guarantee; every move is still checked
when applied. Example: an id read only by samples of part p moves from
owner q to p (one node, w = 0.1 off the diagonal, counts unchanged): the
term of part p falls from 0.1 D(c[e][p] - s) to 0, that of q rises from 0
to 0.1 D(0), the others stay, so drift = 0.1 D(0) (D falls with c), about
0.1, and each sample reading the id has its gap lowered by about 0.2.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from hetgmp.partition.prefetch import prefetch_row

BLOCK = 1024  # samples per parallel task


@njit(parallel=True, cache=True)
def id_drift(counts, owner, old_counts, old_owner, flat, w):  # pragma: no cover - compiled
    """float32[E]: drift[e] as in the module docstring (flat as in sample_moves)."""
    num_ids, parts = counts.shape
    top = len(flat) - 1
    out = np.zeros(num_ids, dtype=np.float32)
    for e in prange(num_ids):
        o, o_old = owner[e], old_owner[e]
        d = 0.0
        for k in range(parts):
            c, c_old = counts[e, k], old_counts[e, k]
            if c == c_old and o == o_old:
                continue
            outside = w[k, o] * flat[min(c, top)] - w[k, o_old] * flat[min(c_old, top)]
            inside = w[k, o] * flat[min(max(c - 1, 0), top)] - w[k, o_old] * flat[min(max(c_old - 1, 0), top)]
            d = max(d, abs(outside), abs(inside))
        out[e] = d
    return out


@njit(parallel=True, cache=True)
def lower_gaps(ids, drift, gap, balance, settled):  # pragma: no cover - compiled
    """gap[i] -= 2 * sum of drift over sample i's ids + balance, stopping once it is at or below settled
    (it will be re-scored then, whatever the rest of the sum); drift reads are prefetched a sample ahead."""
    n = ids.shape[0]
    for blk in prange((n + BLOCK - 1) // BLOCK):
        a, b = blk * BLOCK, min((blk + 1) * BLOCK, n)
        for i in range(a, b):
            if i + 1 < b and gap[i + 1] - balance > settled:
                for f in range(ids.shape[1]):
                    prefetch_row(drift, ids[i + 1, f])
            g = gap[i] - balance
            for f in range(ids.shape[1]):
                if g <= settled:
                    break
                g -= 2.0 * drift[ids[i, f]]
            gap[i] = g

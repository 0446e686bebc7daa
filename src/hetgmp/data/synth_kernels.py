"""Numba kernels for `synth_world.sample_chunk`: one parallel loop over rows each.

They take the chunk's uniforms and normals from the caller's seeded numpy
generator and do only arithmetic, so a row's values depend on its inputs
alone, never on the thread that computes them: results are deterministic
for any thread count. `synth_world.zipf_rank` is the numpy reference of
`_zipf`; the tests hold one to the other.
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, inline="always")
def _zipf(u: float, n: int, span: float, inv_a: float) -> int:
    """Rank in [0, n) from a uniform u, the inverse CDF of x^-s on [1, n+1).

    span and inv_a come from `synth_world.zipf_span(n, s)`: the per-n
    constants, computed once so a draw costs one exp or pow. inv_a == 0
    marks s == 1 (span is then log(n + 1)).
    """
    if inv_a == 0.0:
        x = math.exp(u * span)
    else:
        x = (1.0 + u * span) ** inv_a
    return min(int(x) - 1, n - 1)


@numba.njit(parallel=True, cache=True)
def draw_ids(u, pooled, group, column_field, pool_column, caps, cap_span, perm, slot_perm, pool_of_field, pool_size, pool_span,
             pool_start, id_offsets, inv_a, pool_inv_a, out):
    """Raw global ids into out (n, C) int32, column c a draw of field column_field[c].

    u (n, C + Lc) float64: column c is column c's global-rank uniform, column
    C + pool_column[c] its slot uniform in the row's group pool (Lc: the columns
    of large fields). pooled (n, Lc) bool: that column draws from the pool.
    pool_of_field[f] is f's large-field index l, or -1 for a small field.
    id_offsets[f]: where field f's drawn ids start (its raw offset, plus 1 past
    a padding id).
    """
    n, columns = out.shape
    for i in numba.prange(n):
        g = group[i]
        for c in range(columns):
            f = column_field[c]
            cap = caps[f]
            pool = pool_of_field[f]
            if pool >= 0 and pooled[i, pool_column[c]]:
                k = _zipf(u[i, columns + pool_column[c]], pool_size[g, pool], pool_span[g, pool], pool_inv_a)
                slot = (pool_start[g, pool] + k) % cap
                raw = (slot * slot_perm[f, 0] + slot_perm[f, 1]) % cap
            else:
                rank = _zipf(u[i, c], cap, cap_span[f], inv_a)
                raw = (rank * perm[f, 0] + perm[f, 1]) % cap
            out[i, c] = raw + id_offsets[f]


@numba.njit(parallel=True, cache=True)
def dense_features(normal, uniform, activity, mu, sigma, miss, load, out):
    """out[i, j] = log(count + 1), count = floor(exp(mu + load·activity + sigma·normal)), 0 if missing."""
    n, width = out.shape
    for i in numba.prange(n):
        a = activity[i]
        for j in range(width):
            if uniform[i, j] < miss[j]:
                out[i, j] = 0.0
            else:
                log_count = min(mu[j] + load[j] * a + sigma[j] * normal[i, j], 30.0)
                out[i, j] = math.log1p(math.floor(math.exp(log_count)))


@numba.njit(cache=True, inline="always")
def _bag_mean(ids, i, start, stop, pad, table, base, k):
    """Mean of table[base + id, k] over row i's ids in columns start:stop, padding (id == pad) left
    out; 0 for a bag of padding only. float32, as the table: one id's mean is its value, so
    one-hot rows get the one-hot generator's arithmetic (and logits) exactly."""
    total, count = 0.0, 0
    for c in range(start, stop):
        if ids[i, c] != pad:
            total += table[base + ids[i, c], k]
            count += 1
    return np.float32(total / count) if count else np.float32(0.0)


@numba.njit(parallel=True, cache=True)
def planted_logit(ids, dense, weights, coef, factors, factor_base, pairs, bag_start, pad_ids, out):
    """out[i] = sum_f mean_bag weights[id] + dense·coef + sum over pairs of <mean_bag factor_a, mean_bag factor_b>.

    Field f's bag is columns bag_start[f]:bag_start[f + 1], its padding id
    pad_ids[f] (-1: none) left out of the means; one-hot, each mean is the id's
    own value. factors holds rank-k vectors for the pair fields, field f's raw
    global id r at row factor_base[f] + r (f's raw offset folded into factor_base).
    """
    n = ids.shape[0]
    num_fields = len(bag_start) - 1
    rank = factors.shape[1]
    weight_table = weights.reshape((weights.shape[0], 1))
    for i in numba.prange(n):
        z = 0.0
        for f in range(num_fields):
            z += _bag_mean(ids, i, bag_start[f], bag_start[f + 1], pad_ids[f], weight_table, 0, 0)
        for j in range(dense.shape[1]):
            z += dense[i, j] * coef[j]
        for p in range(pairs.shape[0]):
            a, b = pairs[p, 0], pairs[p, 1]
            for k in range(rank):
                z += (_bag_mean(ids, i, bag_start[a], bag_start[a + 1], pad_ids[a], factors, factor_base[a], k)
                      * _bag_mean(ids, i, bag_start[b], bag_start[b + 1], pad_ids[b], factors, factor_base[b], k))
        out[i] = z




@numba.njit(parallel=True, cache=True)
def remap_inplace(ids, lut):
    """ids[i, j] = lut[ids[i, j]] for a (n, F) block: raw global ids to compacted ones."""
    n, width = ids.shape
    for i in numba.prange(n):
        for j in range(width):
            ids[i, j] = lut[ids[i, j]]

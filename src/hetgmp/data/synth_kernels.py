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
def draw_ids(u, pooled, group, caps, cap_span, perm, slot_perm, pool_of_field, pool_size, pool_span, pool_start, raw_offsets, inv_a, pool_inv_a, out):
    """Raw global ids into out (n, F) int32.

    u (n, F + L) float64: column f is field f's global-rank uniform, column
    F + l the slot uniform of large field l's group pool. pooled (n, L) bool:
    large field l draws from the row's group pool. pool_of_field[f] is f's
    large-field index l, or -1 for a small field.
    """
    n, num_fields = out.shape
    for i in numba.prange(n):
        g = group[i]
        for f in range(num_fields):
            cap = caps[f]
            pool = pool_of_field[f]
            if pool >= 0 and pooled[i, pool]:
                k = _zipf(u[i, num_fields + pool], pool_size[g, pool], pool_span[g, pool], pool_inv_a)
                slot = (pool_start[g, pool] + k) % cap
                raw = (slot * slot_perm[f, 0] + slot_perm[f, 1]) % cap
            else:
                rank = _zipf(u[i, f], cap, cap_span[f], inv_a)
                raw = (rank * perm[f, 0] + perm[f, 1]) % cap
            out[i, f] = raw + raw_offsets[f]


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


@numba.njit(parallel=True, cache=True)
def planted_logit(ids, dense, weights, coef, factors, factor_base, pairs, out):
    """out[i] = sum_f weights[id] + dense·coef + sum over pairs of <factor_a, factor_b>.

    factors holds rank-k vectors for the pair fields, field f's raw global
    id r at row factor_base[f] + r - (f's raw offset, folded into factor_base).
    """
    n, num_fields = ids.shape
    rank = factors.shape[1]
    for i in numba.prange(n):
        z = 0.0
        for f in range(num_fields):
            z += weights[ids[i, f]]
        for j in range(dense.shape[1]):
            z += dense[i, j] * coef[j]
        for p in range(pairs.shape[0]):
            ra = factor_base[pairs[p, 0]] + ids[i, pairs[p, 0]]
            rb = factor_base[pairs[p, 1]] + ids[i, pairs[p, 1]]
            for k in range(rank):
                z += factors[ra, k] * factors[rb, k]
        out[i] = z




@numba.njit(parallel=True, cache=True)
def remap_inplace(ids, lut):
    """ids[i, j] = lut[ids[i, j]] for a (n, F) block: raw global ids to compacted ones."""
    n, width = ids.shape
    for i in numba.prange(n):
        for j in range(width):
            ids[i, j] = lut[ids[i, j]]

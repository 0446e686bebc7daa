"""Triton kernels for the fused sparse update (imported only where Triton is).

The gradient rows of one step arrive unsorted and with duplicates. After one
sort of the ids, every distinct id is a run of equal neighbours in the sorted
order, and its summed gradient is a segmented sum over that run. Example with
tiles of 4 sorted positions:

    sorted ids   7 7 | 9 9 9 9 | 9 12 ...       ("|" = tile boundary)
    tile 0: run 7 (positions 0-1) lies inside the tile -> updated directly
            run 9 starts at 2 and continues into tile 1 -> "crossing"
    tile 1: all of it is run 9, crossing in and out
    tile 2: run 9 ends at 8 (crossing in); run 12 starts inside the tile

Each program reduces the runs of its tile with a segmented scan (no atomics).
A run wholly inside the tile is applied with a plain read-modify-write: no
other program touches that row. Only the pieces of crossing runs, at most two
per tile, go through atomics: straight into the table for SGD (the update is
linear in the gradient), or into a per-tile scratch row for row-wise Adagrad,
whose accumulator must see the whole summed gradient first; a second kernel
then applies each crossing run once and zeroes its scratch row again, so the
scratch stays zero between calls.

The scratch slot of a crossing run is the tile where the run starts: a tile
starts at most one run that leaves it (its last run). A tile whose first run
came from an earlier tile finds that tile through `run_start_T`, the sorted
position where the run of its first id begins (one `searchsorted` per tile).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hetgmp.kernels.gather import sort_ids
from hetgmp.kernels.sparse_update import PooledGrad, Rank1Grad, RowGrad

# Tile size: ptxas (sm_90) keeps 2048 fp32 elements per 4-warp program in about
# 100 registers without spills; 8192 spilled at 255. Tiles hold whole rows up
# to 128 columns and at most 64 of them: timed on an H100 with the rows out of
# L2 (benchmarks/GPU_NOTES.md), SGD at d = 128 took 0.109 ms in 16 x 128 tiles
# against 0.129 ms in 64 x 32 (shorter rows meant 64-byte reads and four
# programs per row), and d = 16 0.020 ms in 64 x 16 against 0.024 in 128 x 16.
TILE_ELEMS = 2048
MAX_TILE_ROWS = 64
MAX_BLOCK_D = 128
# Tiles of 128 columns: 8 rows of one warp. On an H200, MLPerf's bags at d = 128 (1.75M ids,
# 717k distinct; benchmarks/bench_bag_kernels.py), SGD took 0.67 ms against 1.01 in 16 x 128
# tiles of 4 warps, 0.77 in 8 x 128 of 2 and 0.81 in 4 x 128 of 1, row-wise Adagrad 0.81 against
# 1.09: more, smaller programs keep more rows' reads in flight.
WIDE_TILE = (8, 1)


@triton.jit
def _segmented_add(v1, f1, v2, f2):
    # Inclusive segmented sum: a set flag on the right restarts the sum.
    return tl.where(f2 != 0, v2, v1 + v2), f1 | f2


@triton.jit
def _and(mask, flag):
    # mask & flag for a tensor mask and a scalar flag, spelled with tl.where:
    # Triton's interpreter turns `tensor & scalar` into int32, not a mask.
    return tl.where(flag, mask, mask != mask)


@triton.jit
def _tile_bounds(sorted_ptr, tile, N, BLOCK_N: tl.constexpr):
    """First/last id of the tile and whether its first run came in / last run goes on."""
    ts = tile * BLOCK_N
    te = tl.minimum(ts + BLOCK_N, N) - 1
    first_id = tl.load(sorted_ptr + ts)
    last_id = tl.load(sorted_ptr + te)
    before = tl.load(sorted_ptr + ts - 1, mask=ts > 0, other=-1)
    after = tl.load(sorted_ptr + te + 1, mask=te + 1 < N, other=-1)
    first_in = (ts > 0) & (before == first_id)
    last_out = (te + 1 < N) & (after == last_id)
    return ts, first_id, last_id, first_in, last_out


@triton.jit
def _adagrad_rows(table_ptr, acc_ptr, rows, cols, g, old, acc_old, mask_r, mask_rc, stride_t, D, lr, eps):
    """Row-wise Adagrad on whole rows read before (old, acc_old): acc += mean(g^2); row -= lr * g / (sqrt(acc) + eps)."""
    acc = acc_old + tl.sum(g * g, axis=1) / D
    tl.store(acc_ptr + rows, acc, mask=mask_r)
    scale = lr / (tl.sqrt(acc) + eps)
    tl.store(table_ptr + rows[:, None] * stride_t + cols[None, :], old - scale[:, None] * g, mask=mask_rc)


@triton.jit
def _reduce_apply_kernel(
    table_ptr, acc_ptr, count_ptr, scratch_ptr, sorted_ptr, perm_ptr, grad_ptr, weight_ptr, field_ptr, run_start_ptr,
    N, D, F, L, stride_t, stride_g, stride_gf, lr, eps,
    ADAGRAD: tl.constexpr, COUNT: tl.constexpr, RANK1: tl.constexpr, POOLED: tl.constexpr, WEIGHTED: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    tile = tl.program_id(0)
    dblock = tl.program_id(1)
    ts, first_id, last_id, first_in, last_out = _tile_bounds(sorted_ptr, tile, N, BLOCK_N)
    pos = ts + tl.arange(0, BLOCK_N)
    inside = pos < N
    ids = tl.load(sorted_ptr + pos, mask=inside, other=-1)
    prev = tl.load(sorted_ptr + pos - 1, mask=inside & (pos > 0), other=-1)
    nxt = tl.load(sorted_ptr + pos + 1, mask=pos + 1 < N, other=-1)
    # Runs restart at the tile's first position and end at its last one.
    starts = ((ids != prev) | (pos == ts)).to(tl.int32)
    ends = inside & ((ids != nxt) | (pos == ts + BLOCK_N - 1))
    crossing = _and(ids == first_id, first_in) | _and(ids == last_id, last_out)
    direct = ends & (crossing == 0)
    shared = ends & crossing

    cols = dblock * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    # The rows this tile updates wholly are read before the gradient's gather, so that the two
    # reads' latencies overlap.
    rows = ids.to(tl.int64)
    direct_rc = direct[:, None] & cmask[None, :]
    ptrs = table_ptr + rows[:, None] * stride_t + cols[None, :]
    old = tl.load(ptrs, mask=direct_rc, other=0.0)
    if ADAGRAD:
        acc_old = tl.load(acc_ptr + rows, mask=direct, other=0.0)
    src = tl.load(perm_ptr + pos, mask=inside, other=0).to(tl.int64)
    gmask = inside[:, None] & cmask[None, :]
    if RANK1:
        # Occurrence src = b F + f: coef[b] * weight[f] (Rank1Grad), no [N, D] gradient read.
        coef = tl.load(grad_ptr + src // F, mask=inside, other=0.0).to(tl.float32)
        w = tl.load(weight_ptr + (src % F)[:, None] * stride_g + cols[None, :], mask=gmask, other=0.0).to(tl.float32)
        g = coef[:, None] * w
    elif POOLED:
        # Occurrence src = b L + c of field f = field[c]: its bag's gradient, grad[b, f] (PooledGrad).
        field = tl.load(field_ptr + src % L, mask=inside, other=0).to(tl.int64)
        row = (src // L) * stride_g + field * stride_gf
        g = tl.load(grad_ptr + row[:, None] + cols[None, :], mask=gmask, other=0.0).to(tl.float32)
        if WEIGHTED:
            g = g * tl.load(weight_ptr + src, mask=inside, other=0.0)[:, None]
    else:
        # Gradients may arrive in bf16 (FastStepConfig.bf16_rows): sums are taken in fp32.
        g = tl.load(grad_ptr + src[:, None] * stride_g + cols[None, :], mask=gmask, other=0.0).to(tl.float32)
    flags = tl.broadcast_to(starts[:, None], (BLOCK_N, BLOCK_D))
    run_g, _ = tl.associative_scan((g, flags), 0, _segmented_add)

    if COUNT:
        run_n, _ = tl.associative_scan((tl.full((BLOCK_N,), 1, tl.int32), starts), 0, _segmented_add)
        run_n = run_n.to(count_ptr.dtype.element_ty)
        first_block = dblock == 0
        old_n = tl.load(count_ptr + rows, mask=_and(direct, first_block), other=0)
        tl.store(count_ptr + rows, old_n + run_n, mask=_and(direct, first_block))
        tl.atomic_add(count_ptr + rows, run_n, mask=_and(shared, first_block))

    if ADAGRAD:
        _adagrad_rows(table_ptr, acc_ptr, rows, cols, run_g, old, acc_old, direct, direct_rc, stride_t, D, lr, eps)
        # The crossing run that entered this tile started in tile run_start // BLOCK_N.
        slot_in = tl.load(run_start_ptr + tile) // BLOCK_N
        slot = tl.where(_and(ids == first_id, first_in), slot_in, tile).to(tl.int64)
        tl.atomic_add(scratch_ptr + slot[:, None] * D + cols[None, :], run_g, mask=shared[:, None] & cmask[None, :])
    else:
        tl.store(ptrs, old - lr * run_g, mask=direct_rc)
        tl.atomic_add(ptrs, -lr * run_g, mask=shared[:, None] & cmask[None, :])


@triton.jit
def _adagrad_crossing_kernel(
    table_ptr, acc_ptr, scratch_ptr, sorted_ptr, N, D, stride_t, lr, eps,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    tile = tl.program_id(0)
    ts, first_id, last_id, first_in, last_out = _tile_bounds(sorted_ptr, tile, N, BLOCK_N)
    # This tile owns its last run if that run goes on and did not come in from before.
    owns = last_out & ((first_in & (first_id == last_id)) == 0)
    cols = tl.arange(0, BLOCK_D)
    cmask = _and(cols < D, owns)
    sptrs = scratch_ptr + tile.to(tl.int64) * D + cols
    g = tl.load(sptrs, mask=cmask, other=0.0)
    rows = tl.full((1,), 0, tl.int64) + last_id.to(tl.int64)
    row_mask = _and(rows == rows, owns)
    old = tl.load(table_ptr + rows[:, None] * stride_t + cols[None, :], mask=cmask[None, :], other=0.0)
    acc_old = tl.load(acc_ptr + rows, mask=row_mask, other=0.0)
    _adagrad_rows(table_ptr, acc_ptr, rows, cols, g[None, :], old, acc_old, row_mask, cmask[None, :], stride_t, D, lr, eps)
    tl.store(sptrs, tl.zeros_like(g), mask=cmask)


def _tile_shape(D: int, adagrad: bool, block_n: int | None = None, block_d: int | None = None) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_D, warps). Adagrad needs a whole row per program (its mean over D)."""
    full = triton.next_power_of_2(D)
    if block_d is None or adagrad:
        block_d = full if adagrad else min(full, MAX_BLOCK_D)
    if block_n is None and block_d == MAX_BLOCK_D:
        rows, warps = WIDE_TILE
        return rows, block_d, warps
    if block_n is None:
        block_n = max(16, min(MAX_TILE_ROWS, TILE_ELEMS // block_d))
    return block_n, block_d, 8 if block_n * block_d > TILE_ELEMS else 4


def scratch_rows(num_ids: int, dim: int) -> int:
    """Rows of the Adagrad scratch for `num_ids` ids of width `dim` (one per tile)."""
    return triton.cdiv(num_ids, _tile_shape(dim, True)[0])


def fused_update(
    table_ED: torch.Tensor,
    ids_N: torch.Tensor,
    grad_ND: RowGrad,
    lr: float,
    acc_E: torch.Tensor | None,
    eps: float,
    counts_E: torch.Tensor | None,
    scratch_TD: torch.Tensor | None,
    block_n: int | None = None,
    order: tuple[torch.Tensor, torch.Tensor] | None = None,
    block_d: int | None = None,
    num_warps: int | None = None,
) -> None:
    """Sort the ids (unless `order`, their (sorted, permutation), is given), then
    one (SGD) or two (Adagrad) kernels; see the module doc. SGD needs of a given
    order only that equal ids sit side by side; Adagrad needs them ascending
    (it finds run starts by searchsorted).

    `block_n` (a power of two >= 16) overrides the tile height; the CPU tests
    use small tiles so that runs cross many tile boundaries. `block_d` (SGD
    only) and `num_warps` override the tile width and the warps per program
    (for tuning, see benchmarks/bench_kernels.py).
    """
    N, D = grad_ND.shape
    rank1, pooled = isinstance(grad_ND, Rank1Grad), isinstance(grad_ND, PooledGrad)
    field_arg, columns, weighted, stride_gf = None, 1, False, 0
    if rank1:  # the kernel reads coef [B] and weight [F, D] in grad_ND's place
        grad_arg, weight_arg = grad_ND.coef_B.contiguous(), grad_ND.weight_FD.contiguous()
        fields, stride_g = weight_arg.shape[0], weight_arg.stride(0)
    elif pooled:  # ... or the pooled gradient [B, F, D] (strided), each column's field and the slots' weights
        grad_arg, field_arg, columns, fields = grad_ND.grad_BFD, grad_ND.field_L, len(grad_ND.field_L), grad_ND.fields
        weighted = grad_ND.weight_BL is not None
        weight_arg, (stride_g, stride_gf) = grad_ND.weight_BL if weighted else grad_arg, grad_arg.stride()[:2]
    else:
        grad_arg = weight_arg = grad_ND
        fields, stride_g = 1, grad_ND.stride(0)
    adagrad = acc_E is not None
    block_n, block_d, warps = _tile_shape(D, adagrad, block_n, block_d)
    tiles = triton.cdiv(N, block_n)
    sorted_N, perm_N = order if order is not None else sort_ids(ids_N, table_ED.shape[0])
    run_start_T = perm_N  # any int tensor: read only when ADAGRAD
    if adagrad:
        run_start_T = torch.searchsorted(sorted_N, sorted_N[::block_n].contiguous())
        if scratch_TD is None:
            scratch_TD = torch.zeros(tiles, D, dtype=torch.float32, device=table_ED.device)
        elif scratch_TD.shape != (tiles, D) or not scratch_TD.is_contiguous():
            raise ValueError(f"Adagrad scratch must be contiguous {(tiles, D)}, got {tuple(scratch_TD.shape)}")
    grid = (tiles, triton.cdiv(D, block_d))
    _reduce_apply_kernel[grid](
        table_ED, acc_E if adagrad else table_ED, counts_E if counts_E is not None else sorted_N,
        scratch_TD if adagrad else table_ED, sorted_N, perm_N, grad_arg, weight_arg,
        field_arg if pooled else sorted_N, run_start_T,
        N, D, fields, columns, table_ED.stride(0), stride_g, stride_gf, lr, eps,
        ADAGRAD=adagrad, COUNT=counts_E is not None, RANK1=rank1, POOLED=pooled, WEIGHTED=weighted,
        BLOCK_N=block_n, BLOCK_D=block_d,
        num_warps=num_warps or warps,
    )
    if adagrad:
        _adagrad_crossing_kernel[(tiles,)](
            table_ED, acc_E, scratch_TD, sorted_N, N, D, table_ED.stride(0), lr, eps,
            BLOCK_N=block_n, BLOCK_D=block_d,
        )

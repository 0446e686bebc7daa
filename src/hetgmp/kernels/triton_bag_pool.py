"""Triton kernel of the bag pooling read from the table (bag_pool.py); imported only where Triton is.

One program per (sample, field, column block) reads the bag's ids BLOCK_K at a
time, their rows in one [BLOCK_K, BLOCK_D] tile, and sums them in fp32
registers; padding slots (id == the field's padding id) are masked out of the
load, so they cost no memory traffic. Only the pooled row is written.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_K = 16  # ids of a bag read at once: MLPerf's largest bag (100) in 7 tiles, a one-id bag in one


@triton.jit
def _pool_kernel(
    table_ptr, ids_ptr, start_ptr, size_ptr, pad_ptr, out_ptr, L, F, D, stride_t,
    MEAN: tl.constexpr, PADDED: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    f = tl.program_id(1)
    cols = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    start = tl.load(start_ptr + f)
    size = tl.load(size_ptr + f)
    pad = tl.load(pad_ptr + f)
    total = tl.zeros((BLOCK_D,), tl.float32)
    kept = tl.zeros((BLOCK_K,), tl.float32)
    for k0 in range(0, size, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        inside = ks < size
        ids = tl.load(ids_ptr + b * L + start + ks, mask=inside, other=0).to(tl.int64)
        if PADDED:
            inside = inside & (ids != pad)
        rows = tl.load(table_ptr + ids[:, None] * stride_t + cols[None, :], mask=inside[:, None] & cmask[None, :], other=0.0)
        total += tl.sum(rows.to(tl.float32), axis=0)
        kept += inside.to(tl.float32)
    if MEAN:
        total = total / tl.maximum(tl.sum(kept, axis=0), 1.0)
    tl.store(out_ptr + (b * F + f) * D + cols, total.to(out_ptr.dtype.element_ty), mask=cmask)


def pool_bags_from_table(table_ED: torch.Tensor, ids_BL: torch.Tensor, layout: dict[str, torch.Tensor], mean: bool,
                         padded: bool, out_dtype: torch.dtype) -> torch.Tensor:
    batch, columns = ids_BL.shape
    fields, dim = len(layout["size_F"]), table_ED.shape[1]
    out_BFD = torch.empty(batch, fields, dim, dtype=out_dtype, device=table_ED.device)
    if batch == 0:
        return out_BFD
    block_d = min(triton.next_power_of_2(dim), 128)
    grid = (batch, fields, triton.cdiv(dim, block_d))
    _pool_kernel[grid](
        table_ED, ids_BL.contiguous(), layout["start_F"], layout["size_F"], layout["pad_F"], out_BFD,
        columns, fields, dim, table_ED.stride(0),
        MEAN=mean, PADDED=padded, BLOCK_K=BLOCK_K, BLOCK_D=block_d, num_warps=4,
    )
    return out_BFD

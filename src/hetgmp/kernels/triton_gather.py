"""Triton kernel of the sorted gather (see gather.py); imported only where Triton is."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Elements per program: as the update kernel's tiles (no register spills on sm_90).
TILE_ELEMS = 2048


@triton.jit
def _gather_sorted_kernel(
    table_ptr, out_ptr, sorted_ptr, perm_ptr, N, D, stride_t, stride_o,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pos = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    inside = pos < N
    rows = tl.load(sorted_ptr + pos, mask=inside, other=0).to(tl.int64)
    dest = tl.load(perm_ptr + pos, mask=inside, other=0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = inside[:, None] & (cols < D)[None, :]
    values = tl.load(table_ptr + rows[:, None] * stride_t + cols[None, :], mask=mask, other=0.0)
    tl.store(out_ptr + dest[:, None] * stride_o + cols[None, :], values.to(out_ptr.dtype.element_ty), mask=mask)


def tile_shape(D: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_D): whole rows up to 128 columns, TILE_ELEMS elements a program."""
    block_d = min(triton.next_power_of_2(D), 128)
    return max(16, TILE_ELEMS // block_d), block_d


def gather_sorted(table_ED: torch.Tensor, sorted_N: torch.Tensor, perm_N: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    N, D = len(sorted_N), table_ED.shape[1]
    out_ND = torch.empty(N, D, dtype=out_dtype, device=table_ED.device)
    if N == 0:
        return out_ND
    block_n, block_d = tile_shape(D)
    grid = (triton.cdiv(N, block_n), triton.cdiv(D, block_d))
    _gather_sorted_kernel[grid](
        table_ED, out_ND, sorted_N, perm_N, N, D, table_ED.stride(0), out_ND.stride(0),
        BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4,
    )
    return out_ND

"""Triton kernels of DLRM's dot interaction (interaction.py); imported only where Triton is.

The plain interaction stacks the n vectors (padded with zero vectors), runs a
batched matmul to the (B, n, n) dot products, picks the n (n - 1) / 2 pairs
i < j with an index_select and concatenates the bottom vector before them;
backward scatters the pairs' gradient into a zeroed (B, n, n) tensor and runs
two more batched matmuls. At batch 8192, d = 16 that was some 130 us of a
510 us DLRM step on an H200. Here one program per sample does each way in
registers:

    forward   T = [bottom, emb_1 .. emb_F] (n x d, read once)
              Z = T T^T (one tl.dot), stored straight to the pair columns:
              out = [bottom, Z[0, 1], Z[0, 2], ..., Z[n-2, n-1], zeros to a multiple of 8]
    backward  G[i, j] = G[j, i] = dout[pair (i, j)], G[i, i] = 0 (gathered)
              dT = G T (one tl.dot); dbottom = dT[0] + dout[:d]

The zero columns make the top MLP's input rows 16-byte aligned in bf16 (367
-> 368 at F = 26, d = 16); its first layer pads its weight to match
(layers.aligned_linear).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from hetgmp.kernels.interaction import ALIGNMENT, aligned_count, pair_count

# (samples a program, warps): in the DLRM step at batch 8192, d = 16 on an H200, one sample in
# 2 warps took 11.6 us forward and 15.0 us backward (benchmarks/bench_interaction.py times others).
TILE = (1, 2)


@triton.jit
def _vectors(bottom_ptr, emb_ptr, b, stride_bb, stride_eb, stride_ef, N, D,
             HAS_BOTTOM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Sample b's [BLOCK_N, BLOCK_D] tile of T: the bottom vector first (with HAS_BOTTOM), zeros past N and D."""
    v = tl.arange(0, BLOCK_N)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    inside = (v < N) & (d < D)
    if HAS_BOTTOM:
        rows = tl.load(emb_ptr + b * stride_eb + (v - 1) * stride_ef + d, mask=inside & (v >= 1), other=0.0)
        rows += tl.load(bottom_ptr + b * stride_bb + d + v * 0, mask=inside & (v == 0), other=0.0)
    else:
        rows = tl.load(emb_ptr + b * stride_eb + v * stride_ef + d, mask=inside, other=0.0)
    return rows


@triton.jit
def _pair_column(lo, hi, N):
    """Column of the pair lo < hi among the pairs taken row by row: (0, 1) -> 0, (1, 2) -> N - 1."""
    return lo * N - lo * (lo + 1) // 2 + hi - lo - 1


@triton.jit
def _forward_kernel(bottom_ptr, emb_ptr, out_ptr, B, N, D, P, W, stride_bb, stride_eb, stride_ef, stride_ob,
                    HAS_BOTTOM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
                    TAIL: tl.constexpr, SAMPLES: tl.constexpr):
    i = tl.arange(0, BLOCK_N)[:, None]
    j = tl.arange(0, BLOCK_N)[None, :]
    d = tl.arange(0, BLOCK_D)
    first = D if HAS_BOTTOM else 0  # the pairs' first column
    tail = first + P + tl.arange(0, TAIL)
    for s in tl.range(0, SAMPLES):
        b = tl.program_id(0).to(tl.int64) * SAMPLES + s
        # Past the batch's end every mask is empty: no vector, column or output of sample b exists.
        n, dim, width = tl.where(b < B, N, 0), tl.where(b < B, D, 0), tl.where(b < B, W, 0)
        t = _vectors(bottom_ptr, emb_ptr, b, stride_bb, stride_eb, stride_ef, n, dim, HAS_BOTTOM, BLOCK_N, BLOCK_D)
        t = t.to(tl.float32)
        z = tl.dot(t, tl.trans(t), input_precision=PRECISION)
        out_row = out_ptr + b * stride_ob
        tl.store(out_row + first + _pair_column(i, j, N), z.to(out_ptr.dtype.element_ty), mask=(i < j) & (j < n))
        if HAS_BOTTOM:
            tl.store(out_row + d, tl.load(bottom_ptr + b * stride_bb + d, mask=d < dim, other=0.0), mask=d < dim)
        tl.store(out_row + tail, tl.zeros((TAIL,), out_ptr.dtype.element_ty), mask=tail < width)


@triton.jit
def _backward_kernel(bottom_ptr, emb_ptr, dout_ptr, dbottom_ptr, demb_ptr, B, N, D, stride_bb, stride_eb, stride_ef,
                     stride_gb, stride_db, stride_deb, stride_def,
                     HAS_BOTTOM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
                     SAMPLES: tl.constexpr):
    i = tl.arange(0, BLOCK_N)[:, None]
    j = tl.arange(0, BLOCK_N)[None, :]
    v = tl.arange(0, BLOCK_N)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    first = D if HAS_BOTTOM else 0
    pairs = first + _pair_column(tl.minimum(i, j), tl.maximum(i, j), N)
    for s in tl.range(0, SAMPLES):
        b = tl.program_id(0).to(tl.int64) * SAMPLES + s
        n, dim = tl.where(b < B, N, 0), tl.where(b < B, D, 0)  # past the batch's end: empty masks
        t = _vectors(bottom_ptr, emb_ptr, b, stride_bb, stride_eb, stride_ef, n, dim, HAS_BOTTOM, BLOCK_N, BLOCK_D)
        dout_row = dout_ptr + b * stride_gb
        g = tl.load(dout_row + pairs, mask=(i != j) & (i < n) & (j < n), other=0.0)
        dt = tl.dot(g.to(tl.float32), t.to(tl.float32), input_precision=PRECISION)
        inside = (v < n) & (d < dim)
        if HAS_BOTTOM:
            direct = tl.load(dout_row + d + v * 0, mask=inside & (v == 0), other=0.0)
            dt += direct.to(tl.float32)
            tl.store(dbottom_ptr + b * stride_db + d + v * 0, dt.to(dbottom_ptr.dtype.element_ty), mask=inside & (v == 0))
            tl.store(demb_ptr + b * stride_deb + (v - 1) * stride_def + d, dt.to(demb_ptr.dtype.element_ty), mask=inside & (v >= 1))
        else:
            tl.store(demb_ptr + b * stride_deb + v * stride_def + d, dt.to(demb_ptr.dtype.element_ty), mask=inside)


def _blocks(vectors: int, dim: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_D): powers of two, at least 16 (tl.dot's smallest operand)."""
    return max(16, triton.next_power_of_2(vectors)), max(16, triton.next_power_of_2(dim))


def _precision(dtype: torch.dtype) -> str:
    """tl.dot's precision on the fp32 copies of the inputs: tf32 tensor cores for bf16 and fp16 inputs
    (their 8 and 11 significant bits fit tf32's 11: the products are exact, summed in fp32), full
    fp32 for fp32 inputs."""
    return "ieee" if dtype == torch.float32 else "tf32"


def output_width(fields: int, dim: int, has_bottom: bool) -> int:
    """Columns of the output: [bottom (d, with dense features), the pairs, zeros] rounded up to ALIGNMENT."""
    return aligned_count(pair_count(fields + has_bottom) + (dim if has_bottom else 0))


def forward_into(kernel: Any, bottom_BD: torch.Tensor, emb_BFD: torch.Tensor, out_BW: torch.Tensor, has_bottom: bool,
                 tile: tuple[int, int] = TILE) -> None:
    """Launch the forward kernel (`kernel`: _forward_kernel, or it wrapped for torch.compile) into
    out_BW (B, output_width), `tile` = (samples a program, warps)."""
    batch, fields, dim = emb_BFD.shape
    vectors, (samples, warps) = fields + has_bottom, tile
    block_n, block_d = _blocks(vectors, dim)
    kernel[(triton.cdiv(batch, samples),)](
        bottom_BD, emb_BFD, out_BW, batch, vectors, dim, pair_count(vectors), out_BW.shape[1],
        bottom_BD.stride(0), emb_BFD.stride(0), emb_BFD.stride(1), out_BW.stride(0),
        HAS_BOTTOM=has_bottom, BLOCK_N=block_n, BLOCK_D=block_d, PRECISION=_precision(emb_BFD.dtype), TAIL=ALIGNMENT,
        SAMPLES=samples, num_warps=warps)


def backward_into(kernel: Any, bottom_BD: torch.Tensor, emb_BFD: torch.Tensor, dout_BW: torch.Tensor, dbottom_BD: torch.Tensor,
                  demb_BFD: torch.Tensor, has_bottom: bool, tile: tuple[int, int] = TILE) -> None:
    """Launch the backward kernel (as forward_into) into dbottom_BD and demb_BFD."""
    batch, fields, dim = emb_BFD.shape
    vectors, (samples, warps) = fields + has_bottom, tile
    block_n, block_d = _blocks(vectors, dim)
    kernel[(triton.cdiv(batch, samples),)](
        bottom_BD, emb_BFD, dout_BW, dbottom_BD, demb_BFD, batch, vectors, dim,
        bottom_BD.stride(0), emb_BFD.stride(0), emb_BFD.stride(1), dout_BW.stride(0),
        dbottom_BD.stride(0), demb_BFD.stride(0), demb_BFD.stride(1),
        HAS_BOTTOM=has_bottom, BLOCK_N=block_n, BLOCK_D=block_d, PRECISION=_precision(emb_BFD.dtype),
        SAMPLES=samples, num_warps=warps)


@triton_op("hetgmp::dot_interaction", mutates_args=())
def dot_interaction_op(bottom_BD: torch.Tensor, emb_BFD: torch.Tensor, has_bottom: bool) -> torch.Tensor:
    """[bottom, pairs i < j of T = [bottom, emb], zeros] (B, W); without `has_bottom`, bottom_BD is ignored
    and T = emb. Every input has a dense last dimension."""
    batch, fields, dim = emb_BFD.shape
    out = emb_BFD.new_empty(batch, output_width(fields, dim, has_bottom))
    forward_into(wrap_triton(_forward_kernel), bottom_BD, emb_BFD, out, has_bottom)
    return out


@triton_op("hetgmp::dot_interaction_backward", mutates_args=())
def dot_interaction_backward_op(bottom_BD: torch.Tensor, emb_BFD: torch.Tensor, dout_BW: torch.Tensor,
                                has_bottom: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(d bottom (B, d), d emb (B, F, d)) from the output's gradient; d bottom is left unwritten without `has_bottom`."""
    dbottom, demb = torch.empty_like(bottom_BD), torch.empty_like(emb_BFD)
    backward_into(wrap_triton(_backward_kernel), bottom_BD, emb_BFD, dout_BW, dbottom, demb, has_bottom)
    return dbottom, demb


def _setup_context(ctx: Any, inputs: tuple[torch.Tensor, torch.Tensor, bool], output: torch.Tensor) -> None:
    bottom_BD, emb_BFD, has_bottom = inputs
    ctx.save_for_backward(bottom_BD, emb_BFD)
    ctx.has_bottom = has_bottom


def _backward(ctx: Any, dout_BW: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, None]:
    bottom_BD, emb_BFD = ctx.saved_tensors
    dbottom, demb = dot_interaction_backward_op(bottom_BD, emb_BFD, dout_BW.contiguous(), ctx.has_bottom)
    return (dbottom if ctx.has_bottom else None), demb, None


dot_interaction_op.register_autograd(_backward, setup_context=_setup_context)

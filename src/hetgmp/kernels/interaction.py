"""DLRM's dot interaction and the top MLP's input: [bottom, pairs i < j of the vectors' dot products].

With the bottom MLP's d-vector and the F fields' rows (d each), the n = F + 1
vectors T = [bottom, emb_1, ..., emb_F] give n (n - 1) / 2 dot products
T_i . T_j, i < j, taken row by row; the top MLP reads them after the bottom
vector (without dense features: T = the F rows, and the pairs alone):

    top_input(bottom_BD, emb_BFD)    # (B, d + n (n - 1) / 2 [+ zeros])

Example, n = 3 vectors a, b, c (bottom a): [a, a.b, a.c, b.c].

On CUDA it is one Triton kernel each way (triton_interaction.py), whose output
ends in zero columns up to a multiple of 8 (aligned bf16 rows for the top
MLP's matmul); elsewhere (`use_triton=False`) plain torch, a batched matmul of
the stacked vectors (zero vectors added to a multiple of 8: 54-byte bf16 rows
put cuBLAS on older kernels) and one fixed index_select of the pairs.
"""

from __future__ import annotations

import functools
import importlib

import torch

TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # tl.dot's (no float64)


def upper_pairs(n: int, stride: int | None = None) -> torch.Tensor:
    """Flat indices i * stride + j of the pairs i < j < n of a stride x stride matrix (default
    stride n), row by row (int64)."""
    i, j = torch.triu_indices(n, n, offset=1)
    return i * (stride or n) + j


ALIGNMENT = 8  # elements: bf16 rows of 16 bytes


def aligned_count(n: int) -> int:
    """n rounded up to a multiple of ALIGNMENT."""
    return n + -n % ALIGNMENT


def pair_count(vectors: int) -> int:
    """The pairs i < j of `vectors` vectors."""
    return vectors * (vectors - 1) // 2


def interaction_dtype(*parts: torch.Tensor) -> torch.dtype:
    """The dtype the interaction runs in: autocast's where it is on (as for the batched matmul it
    replaces), else the widest of the parts'."""
    device = parts[0].device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return functools.reduce(torch.promote_types, (p.dtype for p in parts))


def top_input(bottom_BD: torch.Tensor | None, emb_BFD: torch.Tensor, use_triton: bool | None = None) -> torch.Tensor:
    """[bottom, pairs] (B, d + P) in plain torch, (B, d + P rounded up to 8, the rest zeros) with Triton
    (default: on CUDA, in TRITON_DTYPES)."""
    parts = [emb_BFD] if bottom_BD is None else [bottom_BD, emb_BFD]
    dtype = interaction_dtype(*parts)
    emb_BFD = emb_BFD.to(dtype).contiguous()
    bottom_BD = None if bottom_BD is None else bottom_BD.to(dtype).contiguous()
    if use_triton is None:
        use_triton = emb_BFD.is_cuda and dtype in TRITON_DTYPES and importlib.util.find_spec("triton") is not None
    if use_triton:
        op = importlib.import_module("hetgmp.kernels.triton_interaction").dot_interaction_op
        return op(emb_BFD[:, 0] if bottom_BD is None else bottom_BD, emb_BFD, bottom_BD is not None)
    return _top_input_torch(bottom_BD, emb_BFD)


def _top_input_torch(bottom_BD: torch.Tensor | None, emb_BFD: torch.Tensor) -> torch.Tensor:
    batch, fields, dim = emb_BFD.shape
    stacked = [emb_BFD] if bottom_BD is None else [bottom_BD[:, None], emb_BFD]
    vectors = fields + (bottom_BD is not None)
    padded = aligned_count(vectors)
    zeros = [emb_BFD.new_zeros(batch, padded - vectors, dim)] if padded > vectors else []
    vectors_BND = torch.cat([*stacked, *zeros], 1)
    dots_BNN = torch.bmm(vectors_BND, vectors_BND.transpose(1, 2))
    pairs_BP = dots_BNN.flatten(1).index_select(1, _pair_index(vectors, padded, emb_BFD.device))
    return pairs_BP if bottom_BD is None else torch.cat([bottom_BD, pairs_BP], 1)


def _pair_index(vectors: int, padded: int, device: torch.device) -> torch.Tensor:
    """upper_pairs(vectors, padded) on `device`: built once eagerly, as a constant under torch.compile."""
    if torch.compiler.is_compiling():
        return upper_pairs(vectors, padded).to(device)
    return _cached_pair_index(vectors, padded, device)


_cached_pair_index = functools.cache(lambda vectors, padded, device: upper_pairs(vectors, padded).to(device))

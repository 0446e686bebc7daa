"""Multi-hot bags pooled straight from the table, and their gradient left pooled.

The plain way to pool a batch of bags (models/bags.py) gathers all B x L rows,
then sums each field's: on MLPerf's bags (L = 214 ids a sample) at d = 128
that writes and reads back 0.45 GB of bf16 rows a step, and backward writes
the same again as the rows' gradient, which the update then reads. Here one
kernel reads each bag's rows from the table and writes only the pooled
(B, F, d) rows; and since every row of a bag gets its bag's gradient (times
its weight: 0 for padding, 1 / count for a mean), the update reads the
pooled gradient itself through `PooledGrad`:

    pooled_BFD, weight_BL = pool_from_table(table_ED, ids_BL, bags, torch.bfloat16)
    ... model forward and backward on pooled_BFD ...
    sparse_update(table_ED, ids_BL.reshape(-1), PooledGrad(pooled_BFD.grad, bags, weight_BL), lr)

Example, bags (2, 1), no padding, sum: ids [[3, 5, 7]] pool to
[[table[3] + table[5], table[7]]]; with pooled gradient [[g0, g1]] the
update sees rows 3 and 5 get g0 and row 7 gets g1.

On CUDA (or under TRITON_INTERPRET=1) the pooling is one Triton kernel
(triton_bag_pool.py); elsewhere `Bags.pool` on gathered rows, the same sums.
"""

from __future__ import annotations

import functools
import importlib

import torch

from hetgmp.kernels.sparse_update import PooledGrad, triton_available
from hetgmp.models.bags import Bags


@functools.cache
def bag_layout(bags: Bags, device: torch.device) -> dict[str, torch.Tensor]:
    """The bags' index tensors on `device`, built once: each field's first column, size and padding
    id (int64, -1: none), and each column's field (int32)."""
    sizes = torch.tensor(bags.sizes, dtype=torch.int64)
    return {
        "start_F": (torch.cumsum(sizes, 0) - sizes).to(device),
        "size_F": sizes.to(device),
        "pad_F": torch.tensor(bags.padding, dtype=torch.int64, device=device),
        "field_L": torch.repeat_interleave(torch.arange(len(sizes), dtype=torch.int32), sizes).to(device),
    }


def slot_weights(bags: Bags, ids_BL: torch.Tensor) -> torch.Tensor | None:
    """Each slot's share of its bag's gradient (float32 (B, L)): 0 for padding, 1 / (rows kept) for a
    mean, else 1; None when every slot's is 1 (a sum with no padding)."""
    if not bags.padded and (bags.mode == "sum" or all(k == 1 for k in bags.sizes)):
        return None
    field_L = bag_layout(bags, ids_BL.device)["field_L"].long()
    pad_BL = bags.pad_mask(ids_BL)
    keep_BL = torch.ones(ids_BL.shape, device=ids_BL.device) if pad_BL is None else (~pad_BL).float()
    if bags.mode == "sum":
        return keep_BL
    counts_BF = keep_BL.new_zeros(len(ids_BL), len(bags.sizes)).index_add_(1, field_L, keep_BL)
    return keep_BL / counts_BF.clamp(min=1)[:, field_L]


def pool_from_table(table_ED: torch.Tensor, ids_BL: torch.Tensor, bags: Bags, out_dtype: torch.dtype,
                    use_triton: bool | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(pooled rows (B, F, D) in out_dtype, summed in fp32; the slots' weights for PooledGrad)."""
    if use_triton is None:
        use_triton = triton_available(table_ED.device)
    weight_BL = slot_weights(bags, ids_BL)
    if use_triton:
        pooled = importlib.import_module("hetgmp.kernels.triton_bag_pool").pool_bags_from_table(
            table_ED, ids_BL, bag_layout(bags, table_ED.device), bags.mode == "mean", bags.padded, out_dtype)
        return pooled, weight_BL
    rows_BLD = table_ED.index_select(0, ids_BL.reshape(-1)).view(*ids_BL.shape, -1)
    return bags.pool(rows_BLD, ids_BL).to(out_dtype), weight_BL


def pooled_grad(grad_BFD: torch.Tensor, bags: Bags, weight_BL: torch.Tensor | None) -> PooledGrad:
    """The rows' gradient of a pooled batch ((B, F, D), strided, or flattened to (B F, D)), as the update
    reads it: in place where its last dimension is dense."""
    fields = len(bags.sizes)
    grad_BFD = grad_BFD.view(-1, fields, grad_BFD.shape[-1]) if grad_BFD.dim() == 2 else grad_BFD
    if grad_BFD.stride(-1) != 1:
        grad_BFD = grad_BFD.contiguous()
    return PooledGrad(grad_BFD, bag_layout(bags, grad_BFD.device)["field_L"], weight_BL, fields)

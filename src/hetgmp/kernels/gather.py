"""Reading a batch's rows from the table, in the order of the sorted ids.

`table.index_select(0, ids)` reads rows in batch order: consecutive reads
land gigabytes apart in a Criteo-sized table, so each row read pays its own
DRAM page and TLB miss, and the gather costs the same at d = 16 as at d = 128
(bound by rows, not bytes; see benchmarks/GPU_NOTES.md). Sorted, the reads
walk the table from low to high addresses, repeated ids sit side by side
(their second read hits the cache), and the sort is one the sparse update
needs anyway, so one sort serves both:

    order = sort_ids(ids_N)                       # (sorted ids, permutation)
    rows_ND = gather_rows(table_ED, order)        # rows_ND[i] = table_ED[ids_N[i]]
    ... backward ...
    sparse_update(table_ED, ids_N, grad_ND, lr, order=order)

Example: ids [5, 3, 5] sort to [3, 5, 5] with permutation [1, 0, 2]; the
gather reads rows 3, 5, 5 in that order and writes them to outputs 1, 0, 2.

On CUDA one Triton kernel reads in sorted order and writes each row straight
to its place in the output; elsewhere the same in two torch ops.
"""

from __future__ import annotations

import importlib

import torch

from hetgmp.kernels.sparse_update import triton_available

SortedIds = tuple[torch.Tensor, torch.Tensor]  # (sorted_N, perm_N): ids_N[perm_N] == sorted_N


def id_dtype(num_rows: int) -> torch.dtype:
    """int32 for the ids of a table that fits it, else int64: a radix sort pays per key bit,
    and the gather takes either."""
    return torch.int32 if num_rows <= torch.iinfo(torch.int32).max else torch.int64


def sort_ids(ids_N: torch.Tensor, num_rows: int) -> SortedIds:
    """Sort the ids (as int32 when `num_rows` fits, see id_dtype)."""
    if ids_N.dtype == torch.int64:
        ids_N = ids_N.to(id_dtype(num_rows))
    return torch.sort(ids_N)


def gather_rows(table_ED: torch.Tensor, order: SortedIds, out_dtype: torch.dtype | None = None, use_triton: bool | None = None) -> torch.Tensor:
    """rows_ND[perm[j]] = table_ED[sorted[j]]: the batch's rows in batch order, read in sorted order.

    `out_dtype` (default the table's) lets the gather write bf16 rows for a
    bf16 model without a separate cast pass.
    """
    sorted_N, perm_N = order
    out_dtype = out_dtype or table_ED.dtype
    if use_triton is None:
        use_triton = triton_available(table_ED.device)
    if use_triton:
        return importlib.import_module("hetgmp.kernels.triton_gather").gather_sorted(table_ED, sorted_N, perm_N, out_dtype)
    out_ND = torch.empty(len(sorted_N), table_ED.shape[1], dtype=out_dtype, device=table_ED.device)
    return out_ND.index_copy_(0, perm_N, table_ED.index_select(0, sorted_N).to(out_dtype))

"""Multi-hot bags to one vector per field: `pool_bags`.

A batch of multi-hot rows holds L = sum(bag_sizes) embedding rows per sample,
field by field (the dataset's sparse columns, see data/arrays.py). Pooling
sums (or averages) each field's rows into one, so every model reads
(B, F, d) whatever the bags:

    pool_bags(emb_BLD, [3, 1])     rows [a, b, c | e]  ->  [a + b + c, e]
    pool_bags(emb_BLD, [3, 1], "mean", pad_mask=[[F, F, T, F]])  ->  [(a + b) / 2, e]

Padding slots (pad_mask True: the dataset's padding id, bags shorter than
their size) contribute nothing and get a zero gradient; a bag of padding
only pools to zeros. The segment sum is one index_add over a fixed
column -> field index, so the shapes never depend on the data.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch

POOL_MODES = ("sum", "mean")


def _bag_layout(bag_sizes: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(column c's field (L,) int64, each field's size (F,) float32): ([0, 0, 0, 1], [3, 1]) for
    bag sizes (3, 1). Eagerly built once per sizes and device, so a step copies nothing to the
    device; under torch.compile built in the graph, where they are constants."""
    if torch.compiler.is_compiling():
        return _new_layout(bag_sizes, device)
    return _cached_layout(bag_sizes, device)


def _new_layout(bag_sizes: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    sizes_F = torch.tensor(bag_sizes, device=device)
    return torch.arange(len(bag_sizes), device=device).repeat_interleave(sizes_F, output_size=sum(bag_sizes)), sizes_F.float()


_cached_layout = functools.cache(_new_layout)


def pool_bags(emb_BLD: torch.Tensor, bag_sizes: Sequence[int], mode: str = "sum",
              pad_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L, d) rows of the bags, L = sum(bag_sizes) -> (B, F, d), one pooled row per field.

    pad_mask (B, L) bool marks padding slots (None: none). mode "mean" divides by the
    bag's rows that are not padding."""
    sizes = tuple(int(k) for k in bag_sizes)
    if mode not in POOL_MODES:
        raise ValueError(f"pool_bags mode {mode!r}: choose one of {', '.join(POOL_MODES)}")
    if emb_BLD.shape[1] != sum(sizes):
        raise ValueError(f"pool_bags: {emb_BLD.shape[1]} rows per sample, but the bag sizes {list(sizes)} sum to {sum(sizes)}")
    if pad_mask is None and all(k == 1 for k in sizes):
        return emb_BLD  # one-hot: each field's bag is its one row
    field_L, sizes_F = _bag_layout(sizes, emb_BLD.device)
    batch, _, dim = emb_BLD.shape
    if pad_mask is not None:
        # A product, not a select: the padding slots' gradient is then exactly zero.
        emb_BLD = emb_BLD * (~pad_mask)[:, :, None].to(emb_BLD.dtype)
    pooled_BFD = emb_BLD.new_zeros(batch, len(sizes), dim).index_add(1, field_L, emb_BLD)
    if mode == "sum":
        return pooled_BFD
    if pad_mask is None:
        return pooled_BFD / sizes_F[:, None].to(emb_BLD.dtype)
    kept_BL = (~pad_mask).to(emb_BLD.dtype)
    counts_BF = kept_BL.new_zeros(batch, len(sizes)).index_add(1, field_L, kept_BL)
    return pooled_BFD / counts_BF.clamp(min=1)[:, :, None]

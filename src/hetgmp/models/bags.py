"""Multi-hot bags to one vector per field: `pool_bags`, and `Bags`, what a step
needs to pool a dataset's bags.

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

A step that reads a batch's rows by its ids (B, L) pools them with the
dataset's `Bags` (its sizes, its padding ids and the pooling mode):

    bags = Bags.of(meta, "sum")                # None for one-hot data: nothing to pool
    emb_BFD = bags.pool(rows_BLD, ids_BL)      # padding slots: the ids equal to their field's padding id
    emb_BFD = pool_rows(bags, rows_BLD, ids_BL)   # the same, and the rows themselves when bags is None
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from hetgmp.choices import POOL_MODES


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
    # Sums in fp32 at least: a bag of 100 bf16 rows summed in bf16 would keep 8 bits of their total.
    wide = torch.promote_types(emb_BLD.dtype, torch.float32)
    rows_BLD = emb_BLD.to(wide)
    if pad_mask is not None:
        # A product, not a select: the padding slots' gradient is then exactly zero.
        rows_BLD = rows_BLD * (~pad_mask)[:, :, None].to(wide)
    pooled_BFD = rows_BLD.new_zeros(batch, len(sizes), dim).index_add(1, field_L, rows_BLD)
    if mode == "mean" and pad_mask is None:
        pooled_BFD = pooled_BFD / sizes_F[:, None].to(wide)
    elif mode == "mean":
        kept_BL = (~pad_mask).to(wide)
        counts_BF = kept_BL.new_zeros(batch, len(sizes)).index_add(1, field_L, kept_BL)
        pooled_BFD = pooled_BFD / counts_BF.clamp(min=1)[:, :, None]
    return pooled_BFD.to(emb_BLD.dtype)


@dataclass(frozen=True)
class Bags:
    """A dataset's bags: ids per row of each field, each field's global padding id (-1: none),
    and how a bag pools. `pool(rows_BLD, ids_BL)` -> (B, F, d)."""

    sizes: tuple[int, ...]
    padding: tuple[int, ...]
    mode: str = "sum"

    def __post_init__(self) -> None:
        if self.mode not in POOL_MODES:
            raise ValueError(f"bag pooling {self.mode!r}: choose one of {', '.join(POOL_MODES)} (--bag-pooling)")
        if len(self.padding) != len(self.sizes) or any(k < 1 for k in self.sizes):
            raise ValueError(f"bags: sizes {list(self.sizes)} (each >= 1) and padding {list(self.padding)} must have one entry per field")

    @classmethod
    def of(cls, meta: Any, mode: str = "sum") -> "Bags | None":
        """The bags of a dataset's meta (DatasetMeta, or a checkpoint's dict with "bag_sizes" and
        "padding" as `describe()` wrote them); None when every field holds one id and none pads."""
        if isinstance(meta, dict):
            sizes, padding = meta.get("bag_sizes"), meta.get("padding")
            return None if sizes is None else cls(tuple(sizes), tuple(padding), meta.get("bag_pooling", mode))
        padding = tuple(-1 if i is None else offset + i for i, offset in zip(meta.padding_ids, meta.offsets))
        if all(k == 1 for k in meta.bag_sizes) and all(p < 0 for p in padding):
            return None
        return cls(tuple(meta.bag_sizes), padding, mode)

    def describe(self) -> dict[str, Any]:
        """What a checkpoint records of the bags (`Bags.of` reads it back)."""
        return {"bag_sizes": list(self.sizes), "padding": list(self.padding), "bag_pooling": self.mode}

    @property
    def columns(self) -> int:
        """Ids per sample: sum(sizes)."""
        return sum(self.sizes)

    def pool(self, rows_BLD: torch.Tensor, ids_BL: torch.Tensor) -> torch.Tensor:
        """One pooled row per field, the slots whose id is its field's padding id left out."""
        return pool_bags(rows_BLD, self.sizes, self.mode, self.pad_mask(ids_BL.view(rows_BLD.shape[:2])))

    def pad_mask(self, ids_BL: torch.Tensor) -> torch.Tensor | None:
        """(B, L) bool: the padding slots, those whose id is their field's padding id (None: no field pads)."""
        return ids_BL == self.padding_columns(ids_BL.device).to(ids_BL.dtype) if self.padded else None

    @property
    def padded(self) -> bool:
        return any(p >= 0 for p in self.padding)

    def padding_columns(self, device: torch.device) -> torch.Tensor:
        """(L,) int64: each column's padding id (-1: none), built once per device (in a compiled graph, as a constant)."""
        if torch.compiler.is_compiling():
            return _new_padding_columns(self.sizes, self.padding, device)
        return _cached_padding_columns(self.sizes, self.padding, device)


def pool_rows(bags: Bags | None, rows_BLD: torch.Tensor, ids_BL: torch.Tensor) -> torch.Tensor:
    """The model's input from a batch's rows: pooled by `bags`, or the rows themselves (one-hot)."""
    return rows_BLD if bags is None else bags.pool(rows_BLD, ids_BL)


def _new_padding_columns(sizes: tuple[int, ...], padding: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(padding, device=device).repeat_interleave(torch.tensor(sizes, device=device), output_size=sum(sizes))


_cached_padding_columns = functools.cache(_new_padding_columns)

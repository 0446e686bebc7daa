"""The rows of one batch, and how autograd hands their gradient back.

    ids_BF  = [[5, 9], [9, 2]]
    uids_U  = [2, 5, 9]              # unique ids, sorted
    inverse = [[1, 2], [2, 0]]       # ids_BF == uids_U[inverse]
    rows_UD = one row per unique id
    output  = leaf_UD[inverse]       # (B, F, D); backward sums each id's
                                     # occurrences into leaf_UD.grad (U, D)

The table's optimizer then reads `leaf_UD.grad` (the gradient summed over
occurrences) and the occurrence counts.

The sharded table finds the unique ids without waiting for the device
(`sorted_unique`): one sort, and the tensors keep the batch's length N until
the host learns U from the exchange it waits for anyway (`trim`):

    ids     = [9, 5, 9, 2]        sorted = [2, 5, 9, 9]
    uids_U  = [2, 5, 9, 0]        counts_U = [1, 1, 2, 0]   (U = 3, padded to N = 4)
    inverse = [2, 1, 2, 0]        bounds = [2, 9]           (smallest and largest id)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hetgmp.errors import HetGMPError


@dataclass
class BatchRows:
    ids: torch.Tensor       # the tensor the caller passed (prefetch matches it by identity)
    uids_U: torch.Tensor    # int64, unique
    inverse: torch.Tensor   # int64, shape of ids
    rows_UD: torch.Tensor   # float32 values read for the batch
    leaf_UD: torch.Tensor | None = None
    owner_U: torch.Tensor | None = None  # sharded tables: owning rank of each unique id
    slot_U: torch.Tensor | None = None   # sharded tables: local slot, -1 if not stored here
    counts_U: torch.Tensor | None = None  # occurrences of each unique id (0 in the padding)

    @classmethod
    def of(cls, ids: torch.Tensor, device: torch.device, num_ids: int) -> BatchRows:
        """Unique ids of a batch, rows still to be filled in; ids outside [0, num_ids) are refused."""
        local = ids.to(device=device, dtype=torch.int64)
        uids_U, inverse = torch.unique(local, return_inverse=True)
        if len(uids_U):
            # unique() has already waited for the device: reading its ends costs one small copy,
            # and saves a device-side assert (which kills the process) on a bad id.
            check_id_range(*uids_U[[0, -1]].tolist(), num_ids)
        return cls(ids, uids_U, inverse, torch.empty(0, device=device))

    @classmethod
    def sorted_unique(cls, ids: torch.Tensor, device: torch.device) -> tuple[BatchRows, torch.Tensor]:
        """Unique ids by one sort, padded to the batch's length; and int64 [3] (U, smallest id,
        largest id) on the device, for the host to read with the exchange's sizes. No wait."""
        flat = ids.to(device=device, dtype=torch.int64).reshape(-1)
        if len(flat) == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=device)
            return cls(ids, empty, empty.reshape(ids.shape), torch.empty(0, device=device), counts_U=empty), empty.new_zeros(3)
        sorted_ids, seg, inverse = sorted_segments(flat)
        # Each distinct id read at its run's first sorted position (binary searches on the
        # ascending run numbers): a scatter of every occurrence to its run would aim a hot id's
        # thousands of occurrences at one address, and on a GPU such writes queue.
        starts = torch.searchsorted(seg, torch.arange(len(seg) + 1, device=device))
        counts = starts[1:] - starts[:-1]
        uids = torch.where(counts > 0, sorted_ids[starts[:-1].clamp(max=len(seg) - 1)], 0)
        sizes = torch.cat([seg[-1:] + 1, sorted_ids[:1], sorted_ids[-1:]])
        return cls(ids, uids, inverse.reshape(ids.shape), torch.empty(0, device=device), counts_U=counts), sizes

    def trim(self, unique: int, num_ids: int, bounds: tuple[int, int]) -> None:
        """Drop the padding once the host knows U; ids outside [0, num_ids) are refused here."""
        if unique:
            check_id_range(*bounds, num_ids)
        self.uids_U, self.counts_U = self.uids_U[:unique], self.counts_U[:unique]
        self.owner_U, self.slot_U = self.owner_U[:unique], self.slot_U[:unique]

    def output(self, requires_grad: bool) -> torch.Tensor:
        """(ids.shape, D) embeddings; with requires_grad, a fresh leaf captures the gradient."""
        if not requires_grad:
            return self.rows_UD[self.inverse]
        self.leaf_UD = self.rows_UD.detach().requires_grad_(True)
        return GatherRows.apply(self.leaf_UD, self.inverse)

    def gradient(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(summed gradient [U, D], occurrence counts int64 [U]), or None before any backward."""
        if self.leaf_UD is None or self.leaf_UD.grad is None:
            return None
        if self.counts_U is None:
            # index_add_, not bincount: on a GPU bincount reads the largest id on the host.
            inverse = self.inverse.reshape(-1)
            self.counts_U = torch.zeros(len(self.uids_U), dtype=torch.int64, device=inverse.device).index_add_(0, inverse, torch.ones_like(inverse))
        return self.leaf_UD.grad, self.counts_U


class GatherRows(torch.autograd.Function):
    """rows_UD[inverse], whose backward sums each row's occurrences with one index_add_.

    Autograd's own backward of indexing (index_put_ with accumulate) sorts the
    indices first to be deterministic: on a GPU that sort-based kernel costs
    several times the atomic index_add_ (summation order, hence the last bits
    of a hot row's gradient, may then vary from run to run)."""

    @staticmethod
    def forward(ctx, rows_UD: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        ctx.num_rows = len(rows_UD)
        return rows_UD[inverse]

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        (inverse,) = ctx.saved_tensors
        grad = grad_out.reshape(-1, grad_out.shape[-1])
        summed = torch.zeros(ctx.num_rows, grad.shape[1], dtype=grad.dtype, device=grad.device)
        return summed.index_add_(0, inverse.reshape(-1), grad), None


def check_id_range(low: int, high: int, num_ids: int) -> None:
    """Refuse a batch whose smallest or largest id lies outside the table."""
    if low < 0 or high >= num_ids:
        raise HetGMPError(
            f"the batch holds id {low if low < 0 else high} but the embedding table has ids 0..{num_ids - 1}: "
            "the dataset's ids and the table's num_ids (meta.json) disagree; re-run `hetgmp prepare`"
        )


def sorted_segments(values_N: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """unique() without its wait for the device: one sort of N >= 1 values gives them in
    order, each sorted value's segment (its index among the distinct values) and each
    value's segment (the inverse), all of length N.

    values = [9, 5, 9] -> sorted [5, 9, 9], seg [0, 1, 1], inverse [1, 0, 1]"""
    sorted_v, order = torch.sort(values_N)
    starts = torch.zeros(len(values_N), dtype=torch.int64, device=values_N.device)  # 1 where a value differs from the one before
    torch.ne(sorted_v[1:], sorted_v[:-1], out=starts[1:])
    seg = torch.cumsum(starts, 0)
    return sorted_v, seg, torch.empty_like(seg).scatter_(0, order, seg)

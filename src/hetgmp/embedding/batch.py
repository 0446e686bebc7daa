"""The rows of one batch, and how autograd hands their gradient back.

    ids_BF  = [[5, 9], [9, 2]]
    uids_U  = [2, 5, 9]              # unique ids, sorted
    inverse = [[1, 2], [2, 0]]       # ids_BF == uids_U[inverse]
    rows_UD = one row per unique id
    output  = leaf_UD[inverse]       # (B, F, D); backward sums each id's
                                     # occurrences into leaf_UD.grad (U, D)

The table's optimizer then reads `leaf_UD.grad` (the gradient summed over
occurrences) and the occurrence counts.
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
    counts_U: torch.Tensor | None = None  # occurrences of each unique id

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

"""The rows of one batch, and how autograd hands their gradient back.

    ids_BF  = [[5, 9], [9, 2]]
    uids_U  = [2, 5, 9]              # unique ids, sorted
    inverse = [[1, 2], [2, 0]]       # ids_BF == uids_U[inverse]
    rows_UD = one row per unique id
    output  = leaf_UD[inverse]       # (B, F, D); backward sums each id's
                                     # occurrences into leaf_UD.grad (U, D)

The table's optimizer then reads `leaf_UD.grad` (the gradient summed over
occurrences) and the occurrence counts (bincount of `inverse`).
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

    @classmethod
    def of(cls, ids: torch.Tensor, device: torch.device, num_ids: int) -> "BatchRows":
        """Unique ids of a batch, rows still to be filled in; ids outside [0, num_ids) are refused."""
        local = ids.to(device=device, dtype=torch.int64)
        uids_U, inverse = torch.unique(local, return_inverse=True)
        if len(uids_U):
            # unique() has already waited for the device: reading its ends costs one small copy,
            # and saves a device-side assert (which kills the process) on a bad id.
            low, high = uids_U[[0, -1]].tolist()
            if low < 0 or high >= num_ids:
                raise HetGMPError(
                    f"the batch holds id {low if low < 0 else high} but the embedding table has ids 0..{num_ids - 1}: "
                    "the dataset's ids and the table's num_ids (meta.json) disagree; re-run `hetgmp prepare`"
                )
        return cls(ids, uids_U, inverse, torch.empty(0, device=device))

    def output(self, requires_grad: bool) -> torch.Tensor:
        """(ids.shape, D) embeddings; with requires_grad, a fresh leaf captures the gradient."""
        if not requires_grad:
            return self.rows_UD[self.inverse]
        self.leaf_UD = self.rows_UD.detach().requires_grad_(True)
        return self.leaf_UD[self.inverse]

    def gradient(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(summed gradient [U, D], occurrence counts int64 [U]), or None before any backward."""
        if self.leaf_UD is None or self.leaf_UD.grad is None:
            return None
        counts_U = torch.bincount(self.inverse.reshape(-1), minlength=len(self.uids_U))
        return self.leaf_UD.grad, counts_U


def split_by_kind(kind_N: torch.Tensor, kinds: int) -> list[torch.Tensor]:
    """Indices of the entries of each kind 0 .. kinds-1, with one host read of the sizes.

    kind_N = [2, 0, 2, 1] -> [tensor([1]), tensor([3]), tensor([0, 2])]
    (a stable sort and one bincount replace a boolean mask per kind, each of
    which would wait for the device)."""
    order = torch.argsort(kind_N, stable=True)
    return list(torch.split(order, torch.bincount(kind_N, minlength=kinds).tolist()))

"""One optimizer step per distinct embedding row, on the gradient summed over
the row's occurrences in the batch.

Inputs, for a batch whose flattened ids are ids_N (duplicates allowed):

    table_ED   float32 [E, D]   updated in place
    ids_N      int32/int64 [N]  row of each gradient row
    grad_ND    float32 [N, D]   gradient of each occurrence
    acc_E      float32 [E]      row-wise Adagrad accumulator; None means SGD
    counts_E   int [E]          optional: += occurrences of each row (versions)

Example, D = 1, lr = 0.1, SGD: ids [3, 5, 3] with gradients [[1], [2], [4]]
give row 3 -= 0.1 * 5 and row 5 -= 0.1 * 2, counts[3] += 2, counts[5] += 1.
Row-wise Adagrad on the same batch: acc[3] += 25 (the mean over D of the
summed gradient squared), then row 3 -= 0.1 * 5 / (sqrt(acc[3]) + eps).

Three implementations, held to one another by tests:
- `sparse_update_reference`: `torch.unique` + `index_add_`; plain and obvious,
  but `unique` has a data-dependent size, so it syncs with the host.
- `sparse_update_torch`: fixed shapes, no host sync (sort + segment ids +
  `index_add_`); runs anywhere, and on a GPU pays index_add_'s atomics.
- the Triton path (`triton_update.py`): sort once, reduce each run of equal
  ids in registers and apply the optimizer in the same kernel.
`sparse_update` picks one.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Union

import torch

from hetgmp.errors import HetGMPError

DEFAULT_EPS = 1e-8  # as the embedding runtime and FBGEMM's row-wise Adagrad
BACKENDS = ("auto", "triton", "torch", "reference")


@dataclass(frozen=True)
class Rank1Grad:
    """The gradient of occurrence i = b F + f (batch row b, field f) as coef_B[b] * weight_FD[f].

    A model whose rows reach its output through one linear layer (WDL: logit =
    sum over f of <row_bf, w_f> + terms without rows) has exactly this
    gradient, with coef_B = dloss/dlogit_B. The Triton update computes each
    occurrence's gradient from the two instead of reading an [N, D] tensor;
    the other implementations write it out (`dense`).
    """

    coef_B: torch.Tensor     # float [B]
    weight_FD: torch.Tensor  # float [F, D]

    def dense(self) -> torch.Tensor:
        """The [B F, D] gradient written out."""
        return (self.coef_B.float()[:, None, None] * self.weight_FD.float()[None]).reshape(-1, self.weight_FD.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.coef_B) * self.weight_FD.shape[0], self.weight_FD.shape[1])


@dataclass(frozen=True)
class PooledGrad:
    """The gradient of occurrence i = b L + c (batch row b, column c of L, in field f = field_L[c]) as
    weight_BL[b, c] * grad_BFD[b, f]: every row of a pooled bag gets its bag's gradient, scaled by its
    share (0 for padding, 1 / count for a mean; weight None: 1). See kernels/bag_pool.py.

    The Triton update reads the (B, F, D) pooled gradient in place of an (B L, D) one, with its
    strides (a model's backward may hand it out as a view of a wider gradient, e.g. DCNv2's
    [embeddings, bottom]); the other implementations write it out (`dense`)."""

    grad_BFD: torch.Tensor                # float [B, F, D], stride 1 along D: the pooled rows' gradient
    field_L: torch.Tensor                 # int32 [L]
    weight_BL: torch.Tensor | None        # float32 [B, L], or None
    fields: int                           # F

    @property
    def batch(self) -> int:
        return len(self.grad_BFD)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.batch * len(self.field_L), self.grad_BFD.shape[2])

    def dense(self) -> torch.Tensor:
        """The [B L, D] gradient written out (float32)."""
        grad_BLD = self.grad_BFD.float()[:, self.field_L.long()]
        if self.weight_BL is not None:
            grad_BLD = grad_BLD * self.weight_BL[:, :, None]
        return grad_BLD.reshape(-1, self.grad_BFD.shape[2])


RowGrad = Union[torch.Tensor, Rank1Grad, PooledGrad]  # what the update takes as the occurrences' gradient


def sparse_update_reference(
    table_ED: torch.Tensor,
    ids_N: torch.Tensor,
    grad_ND: torch.Tensor,
    lr: float,
    acc_E: torch.Tensor | None = None,
    eps: float = DEFAULT_EPS,
    counts_E: torch.Tensor | None = None,
) -> None:
    """The update written the obvious way (see the module doc); syncs with the host."""
    grad_ND = grad_ND.to(table_ED.dtype)
    uniq_U, inverse_N = torch.unique(ids_N.long(), return_inverse=True)
    gsum_UD = torch.zeros(len(uniq_U), grad_ND.shape[1], dtype=grad_ND.dtype, device=grad_ND.device)
    gsum_UD.index_add_(0, inverse_N, grad_ND)
    if acc_E is None:
        table_ED.index_add_(0, uniq_U, gsum_UD, alpha=-lr)
    else:
        acc_E.index_add_(0, uniq_U, gsum_UD.square().mean(1))
        scale_U = lr / (acc_E[uniq_U].sqrt() + eps)
        table_ED.index_add_(0, uniq_U, -scale_U[:, None] * gsum_UD)
    if counts_E is not None:
        counts_E.index_add_(0, uniq_U, torch.bincount(inverse_N, minlength=len(uniq_U)).to(counts_E.dtype))


def _segments(ids_N: torch.Tensor, order: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed-shape run decomposition of the sorted ids (sorted here unless `order` is given).

    Returns (perm_N, seg_N, rows_N, valid_N): perm_N sorts the ids; the i-th
    sorted occurrence belongs to segment seg_N[i]; segment s is row rows_N[s]
    where valid_N[s] (there are as many segments as distinct ids, at most N).
    Example: ids [5, 3, 5] -> sorted [3, 5, 5], perm [1, 0, 2], seg [0, 1, 1],
    rows [3, 5, 0], valid [True, True, False].
    """
    sorted_N, perm_N = order if order is not None else torch.sort(ids_N)
    sorted_N = sorted_N.long()
    starts_N = torch.ones_like(sorted_N, dtype=torch.bool)
    starts_N[1:] = sorted_N[1:] != sorted_N[:-1]
    seg_N = torch.cumsum(starts_N, 0) - 1
    rows_N = torch.zeros_like(sorted_N).scatter_(0, seg_N, sorted_N)
    valid_N = torch.arange(len(ids_N), device=ids_N.device) <= seg_N[-1]
    return perm_N, seg_N, rows_N, valid_N


def sparse_update_torch(
    table_ED: torch.Tensor,
    ids_N: torch.Tensor,
    grad_ND: torch.Tensor,
    lr: float,
    acc_E: torch.Tensor | None = None,
    eps: float = DEFAULT_EPS,
    counts_E: torch.Tensor | None = None,
    order: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """The same update with fixed shapes and no host sync, in plain torch ops."""
    grad_ND = grad_ND.to(table_ED.dtype)  # index_add_ takes one dtype (bf16 gradients, see FastStepConfig)
    if acc_E is None:
        # SGD is linear in the gradient: summing by row is index_add_'s own job.
        table_ED.index_add_(0, ids_N, grad_ND, alpha=-lr)
    else:
        perm_N, seg_N, rows_N, valid_N = _segments(ids_N, order)
        gsum_ND = torch.zeros_like(grad_ND).index_add_(0, seg_N, grad_ND[perm_N])
        # Slots past the last segment point at row 0 and add zeros there.
        acc_E.index_add_(0, rows_N, torch.where(valid_N, gsum_ND.square().mean(1), 0.0))
        scale_N = torch.where(valid_N, lr / (acc_E[rows_N].sqrt() + eps), 0.0)
        table_ED.index_add_(0, rows_N, -scale_N[:, None] * gsum_ND)
    if counts_E is not None:
        counts_E.index_add_(0, ids_N, torch.ones_like(ids_N, dtype=counts_E.dtype))


def triton_available(device: torch.device | str) -> bool:
    """Whether the Triton kernels can run on `device`: CUDA with Triton, or any
    device under Triton's interpreter (TRITON_INTERPRET=1, used by the CPU tests)."""
    if importlib.util.find_spec("triton") is None:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    return torch.device(device).type == "cuda"


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """'auto' -> 'triton' where it can run, else 'torch'; other names are checked."""
    if backend not in BACKENDS:
        raise HetGMPError(f"unknown sparse-update kernel {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "triton" if triton_available(device) else "torch"
    if backend == "triton" and not triton_available(device):
        raise HetGMPError(
            f"the Triton sparse update cannot run on {device}: it needs CUDA and the `triton` package "
            "(or TRITON_INTERPRET=1 for CPU tests); use the 'torch' kernel instead"
        )
    return backend


def _check(table_ED: torch.Tensor, ids_N: torch.Tensor, grad_ND: RowGrad, acc_E: torch.Tensor | None) -> None:
    problems = []
    if table_ED.dim() != 2 or table_ED.stride(1) != 1 or table_ED.dtype != torch.float32:
        problems.append(f"table must be float32 [E, D] with contiguous rows (got {table_ED.dtype} {tuple(table_ED.shape)})")
    if tuple(grad_ND.shape) != (len(ids_N), table_ED.shape[1]) or not (isinstance(grad_ND, (Rank1Grad, PooledGrad)) or grad_ND.is_contiguous()):
        problems.append(f"grad must be contiguous [{len(ids_N)}, {table_ED.shape[1]}] (got {tuple(grad_ND.shape)})")
    if acc_E is not None and acc_E.shape != (table_ED.shape[0],):
        problems.append(f"accumulator must be [{table_ED.shape[0]}] (got {tuple(acc_E.shape)})")
    if problems:
        raise HetGMPError("sparse update: " + "; ".join(problems))


def sparse_update(
    table_ED: torch.Tensor,
    ids_N: torch.Tensor,
    grad_ND: RowGrad,
    lr: float,
    acc_E: torch.Tensor | None = None,
    eps: float = DEFAULT_EPS,
    counts_E: torch.Tensor | None = None,
    backend: str = "auto",
    scratch_TD: torch.Tensor | None = None,
    order: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Apply the update (module doc) with the chosen implementation.

    `scratch_TD` is the Triton Adagrad path's zeroed scratch
    (`new_scratch`); pass a persistent one to avoid a fresh zeroed buffer per
    call. The kernels leave it zeroed again. `order` is the ids' (sorted,
    permutation) from `hetgmp.kernels.gather.sort_ids` when the caller already
    sorted them (for the gather): the sorting paths then skip their own sort.
    `grad_ND` may be a Rank1Grad or a PooledGrad (ids_N then in batch-row-major order).
    """
    _check(table_ED, ids_N, grad_ND, acc_E)
    if len(ids_N) == 0:
        return
    name = resolve_backend(backend, table_ED.device)
    if name == "triton":
        importlib.import_module("hetgmp.kernels.triton_update").fused_update(
            table_ED, ids_N, grad_ND, lr, acc_E, eps, counts_E, scratch_TD, order=order
        )
    else:
        dense_ND = grad_ND.dense() if isinstance(grad_ND, (Rank1Grad, PooledGrad)) else grad_ND
        if name == "torch":
            sparse_update_torch(table_ED, ids_N, dense_ND, lr, acc_E, eps, counts_E, order)
        else:
            sparse_update_reference(table_ED, ids_N, dense_ND, lr, acc_E, eps, counts_E)


def new_scratch(num_ids: int, dim: int, device: torch.device | str) -> torch.Tensor:
    """A zeroed scratch for the Triton Adagrad path at `num_ids` ids per call, width `dim`."""
    rows = importlib.import_module("hetgmp.kernels.triton_update").scratch_rows(num_ids, dim)
    return torch.zeros(rows, dim, dtype=torch.float32, device=device)

"""Fused kernels for the single-GPU fast path, each with a plain-torch reference.

    sparse_update(table_ED, ids_N, grad_ND, lr, acc_E=None)   # SGD or row-wise Adagrad

The Triton kernels load only where `triton` is importable (see
`triton_available`); everything else is plain torch.
"""

from hetgmp.kernels.sparse_update import (
    BACKENDS,
    DEFAULT_EPS,
    Rank1Grad,
    new_scratch,
    resolve_backend,
    sparse_update,
    sparse_update_reference,
    sparse_update_torch,
    triton_available,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_EPS",
    "Rank1Grad",
    "new_scratch",
    "resolve_backend",
    "sparse_update",
    "sparse_update_reference",
    "sparse_update_torch",
    "triton_available",
]

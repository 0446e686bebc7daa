"""The fixed input buffers a captured step reads: (dense_BI, ids_BF, labels_B), or any others.

A CUDA graph reads its inputs where they were at capture, so every batch is
copied into the same buffers (unless the caller wrote it there itself,
passing the buffers back). The first load makes them, each in the dtype
given for its position: ids in the step's id type (kernels.gather.id_dtype:
int32 while the table has fewer than 2^31 rows, so the sort of the ids needs
half the radix passes of int64).

    batch = InputBuffers(device, None, torch.int32, None)   # dense, ids, labels
    dense_BI, ids_BF, labels_B = batch.load(dense_BI, ids_BF, labels_B)
"""

from __future__ import annotations

import torch

from hetgmp.errors import HetGMPError

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class InputBuffers:
    def __init__(self, device: torch.device, *dtypes: torch.dtype | None) -> None:
        """One buffer per dtype (None: the dtype of the first tensor loaded there)."""
        self.device, self.dtypes = device, dtypes
        self._buffers: tuple[torch.Tensor, ...] | None = None

    def get(self) -> tuple[torch.Tensor, ...]:
        """The buffers, once the first load has made them."""
        if self._buffers is None:
            raise HetGMPError("input buffers exist only for a CUDA-graph step, after its first step() call: call step() once with a real batch")
        return self._buffers

    def load(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Copy the tensors into the buffers (made by the first call) and return the buffers."""
        if self._buffers is None:
            self._buffers = tuple(t.detach().to(device=self.device, dtype=dtype or t.dtype, copy=True)
                                  for t, dtype in zip(tensors, self.dtypes, strict=True))
            return self._buffers
        for buf, t in zip(self._buffers, tensors, strict=True):
            if t is not buf:
                if t.shape != buf.shape:
                    raise HetGMPError(f"a captured step needs fixed shapes: got {tuple(t.shape)}, captured {tuple(buf.shape)}; pad the last batch or drop it")
                buf.copy_(t, non_blocking=True)
        return self._buffers

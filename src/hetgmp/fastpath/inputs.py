"""The fixed input buffers a captured step reads: (dense_BI, ids_BF, labels_B).

A CUDA graph reads its inputs where they were at capture, so every batch is
copied into the same three buffers (unless the caller wrote it there itself,
passing the buffers back). The first batch makes them, ids in the step's id
type (kernels.gather.id_dtype: int32 while the table has fewer than 2^31
rows, so the sort of the ids needs half the radix passes of int64).
"""

from __future__ import annotations

import torch

from hetgmp.errors import HetGMPError

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class InputBuffers:
    def __init__(self, device: torch.device, ids_dtype: torch.dtype) -> None:
        self.device, self.ids_dtype = device, ids_dtype
        self._buffers: Batch | None = None

    def get(self) -> Batch:
        """The buffers, once the first batch has made them."""
        if self._buffers is None:
            raise HetGMPError("input buffers exist only for a CUDA-graph step, after its first step() call: call step() once with a real batch")
        return self._buffers

    def load(self, *batch: torch.Tensor) -> Batch:
        """Copy (dense_BI, ids_BF, labels_B) into the buffers (made by the first call) and return them."""
        if self._buffers is None:
            dense_BI, ids_BF, labels_B = (t.detach() for t in batch)
            ids_BF = ids_BF.to(device=self.device, dtype=self.ids_dtype, copy=True)
            self._buffers = (dense_BI.to(self.device, copy=True), ids_BF, labels_B.to(self.device, copy=True))
            return self._buffers
        for buf, t in zip(self._buffers, batch):
            if t is not buf:
                if t.shape != buf.shape:
                    raise HetGMPError(f"a captured step needs fixed shapes: got {tuple(t.shape)}, captured {tuple(buf.shape)}; pad the last batch or drop it")
                buf.copy_(t, non_blocking=True)
        return self._buffers


class IdBuffer:
    """One more fixed buffer, for ids (the next batch's, read a step ahead)."""

    def __init__(self, device: torch.device, ids_dtype: torch.dtype) -> None:
        self.device, self.ids_dtype = device, ids_dtype
        self._buffer: torch.Tensor | None = None

    def load(self, ids_BF: torch.Tensor) -> torch.Tensor:
        if self._buffer is None:
            self._buffer = ids_BF.detach().to(device=self.device, dtype=self.ids_dtype, copy=True)
        elif ids_BF is not self._buffer:
            if ids_BF.shape != self._buffer.shape:
                raise HetGMPError(f"a captured step needs fixed shapes: got ids {tuple(ids_BF.shape)}, captured {tuple(self._buffer.shape)}")
            self._buffer.copy_(ids_BF, non_blocking=True)
        return self._buffer

"""Warm up, capture and replay a fixed-shape training step that reads fixed input buffers.

    run = CapturedStep(train_fn, device, use_graph=True, warmup_steps=3, narrow_ids=True)
    loss = run(dense_BI, ids_BF, labels_B)     # eager x3 on a side stream, then capture, then replay

The first `warmup_steps` calls run eagerly on a side stream (kernels compile,
allocator pools and NCCL communicators come up: a collective cannot create
its communicator inside a capture), the next call captures `train_fn` in one
CUDA graph, and every call from then on copies the batch into the input
buffers (unless it passes the buffers themselves, see `input_buffers`) and
replays. Every call trains on its batch exactly once. Without a graph the
function is simply called.

With collectives inside, every worker must capture at the same call and
replay the same number of times: a captured NCCL operation is collective over
the ranks that captured it (NCCL's "Using NCCL with CUDA Graphs"), and
PyTorch's NCCL process group leaves captured work out of its watchdog
(pytorch/pytorch#103503) so replays need no host bookkeeping.
"""

from __future__ import annotations

from typing import Callable

import torch

from hetgmp.fastpath.inputs import Batch, InputBuffers


class CapturedStep:
    def __init__(self, train_fn: Callable[..., torch.Tensor], device: torch.device, use_graph: bool,
                 warmup_steps: int, narrow_ids: bool) -> None:
        self.train_fn, self.device, self.use_graph = train_fn, device, use_graph
        self.warmup_steps, self.narrow_ids = warmup_steps, narrow_ids
        self._inputs = InputBuffers(device, narrow_ids)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._out: torch.Tensor | None = None
        self._warm = 0

    def __call__(self, dense_BI: torch.Tensor, ids_BF: torch.Tensor, labels_B: torch.Tensor) -> torch.Tensor:
        if not self.use_graph:
            return self.train_fn(dense_BI, ids_BF, labels_B)
        inputs = self._inputs.load(dense_BI, ids_BF, labels_B)
        if self._graph is None:
            if self._warm < self.warmup_steps:
                self._warm += 1
                return self._on_side_stream(inputs)
            self._capture(inputs)
        self._graph.replay()
        return self._out

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def input_buffers(self) -> Batch:
        """The graph's (dense_BI, ids_BF, labels_B) buffers, after the first call."""
        return self._inputs.get()

    def _on_side_stream(self, inputs: Batch) -> torch.Tensor:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            out = self.train_fn(*inputs)
        main = torch.cuda.current_stream(self.device)
        main.wait_stream(side)
        out.record_stream(main)
        return out

    def _capture(self, inputs: Batch) -> None:
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._out = self.train_fn(*inputs)
        self._graph = graph

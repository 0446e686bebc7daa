"""Warm up, capture and replay fixed-shape steps, one CUDA graph per key; work beside on a second stream.

    replay = GraphReplay(device, use_graph=True, warmup_steps=3)
    loss = replay("step", lambda: train(*inputs))   # eager x3 on a side stream, then capture, then replay

The first `warmup_steps` calls (whatever their key) run eagerly on a side
stream (kernels compile, allocator pools and NCCL communicators come up: a
collective cannot create its communicator inside a capture); the first call
of a key after them captures its function in one CUDA graph, and every call
from then on replays it. The graphs share one memory pool, so they must be
replayed one at a time. A captured function reads its inputs where they were
at capture (see inputs.py). Without a graph the function is simply called.

With collectives inside, every worker must capture at the same call and
replay the same number of times: a captured NCCL operation is collective over
the ranks that captured it (NCCL's "Using NCCL with CUDA Graphs"), and
PyTorch's NCCL process group leaves captured work out of its watchdog
(pytorch/pytorch#103503) so replays need no host bookkeeping.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

Train = Callable[[], torch.Tensor]  # one step; returns its loss


class GraphReplay:
    def __init__(self, device: torch.device, use_graph: bool, warmup_steps: int,
                 before_capture: Callable[[], None] | None = None) -> None:
        self.device, self.use_graph, self.warmup_steps = device, use_graph, warmup_steps
        self.before_capture = before_capture
        self._graphs: dict[object, torch.cuda.CUDAGraph] = {}
        self._losses: dict[object, torch.Tensor] = {}
        self._warm = 0

    def __call__(self, key: object, train: Train) -> torch.Tensor:
        """Run `train` as the module doc says; returns its loss (a replay's: the next one overwrites it)."""
        if not self.use_graph:
            return train()
        graph = self._graphs.get(key)
        if graph is None:
            if self._warm < self.warmup_steps:
                self._warm += 1
                return self._on_side_stream(train)
            graph = self._capture(key, train)
        graph.replay()
        return self._losses[key]

    def release(self) -> None:
        """Wait for the last replay and destroy the graphs (the next call warms up and captures
        again). Graphs that captured NCCL collectives must go before their process group: with
        them alive destroy_process_group can hang (pytorch/pytorch#115388)."""
        if self._graphs:
            torch.cuda.synchronize(self.device)
        self._graphs.clear()
        self._losses.clear()
        self._warm = 0

    def _on_side_stream(self, train: Train) -> torch.Tensor:
        # Warm-up off the default stream, as capture will be (PyTorch's recipe).
        side = torch.cuda.Stream(self.device)
        with beside(side, self.device):
            loss = train()
        join(side, self.device)
        loss.record_stream(torch.cuda.current_stream(self.device))  # the caller reads it on its own stream
        return loss

    def _capture(self, key: object, train: Train) -> torch.cuda.CUDAGraph:
        torch.cuda.synchronize(self.device)
        if self.before_capture is not None:
            self.before_capture()
        graph = torch.cuda.CUDAGraph()
        pool = next(iter(self._graphs.values())).pool() if self._graphs else None
        with torch.cuda.graph(graph, pool=pool):
            self._losses[key] = train()
        self._graphs[key] = graph
        return graph


@contextlib.contextmanager
def beside(stream: torch.cuda.Stream | None, device: torch.device) -> Iterator[None]:
    """Run the block on `stream`, after what the current stream has queued (None: on the current stream)."""
    if stream is None:
        yield
        return
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        yield


def join(stream: torch.cuda.Stream | None, device: torch.device) -> None:
    """Make the current stream wait for what `stream` has queued (None: nothing to wait for)."""
    if stream is not None:
        torch.cuda.current_stream(device).wait_stream(stream)

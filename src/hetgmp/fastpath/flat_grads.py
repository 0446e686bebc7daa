"""The dense gradients of a data-parallel step, summed over workers in one collective.

Every .grad is a view of one flat buffer, which backward accumulates into, followed by one
spare element: a worker's non-finite verdict (or count), summed with the gradients. One
all_reduce (SUM) then sends both, with no copy in or out:

    flat = FlatGradients(params, device)
    flat.point()                        # zero the buffer, .grad = views (before backward)
    (loss / world).backward()
    flat.spare.fill_(bad)               # optional: this worker's verdict
    work = flat.all_reduce(group)       # async; work.wait() before the optimizer's step
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class FlatGradients:
    def __init__(self, params: list[nn.Parameter], device: torch.device) -> None:
        self.params = params
        self.buffer = torch.zeros(sum(p.numel() for p in params) + 1, device=device)
        self.spare = self.buffer[-1:]

    def point(self) -> None:
        """Zero the buffer and make every parameter's .grad a view of it."""
        self.buffer.zero_()
        offset = 0
        for p in self.params:
            p.grad = self.buffer[offset : offset + p.numel()].view_as(p)
            offset += p.numel()

    def all_reduce(self, group: dist.ProcessGroup | None, world: int) -> dist.Work | None:
        """Start summing over the workers (None alone: nothing to sum)."""
        return dist.all_reduce(self.buffer, group=group, async_op=True) if world > 1 else None

    def bytes_per_worker(self, world: int) -> int:
        """What a ring all-reduce sends per worker."""
        return 2 * (world - 1) * self.buffer.numel() * 4 // world

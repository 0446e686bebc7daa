"""What the training loop calls on the step that trains its batches, whichever it is:
the general step (loop.GeneralSteps), the one-worker fast step (fast.FastSteps) or the
sharded fast step (sharded_fast.ShardedFastSteps)."""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Steps(Protocol):
    def train(self, step: int) -> None:
        """Train batch `step`; its loss and correct count go to the loop's window."""

    def counters(self) -> Any:
        """The step's traffic counters for the window (a StepCounters or a dict of numbers)."""

    def skipped(self) -> torch.Tensor:
        """1.0 if --skip-nonfinite skipped the last batch (a device scalar)."""

    def check_point(self) -> None:
        """Before an evaluation or a checkpoint: raise HetGMPError if a step trained on wrong rows."""

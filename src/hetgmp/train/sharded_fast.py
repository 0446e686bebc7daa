"""Several workers' steps through the sharded fast step (`hetgmp.fastpath.ShardedFastStep`).

With several workers and `--step auto` or `fast` (see `TrainConfig.choose_step`)
the trainer hands each step to ShardedFastStep: fixed-capacity exchanges and
the whole step one CUDA graph on a GPU (eager over Gloo on CPUs). It trains the
run's ShardedTable (`Run.emb`, hetgmp.embedding.fixed) in place, and that table
is also what evaluation reads (`read`, after a `flush`), what checkpoints save
(`state_dict`) and load, and what the general step trains as a layer: one
table, one checkpoint format, whichever step trains it.

Capacities: every round carries C rows per peer, and the per-id passes
cover U distinct ids. Both are measured before the run on its own batches
(the first SCAN_EPOCHS epochs of this worker's stream, maxed over workers)
with CAPACITY_ROOM to spare; a longer run measures the next epoch's batches
before it reaches them and grows the table if they need more (saying so in
the log), so no step reads more than it has room for. Should one anyway (the
step counts such reads on the device), every log, evaluation and checkpoint
point, and the last step, checks the count on all workers and stops the run
with the numbers (before any checkpoint could save such a step) rather than
train on or end as if nothing happened.

What the general step reports and this one does not: the per-step counts of
distinct ids and local hits (they would cost reductions per step).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from hetgmp.distributed import DistContext
from hetgmp.embedding import EmbeddingConfig, Placement
from hetgmp.embedding.fixed.capacity import find_capacities, round_up
from hetgmp.embedding.fixed.table import ShardedTable
from hetgmp.errors import HetGMPError
from hetgmp.fastpath import ShardedFastStep, ShardedStepConfig
from hetgmp.train.config import TrainConfig
from hetgmp.train.data import BatchStream
from hetgmp.models.bags import Bags
from hetgmp.models.base import has_row_weights
from hetgmp.train.fast import StepRecorder, compiled_note

SCAN_EPOCHS = 10        # epochs of batches whose capacities are measured before the run (all of a shorter run)
CAPACITY_ROOM = 1.1     # measured capacities get 10% more, then round up (capacity.round_up)


def measured_needs(stream: BatchStream, placement: Placement, ctx: DistContext, steps: range) -> tuple[int, int]:
    """(most distinct ids one peer is asked for, most distinct ids) over this worker's batches
    `steps`, maxed over workers (a collective)."""
    owner_E = torch.as_tensor(placement.owner.astype(np.int64), device=ctx.device)
    return find_capacities((stream.ids(s) for s in steps), owner_E, ctx.rank, ctx.world_size, multiple=1)


def with_room(per_peer: int, distinct: int, ids_per_batch: int) -> tuple[int, int]:
    """(C, U) for measured needs: CAPACITY_ROOM more, rounded up (U at most the batch's ids)."""
    return round_up(math.ceil(CAPACITY_ROOM * per_peer)), min(ids_per_batch, round_up(math.ceil(CAPACITY_ROOM * distinct)))


def build_sharded_table(cfg: TrainConfig, table: EmbeddingConfig, placement: Placement, ctx: DistContext,
                        stream: BatchStream, total_steps: int) -> tuple[ShardedTable, int]:
    """The run's table with capacities measured on its first batches; and how many steps were measured."""
    scanned = min(total_steps, SCAN_EPOCHS * stream.steps_per_epoch)
    capacity, distinct = with_room(*measured_needs(stream, placement, ctx, range(scanned)), stream.batch_size * stream.rows.ids.shape[1])
    # Triton runs on a CPU only under its test interpreter: plain torch there.
    kernel = "auto" if ctx.device.type == "cuda" else "torch"
    return ShardedTable(table, placement, ctx, capacity, distinct, kernel=kernel, compile=cfg.compile), scanned


def build_sharded_fast_step(cfg: TrainConfig, model: nn.Module, table: ShardedTable, bags: Bags | None = None) -> ShardedFastStep:
    """The sharded fast step over the run's table, with the run's optimizers."""
    step_cfg = ShardedStepConfig(
        capacity=table.capacity, distinct_capacity=table.distinct_capacity, dense_lr=cfg.lr, dense_optimizer=cfg.optimizer,
        amp=cfg.amp, compile=cfg.compile, autotune=cfg.autotune, flag_nonfinite=True, skip_nonfinite=cfg.skip_nonfinite, kernel=table.kernel,
        # WDL's rows enter the logit linearly: the update makes their gradient from dloss/dlogit.
        implicit_row_grad=has_row_weights(model) and bags is None and not cfg.skip_nonfinite,
    )
    return ShardedFastStep(model, table, step_cfg, bags)


def describe_sharded_fast_step(fast: ShardedFastStep) -> str:
    """How the sharded fast step runs, for the start-up line."""
    how = f"one CUDA graph per step after {fast.cfg.warmup_steps} warm-up steps" if fast.use_graph else f"eager on {fast.device.type}"
    return (f"sharded fast step, {how}, {fast.table.capacity} rows per peer and round, "
            f"{fast.table.distinct_capacity} distinct ids per batch, next batch located a step ahead"
            f"{compiled_note(fast.cfg.compile, fast.cfg.autotune, fast.device)}")


class ShardedFastSteps:
    """Trains batch `step` of the stream through the sharded fast step (the loop's step for
    several workers), handing it the next batch's ids to locate during this one.

    Between two graph replays the host launches four gathers (the batch straight into
    the graph's input buffers, the next batch's ids into its buffer) and nothing else:
    the step records its loss in the window itself, inside its graph, and the rows
    counters are read from the step's running totals once a window (every log_every
    steps and at the last), not added up every step."""

    def __init__(self, fast: ShardedFastStep, stream: BatchStream, window: StepRecorder, total_steps: int, log_every: int,
                 scanned: int, note: Callable[[str], None]) -> None:
        self.fast, self.table, self.stream = fast, fast.table, stream
        self.total_steps, self.log_every, self.scanned, self.note = total_steps, log_every, scanned, note
        self.fast.record = window.record
        self._window_ends = False
        self._totals_then = torch.zeros(4, dtype=torch.int64, device=self.fast.device)

    def train(self, step: int) -> None:
        """Train batch `step`; its loss (NaN if a gradient was not finite) and correct count go to the window."""
        following = step + 1 if step + 1 < self.total_steps else step  # the last step locates any batch of the shape
        if self.fast.use_graph and self.fast.steps:
            inputs, next_ids = self.fast.input_buffers(), self.fast.next_ids_buffer()
            self.stream.batch_into(step, inputs)
            self.stream.ids_into(following, next_ids)
        else:  # the first call makes the graph's buffers (or no graph: the batch as it is)
            batch = self.stream.batch(step)
            inputs, next_ids = (batch.dense, batch.ids, batch.labels), self.stream.ids(following).to(batch.ids)
        self.fast.step(*inputs, next_ids_BF=next_ids)
        self._window_ends = (step + 1) % self.log_every == 0 or step + 1 == self.total_steps
        if self._window_ends:  # every log point and the last step: no run ends having trained on wrong rows
            self.check_point()
            self._measure_ahead(step + 1)

    def _measure_ahead(self, done: int) -> None:
        """Past the measured steps' end, measure the next epoch's batches before they train, and grow
        the table if they need more (the step captures its graphs anew)."""
        if self.scanned >= self.total_steps or done + self.log_every < self.scanned:
            return
        steps = range(self.scanned, min(self.total_steps, self.scanned + self.stream.steps_per_epoch))
        t = self.table
        per_peer, distinct = measured_needs(self.stream, t.placement, t.ctx, steps)
        self.scanned = steps.stop
        capacity, distinct_capacity = with_room(per_peer, distinct, self.stream.batch_size * self.stream.rows.ids.shape[1])
        if capacity > t.capacity or distinct_capacity > (t.distinct_capacity or distinct_capacity):
            before = (t.capacity, t.distinct_capacity)
            t.grow(per_peer, distinct)
            self.note(f"steps {steps.start + 1}-{steps.stop} read more rows than the table had room for: capacities grown from "
                      f"{before[0]} to {t.capacity} rows per peer and round, {before[1]} to {t.distinct_capacity} distinct ids")

    def check_point(self) -> None:
        """Raise HetGMPError on every worker if any step read more than its room (a collective)."""
        try:
            self.fast.check_overflow()
        except HetGMPError as e:
            raise HetGMPError(f"{e}. `hetgmp train` measured the capacities on each worker's batches before it "
                              f"trained them, with {CAPACITY_ROOM - 1:.0%} to spare, and a batch needed more: resume "
                              "from the last checkpoint with --step general (its reads grow the table as they need)") from e

    def counters(self) -> dict[str, Any]:
        """The last step's counters for the window: bytes every step; rows fetched and pushed and
        mirrors read fresh (mirror_hits) or refreshed since the window began, added once as it ends (the window averages per step)."""
        sent = self.fast.bytes_per_step
        counters: dict[str, Any] = {"bytes_sent": sent, "bytes_received": sent}
        if self._window_ends:
            f = self.fast
            totals = torch.stack([f.rows_fetched, f.rows_pushed, f.mirror_reads, f.mirror_refreshes])
            fetched, pushed, mirror_reads, refreshes = totals - self._totals_then
            self._totals_then = totals
            counters.update(rows_fetched=fetched, rows_pushed=pushed, mirror_hits=mirror_reads - refreshes, mirror_refreshes=refreshes)
        return counters

    def skipped(self) -> torch.Tensor:
        """1.0 if the last step's batch was skipped (--skip-nonfinite, on every worker alike), as a device scalar."""
        return self.fast.skipped

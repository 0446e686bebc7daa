"""Several workers' steps through the sharded fast step (`hetgmp.fastpath.ShardedFastStep`).

With several workers and `--step auto` or `fast` (see
`TrainConfig.choose_step`: not with --optimizer adagrad or --skip-nonfinite)
the trainer hands each step to
ShardedFastStep: fixed-capacity exchanges and the whole step one CUDA graph
on a GPU (eager over Gloo on CPUs). It trains the rows of the run's
ShardedEmbedding in place (one RowStore, built with a staging row per
exchange slot), and that embedding does what the fast step does not:

    evaluation    ShardedEmbedding.read, after the fast step's flush (its queued pushes
                  and mirrors' pending deltas reach the owners first)
    checkpoints   ShardedEmbedding.state_dict / load_state_dict (the primaries), after
                  the same flush; a checkpoint resumes in either step
    afterwards    ShardedFastStep.resync: the mirrors as evaluation left them, nothing pending

so the table's settings and its checkpoint format are the general step's. The
dense optimizer (SGD, or Adam, capturable on CUDA) is the fast step's. The
table's: SGD, or row-wise Adagrad with each row's step at its owner
(fastpath/sharded_adagrad.py; at bound > 0 a mirror is then read under the
bound but sends its gradient every step instead of updating itself).

Capacities: every round carries C rows per peer, and the per-id passes
cover U distinct ids. Both are measured before the run on its own batches
(the first SCAN_EPOCHS epochs of this worker's stream, maxed over workers)
with CAPACITY_ROOM to spare. A batch that needs more drops rows; the step
counts such steps on the device, and every log, evaluation and checkpoint
point, and the last step, checks the count on all workers and stops the run
with the numbers (before any checkpoint could save such a step) rather than
train on or end as if nothing happened.

What the general step reports and this one does not: the per-step counts of
distinct ids, local hits and mirror hits (they would cost reductions per step).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from hetgmp.distributed import DistContext
from hetgmp.embedding import EmbeddingConfig, Placement, ShardedEmbedding
from hetgmp.errors import HetGMPError
from hetgmp.fastpath import ShardedFastStep, ShardedStepConfig
from hetgmp.fastpath.capacity import find_capacities, round_up
from hetgmp.train.config import TrainConfig
from hetgmp.train.data import BatchStream
from hetgmp.train.fast import StepRecorder, has_row_weights

SCAN_EPOCHS = 10        # epochs of batches whose capacities are measured (all of a shorter run)
CAPACITY_ROOM = 1.1     # measured capacities get 10% more, then round up (capacity.round_up)


class ShardedFastTable:
    """The run's table (`Run.emb`) when the sharded fast step trains: the ShardedEmbedding
    for evaluation and checkpoints over the rows the fast step trains (module docstring)."""

    def __init__(self, emb: ShardedEmbedding, fast: ShardedFastStep, scanned_steps: int) -> None:
        self.emb, self.fast, self.scanned_steps = emb, fast, scanned_steps
        self._flushed = False

    def check_capacity(self) -> None:
        """Raise HetGMPError on every worker if any step dropped rows (a collective)."""
        try:
            self.fast.check_overflow()
        except HetGMPError as e:
            raise HetGMPError(f"{e}. `hetgmp train` measured the capacities on the first {self.scanned_steps} batches of "
                              f"each worker with {CAPACITY_ROOM - 1:.0%} to spare, and a later batch needed more: resume "
                              "from the last checkpoint with --step general") from e

    def read(self, ids_BF: torch.Tensor) -> torch.Tensor:
        """Current rows without gradient (evaluation); a collective."""
        self.flush()
        return self.emb.read(ids_BF)

    def flush(self) -> None:
        """Every update at its owner (a collective, once until the next step); raises HetGMPError
        if any step dropped rows (a capacity too small)."""
        if not self._flushed:
            self.check_capacity()
            self.fast.flush()
            self._flushed = True

    def state_dict(self) -> dict[str, torch.Tensor]:
        self.flush()
        return self.emb.state_dict()

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        self.emb.load_state_dict(sd)
        self.fast.resync()

    def before_step(self) -> None:
        """Training goes on: take the store as evaluation and checkpoints left it."""
        if self._flushed:
            self.fast.resync()
            self._flushed = False


def measured_capacities(stream: BatchStream, placement: Placement, ctx: DistContext, steps: int) -> tuple[int, int]:
    """(C, U) over this worker's first `steps` batches, maxed over workers, with CAPACITY_ROOM."""
    owner_E = torch.as_tensor(placement.owner.astype(np.int64), device=ctx.device)
    peer, distinct = find_capacities((stream.ids(s) for s in range(steps)), owner_E, ctx.rank, ctx.world_size, multiple=1)
    ids_per_batch = stream.batch_size * stream.rows.ids.shape[1]
    return round_up(math.ceil(CAPACITY_ROOM * peer)), min(ids_per_batch, round_up(math.ceil(CAPACITY_ROOM * distinct)))


def build_sharded_fast_step(cfg: TrainConfig, model: nn.Module, table: EmbeddingConfig, placement: Placement, ctx: DistContext,
                            stream: BatchStream, total_steps: int) -> ShardedFastTable:
    """The ShardedEmbedding and the sharded fast step over its rows, with the run's optimizers."""
    scanned = min(total_steps, SCAN_EPOCHS * stream.steps_per_epoch)
    capacity, distinct = measured_capacities(stream, placement, ctx, scanned)
    step_cfg = ShardedStepConfig(
        capacity=capacity, distinct_capacity=distinct, dense_lr=cfg.lr, dense_optimizer=cfg.optimizer, amp=cfg.amp,
        compile=cfg.compile, flag_nonfinite=True, implicit_row_grad=has_row_weights(model),
        # Triton runs on a CPU only under its test interpreter: plain torch there.
        kernel="auto" if ctx.device.type == "cuda" else "torch",
    )
    emb = ShardedEmbedding(table, placement, ctx, spare=(ctx.world_size - 1) * (capacity + 1))
    return ShardedFastTable(emb, ShardedFastStep(model, table, placement, ctx, step_cfg, store=emb.store), scanned)


def describe_sharded_fast_step(fast: ShardedFastStep) -> str:
    """How the sharded fast step runs, for the start-up line."""
    how = f"one CUDA graph per step after {fast.cfg.warmup_steps} warm-up steps" if fast.use_graph else f"eager on {fast.device.type}"
    return (f"sharded fast step, {how}, {fast.cfg.capacity} rows per peer and round, "
            f"{fast.cfg.distinct_capacity} distinct ids per batch, next batch located a step ahead")


class ShardedFastSteps:
    """Trains batch `step` of the stream through the sharded fast step (the loop's step for
    several workers), handing it the next batch's ids to locate during this one.

    Between two graph replays the host launches four gathers (the batch straight into
    the graph's input buffers, the next batch's ids into its buffer) and nothing else:
    the step records its loss in the window itself, inside its graph, and the rows
    counters are read from the step's running totals once a window (every log_every
    steps and at the last), not added up every step."""

    def __init__(self, table: ShardedFastTable, stream: BatchStream, window: StepRecorder, total_steps: int, log_every: int) -> None:
        self.table, self.fast, self.stream = table, table.fast, stream
        self.total_steps, self.log_every = total_steps, log_every
        self.fast.record = window.record
        self._window_ends = False
        self._totals_then = torch.zeros(4, dtype=torch.int64, device=self.fast.device)

    def train(self, step: int) -> None:
        """Train batch `step`; its loss (NaN if a gradient was not finite) and correct count go to the window."""
        self.table.before_step()
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
            self.table.check_capacity()

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
        raise HetGMPError("the sharded fast step cannot skip batches (--skip-nonfinite takes the general step)")

"""One worker's steps through the fast step (`hetgmp.fastpath.FastStep`).

With one worker (and `--step auto` or `fast`, see `TrainConfig.choose_step`)
the trainer hands the whole step -- gather, model forward and backward, the
table's sparse update, the dense optimizer -- to FastStep: one CUDA graph per
step on a GPU, the same code run eagerly on a CPU. Everything around the step
stays as it is, because FastStep trains the trainer's own tensors in place:

    table, versions, accumulator   the LocalEmbedding's (`emb.table`, `emb.version`,
                                   `emb.acc`): evaluation reads them (`emb.read`),
                                   checkpoints save them (`emb.state_dict`) and
                                   restore them (`emb.load_state_dict` copies in place)
    model                          the trainer's; the dense optimizer is FastStep's
                                   (SGD, or Adam, capturable on CUDA) and is saved
                                   as `dense_optimizer`, as the general step's is

so a checkpoint written by either step resumes in the other (loading keeps
each optimizer's own capturable/fused flags: `checkpoint.optimizer_state_for`),
and the hyper-parameters mean the same in both: the table trains with
--sparse-lr and the embedding config's Adagrad epsilon and initial accumulator
(those of the tensors handed over), the dense layers with --lr, and a row's
version grows by its occurrences in each batch.

NaN/inf: the step returns a NaN loss when its loss or any gradient (table or
dense) is not finite (`FastStepConfig.flag_nonfinite`), so the loss window's
check at log, evaluation and checkpoint points stops the run at that step,
as the general step's guard does. With --skip-nonfinite such a batch changes
no weight instead, its loss is recorded as 0 and it is counted in
`skipped_batches`, as with the general step (`FastStepConfig.skip_nonfinite`).

Feeding: every training batch is full (BatchStream wraps a worker's shard
around its permutation), so the graph's fixed shapes always fit. When the
rows live on the training device (`data.Rows` puts them on the GPU when they
fit) the batch is drawn inside the step's graph by an `EpochCursor`: the
epoch's permutation and a cursor stay on the device, the graph picks the
rows at the cursor and advances it, and the host only copies a new
permutation in at each epoch start, so a replay is the only launch of a
step (any kernel launched between replays cost ~30 us of GPU time a step on
an H100). The step draws its batch one step ahead and sorts its ids during
the step before (`FastStepConfig.sort_ahead`), so the cursor is set for the
batch after the one trained; it also runs its sparse path on a second
stream (`overlap`). Otherwise each batch is gathered into the graph's input buffers
before the replay. Either way: no host sync, no loop over samples, each
epoch's order drawn one epoch ahead (`data.EpochOrders`).

What the general step reports and this one does not: the per-step counts of
distinct ids (they would cost a `unique` per step); the traffic counters are
zero on one worker, and are reported as such.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from hetgmp.embedding import LocalEmbedding
from hetgmp.fastpath import FastStep, FastStepConfig
from hetgmp.models.bags import Bags
from hetgmp.models.base import has_row_weights
from hetgmp.train.config import TrainConfig
from hetgmp.train.data import BatchStream


class StepRecorder(Protocol):
    """Where a step stores its (loss, correct count) on the device: the loop's StepWindow."""

    def record(self, loss: torch.Tensor, correct: torch.Tensor) -> None: ...


# One worker fetches and pushes no rows: the TRAIN line's traffic, as the general step reports it.
ONE_WORKER_TRAFFIC = {"rows_fetched": 0, "rows_pushed": 0, "mirror_hits": 0, "mirror_refreshes": 0, "bytes_sent": 0, "bytes_received": 0}


class EpochCursor:
    """The stream's batches drawn on the device (a FastStep source): batch i of an
    epoch is rows perm[(i B + j) mod n], j < B, exactly as `BatchStream.indices`."""

    def __init__(self, stream: BatchStream) -> None:
        rows, device = stream.rows, stream.rows.labels.device
        self.stream = stream
        self.perm = torch.empty(len(rows), dtype=torch.long, device=device)
        self.cursor = torch.zeros((), dtype=torch.long, device=device)
        self.offsets = torch.arange(stream.batch_size, device=device)
        self.epoch = -1

    def seek(self, step: int) -> None:
        """Before drawing batch `step`: at an epoch change, copy its permutation in and set the
        cursor. Past the run's last epoch nothing changes (a batch drawn ahead there is never
        trained, and drawing that epoch's order would cost a randperm for nothing)."""
        epoch, i = divmod(step, self.stream.steps_per_epoch)
        if epoch != self.epoch and (self.stream.epochs is None or epoch < self.stream.epochs):
            self.perm.copy_(self.stream.order(epoch))
            self.cursor.fill_(i * self.stream.batch_size)
            self.epoch = epoch

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = self.perm[(self.cursor + self.offsets) % len(self.perm)]
        self.cursor += self.stream.batch_size
        batch = self.stream.rows.take(idx)
        return batch.dense, batch.ids, batch.labels


def build_fast_step(cfg: TrainConfig, model: nn.Module, emb: LocalEmbedding, stream: BatchStream, bags: Bags | None = None) -> FastStep:
    """FastStep over `emb`'s tensors and `model`, with the run's optimizers and learning rates;
    it draws its batches itself (an EpochCursor) when the rows are on its device."""
    device = emb.device
    source = EpochCursor(stream) if stream.rows.labels.device == device else None
    fast_cfg = FastStepConfig(
        lr=cfg.sparse_lr, dense_lr=cfg.lr, dense_optimizer=cfg.optimizer, sparse_optimizer=cfg.sparse_optimizer,
        adagrad_eps=emb.config.adagrad_eps, amp=cfg.amp, compile=cfg.compile, autotune=cfg.autotune, accuracy=True, flag_nonfinite=True,
        skip_nonfinite=cfg.skip_nonfinite,
        # Both reorder the step's work, not its arithmetic (see FastStepConfig); drawing and
        # sorting one batch ahead needs the batches drawn on the device.
        overlap=True, sort_ahead=source is not None,
        # WDL's rows enter the logit linearly: the update makes their gradient from dloss/dlogit.
        implicit_row_grad=has_row_weights(model) and bags is None and not cfg.skip_nonfinite,
        # Triton runs on a CPU only under its test interpreter: plain torch there.
        kernel="auto" if device.type == "cuda" else "torch",
    )
    return FastStep(model, emb.table, fast_cfg, acc_E=emb.acc, versions_E=emb.version, source=source, bags=bags)


def describe_fast_step(fast: FastStep) -> str:
    """How the fast step runs, for the start-up line."""
    ahead = ", next batch drawn and sorted a step ahead" if fast.cfg.sort_ahead else ""
    ahead += compiled_note(fast.cfg.compile, fast.cfg.autotune, fast.device)
    if fast.use_graph:
        return f"one CUDA graph per step after {fast.cfg.warmup_steps} warm-up steps, sparse update '{fast.kernel}'{ahead}"
    return f"eager on {fast.device.type}, sparse update '{fast.kernel}'{ahead}"


def compiled_note(compile: bool, autotune: bool, device: torch.device) -> str:
    """What the start-up line says of --compile and --autotune."""
    if not compile:
        return ""
    if not autotune:
        return ", model compiled"
    return ", model compiled, matmuls autotuned" if device.type == "cuda" else ", model compiled (--autotune has no effect off a GPU)"


class FastSteps:
    """Trains batch `step` of the stream through FastStep (the loop's step for one worker)."""

    def __init__(self, fast: FastStep, stream: BatchStream, window: StepRecorder) -> None:
        self.fast = fast
        self.stream = stream
        self.cursor = fast.source if isinstance(fast.source, EpochCursor) else None
        fast.record = window.record  # the step stores its loss and correct count itself, inside its graph
        self._inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def train(self, step: int) -> None:
        """Train batch `step`; its loss (NaN for a step whose gradients were not finite,
        `flag_nonfinite`) and correct count go to the window."""
        if self.cursor is not None:
            if self.fast.cfg.sort_ahead:
                self._seek_ahead(step)
            else:
                self.cursor.seek(step)
            self.fast.step_from_source()
        elif self._inputs is None:
            batch = self.stream.batch(step)
            self.fast.step(batch.dense, batch.ids, batch.labels)
            if self.fast.use_graph:  # the buffers exist from the first call on
                self._inputs = self.fast.input_buffers()
        else:
            self.stream.batch_into(step, self._inputs)
            self.fast.step(*self._inputs)

    def _seek_ahead(self, step: int) -> None:
        """sort_ahead: the step trains batch `step`, drawn during the last one (or now, on the
        first call), and draws batch `step + 1`: the cursor is set for that one."""
        ahead = self.fast.sort_ahead()
        if not ahead.started:
            self.cursor.seek(step)
            ahead.start()
        self.cursor.seek(step + 1)

    def counters(self) -> dict[str, int]:
        return ONE_WORKER_TRAFFIC

    def skipped(self) -> torch.Tensor:
        """1.0 if the last step's batch was skipped (--skip-nonfinite), as a device scalar."""
        return self.fast.skipped

    def check_point(self) -> None:
        """Nothing to check: one worker's step reads every row it needs."""

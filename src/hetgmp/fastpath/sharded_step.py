"""The multi-worker fast step: the sharded table's stages and the model, one CUDA graph per step.

    C, U = find_capacities([ids_BF for _, ids_BF, _ in batches], owner_E, rank, P)
    step = ShardedFastStep.build(model, EmbeddingConfig(E, D, lr=0.01, bound=0), placement, ctx,
                                 ShardedStepConfig(capacity=C, distinct_capacity=U))
    for t, (dense_BI, ids_BF, labels_B) in enumerate(batches):
        loss = step.step(dense_BI, ids_BF, labels_B, next_ids_BF=batches[(t + 1) % len(batches)][1])
    step.check_overflow(); step.flush(); table_ED = step.gather_table()

or `ShardedFastStep(model, table, cfg)` over an existing ShardedTable
(hetgmp.embedding.fixed.table: the exchange, the rows and the staleness rule
live there; this module holds the step around them).

`loss` is a device tensor (no host sync). next_ids_BF is optional: given,
each step locates the next batch beside its model (the last step may pass
any ids of the batch's shape).

One step on worker r (P workers, N = B x F ids, capacity C rows per peer), its
batch located and its rows read by the step before (given next_ids_BF):

    gather        emb_BFD = local rows of the batch's ids, read in sorted order (a leaf)
    locate next   beside the model, on a second stream: sort the next batch's ids once:
                  distinct ids (at most U), their owners, local rows and slots in the
                  owners' blocks (table.locate)
    model         forward (bf16 autocast if asked), loss, backward
    write         table.write: the sparse update of the local rows, versions and mirror
                  counts, pushes into round A's records
    then, on a third stream beside the dense weights' update, the next batch's reads
                  (table.fetch: round A with this step's pushes, the owners' updates and
                  answers, round B)
    dense         one flat gradient buffer (the parameters' .grad are views of it),
                  all-reduced (SUM) while the table is written, then fused SGD or Adam

Without next_ids_BF a step locates and reads its own batch first, and its
pushes wait for the next step's round A.

Owners apply step t's pushes before they serve step t + 1's reads, so step
t's updates are in place before step t + 1 reads: bound 0 is exactly
synchronous SGD on the global batch. That is also why the rounds overlap only
the dense update, not the model: requests for step t + 1 answered during step
t would be answered before step t's pushes, and versions count updates
(sample occurrences), so a hot row fetched a step early misses a whole step's
updates, far more than a bound like 100 allows (benchmarks/staleness_floor.py).

Gradient convention (as hetgmp.train.loop's multi-worker path): each worker
back-propagates its local mean loss divided by P, dense gradients are summed
over workers and the table applies the gradients unscaled: the gradient of
the mean loss over the global batch of P x B samples. `step` returns this
worker's local mean loss.

Embedding optimizer: the table's (SGD, or row-wise Adagrad: embedding/fixed/adagrad.py);
dense optimizer: SGD or Adam. With `compile`, the model and the bookkeeping
around the rounds are compiled.

Capacity: a step whose worker reads more than C distinct ids owned by one
peer drops the excess rows (the step may not wait to grow the table); the
table counts such reads on the device and `check_overflow()` (a collective:
call it at log points and at the end) raises HetGMPError. `find_capacities`
(embedding/fixed/capacity.py) measures C (and U, the most distinct ids in a
batch, the length of every per-id pass) on the run's batches; a table that
grew between steps (ShardedTable.grow) is picked up by the next step.

On CUDA with cuda_graph=True, the first warmup_steps steps run eagerly on a
side stream (NCCL communicators come up there), the next is captured, collectives
included, and replayed from then on (captured.GraphReplay; located a step ahead,
one graph per parity of the located batch's slot); elsewhere it runs eagerly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from hetgmp.distributed import DistContext
from hetgmp.embedding.config import EmbeddingConfig
from hetgmp.embedding.fixed.capacity import round_up
from hetgmp.embedding.fixed.footprint import sharded_step_bytes
from hetgmp.embedding.memory import HIDDEN
from hetgmp.embedding.fixed.rows import Located
from hetgmp.embedding.fixed.table import ShardedTable
from hetgmp.embedding.placement import Placement
from hetgmp.errors import HetGMPError
from hetgmp.fastpath.captured import GraphReplay, beside, join
from hetgmp.fastpath.config import AMP_MODES, DENSE_OPTIMIZERS, autocast, compile_model, fast_dense_optimizer, matmul_precision
from hetgmp.fastpath.flat_grads import FlatGradients
from hetgmp.fastpath.inputs import Batch, InputBuffers
from hetgmp.fastpath.objective import correct_count, ctr_loss, nan_unless_finite, scored
from hetgmp.kernels import Rank1Grad
from hetgmp.models.bags import Bags, pool_rows
from hetgmp.models.base import CTRModel, has_row_weights
from hetgmp.kernels.gather import id_dtype


@dataclass(frozen=True)
class ShardedStepConfig:
    """How the sharded fast step trains (the table's own settings are its EmbeddingConfig).

    capacity, distinct_capacity, kernel, fused_stages: the table's, for `build` (a table
        built apart brings its own).
    capacity: C, rows per peer and round (every worker must pass the same C).
    distinct_capacity: U, the most distinct ids a batch may hold (None: the
        batch's N ids). The step's per-id passes (owners, local rows, slots,
        versions and counts) cover U ids instead of N: a Criteo batch of
        8192 x 26 ids holds about 78,000 distinct ones.
    dense_lr: learning rate of the dense weights.
    dense_optimizer: "sgd" or "adam" (capturable on CUDA; fastpath.config.dense_optimizer).
    amp: "none" or "bf16" (autocast for the model's forward; the rows are then gathered
        as bf16, and their gradient arrives as bf16, summed in fp32 by the update).
    compile: torch.compile the model and the bookkeeping around the rounds (fixed shapes).
    autotune: with compile on CUDA, the model's matmuls take the fastest of cuBLAS's and
        inductor's Triton kernels (as FastStepConfig's).
    tf32: let fp32 matmuls use TF32 tensor cores.
    cuda_graph: capture the step in a CUDA graph (CUDA only).
    warmup_steps: eager steps before the capture.
    kernel: the per-id gradient sum and the per-slot stages around the rounds: auto
        (Triton where it runs), triton, torch (see hetgmp.kernels.sparse_update and
        triton_rows.py; 'reference' syncs, so it is refused).
    fused_stages: with the Triton kernel, the per-slot stages too run as one Triton
        kernel each (triton_rows.py); False keeps them in torch (compiled with `compile`).
    read_ahead: given the next batch's ids, read its rows at the end of the step, beside
        the dense update; False: at the start of its own step (both rounds on the
        critical path).
    implicit_row_grad: for a model whose rows reach the logit through one linear layer
        (one with `row_weights()`, as WDL), the table's update computes each occurrence's
        gradient as dloss/dlogit_b x w_f (kernels.Rank1Grad): backward never writes the
        rows' [B F, D] gradient and the update does not read it (as FastStepConfig's).
    flag_nonfinite: the step returns a NaN loss when the rows' or the dense
        weights' gradient holds a NaN or inf (one fused norm), as FastStep does.
    skip_nonfinite: a worker whose loss or gradients hold a NaN or inf contributes nothing
        to the step, as the trainer's general step (train/nonfinite.py): its rows' and dense
        gradients are zeroed before they leave it (rows' versions still count the batch), its
        returned loss is 0 and `skipped` (a device scalar) is 1.0; the others go on. The
        workers' count of bad batches rides in the dense all-reduce: when all were bad, Adam
        skips through found_inf. Not with implicit_row_grad.
    """

    capacity: int
    distinct_capacity: int | None = None
    dense_lr: float = 0.01
    dense_optimizer: str = "sgd"
    amp: str = "none"
    compile: bool = False
    autotune: bool = False
    tf32: bool = False
    cuda_graph: bool = True
    warmup_steps: int = 3
    kernel: str = "auto"
    fused_stages: bool = True
    read_ahead: bool = True
    implicit_row_grad: bool = False
    flag_nonfinite: bool = False
    skip_nonfinite: bool = False

    def check(self, table: EmbeddingConfig, world: int) -> None:
        """Raise HetGMPError naming every setting this step cannot train with."""
        bad = []
        if self.dense_optimizer not in DENSE_OPTIMIZERS:
            bad.append(f"dense_optimizer={self.dense_optimizer!r} (--optimizer): choose {' or '.join(DENSE_OPTIMIZERS)}")
        if self.amp not in AMP_MODES:
            bad.append(f"amp={self.amp!r} (choose {', '.join(AMP_MODES)})")
        if self.capacity < 1:
            bad.append(f"capacity={self.capacity} (at least 1; capacity.find_capacities measures it)")
        if self.distinct_capacity is not None and self.distinct_capacity < 1:
            bad.append(f"distinct_capacity={self.distinct_capacity} (at least 1, or None; capacity.find_capacities measures it)")
        if self.warmup_steps < 1:
            bad.append(f"warmup_steps={self.warmup_steps} (at least 1: communicators start before the capture)")
        if self.autotune and not self.compile:
            bad.append("autotune=True needs compile=True (it picks the compiled model's matmul kernels)")
        if self.kernel == "reference":
            bad.append("kernel='reference' (it waits for the device: choose auto, triton or torch)")
        if world < 2:
            bad.append(f"world size {world}: the sharded step needs 2 or more workers; use FastStep on one")
        if self.implicit_row_grad and self.skip_nonfinite:
            bad.append("implicit_row_grad=True with skip_nonfinite=True (a skipped step must zero the rows' gradient first)")
        if bad:
            raise HetGMPError("sharded fast step: " + "; ".join(bad))


def _high_priority(backend: str) -> object | None:
    """NCCL options for a high-priority stream: the dense all-reduce is launched before the
    table's update, whose blocks otherwise fill the GPU and hold it back (on an H100 pair it
    started as the update ended; on this stream it runs beside it)."""
    nccl = getattr(dist, "ProcessGroupNCCL", None)
    if backend != "nccl" or nccl is None:
        return None
    options = nccl.Options()
    options.is_high_priority_stream = True
    return options


class ShardedFastStep:
    """One worker's part: its share of the table (a ShardedTable, trained in place), the model
    (data parallel) and the dense optimizer.

    Counters, device tensors summed over steps (read them when you like):
    `rows_fetched` (rows answered to this worker), `rows_pushed` (pushes it
    sent), `mirror_refreshes` and `mirror_reads` (mirrors read, whether
    fresh or refreshed); `correct` holds the last batch's correct predictions; `steps`
    counts calls on the host and `bytes_per_step` is what a step sends other
    workers (fixed: both rounds and the dense all-reduce). `record`, if set,
    is called with (loss, correct) at the end of every step, inside its graph
    (the trainer's StepWindow.record: no kernel between two replays).

    The table evaluates and checkpoints the rows it trains (`read`, `flush`,
    `state_dict`); a table that grew (ShardedTable.grow) is picked up at the next step,
    which then captures its graphs anew.
    """

    def __init__(self, model: nn.Module, table: ShardedTable, cfg: ShardedStepConfig, bags: Bags | None = None) -> None:
        cfg.check(table.config, table.world)
        ctx = table.ctx
        self.table, self.cfg, self.ctx, self.device = table, cfg, ctx, ctx.device
        self.rank, self.world = ctx.rank, ctx.world_size
        # Its own group: a caller's collectives between steps cannot interleave with the step's.
        self.group = dist.new_group(backend=ctx.backend, pg_options=_high_priority(ctx.backend))
        self.model, self.bags = model, bags
        if cfg.implicit_row_grad and (not has_row_weights(model) or bags is not None):
            raise HetGMPError(f"implicit_row_grad needs a model whose rows reach the logit through one linear layer "
                              f"(with row_weights(), as WDL) and one row per field; {type(model).__name__} "
                              f"{'has none' if bags is None else 'pools bags'}: leave implicit_row_grad off")
        self._logit_grad: torch.Tensor | None = None  # implicit_row_grad: dloss/dlogit of the step
        # Eagerly the bookkeeping around the rounds is a few hundred small kernels (1-3 us each on an
        # H100); compiled, inductor fuses them.
        # The loss in the model's (compiled) function (objective.scored), but with implicit_row_grad.
        inside = not cfg.implicit_row_grad
        pooled = lambda dense_BI, rows_BLD, ids_BL, labels_B: scored(  # noqa: E731
            model(dense_BI, pool_rows(bags, rows_BLD, ids_BL)), labels_B, inside)
        self._forward = compile_model(pooled, cfg.compile, cfg.autotune, ctx.device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # skip_nonfinite: the spare element sums the workers' count of non-finite gradients.
        self.flat = FlatGradients(self.params, ctx.device)
        self.optimizer, self._dense_step = fast_dense_optimizer(self.params, cfg.dense_optimizer, cfg.dense_lr, ctx.device,
                                                                cfg.skip_nonfinite, cfg.compile)
        self.skipped = torch.zeros((), device=ctx.device) if cfg.skip_nonfinite else None
        self._all_skipped = torch.zeros((), device=ctx.device)  # skip_nonfinite: 1.0 when every worker's batch was bad
        if cfg.skip_nonfinite and self.optimizer.defaults.get("fused"):
            self.optimizer.found_inf = self._all_skipped  # fused Adam reads it on the device and skips its step
        self.correct = torch.zeros((), dtype=torch.int64, device=ctx.device)
        self.record: Callable[[torch.Tensor, torch.Tensor], None] | None = None
        self.steps = 0
        self.use_graph = cfg.cuda_graph and ctx.device.type == "cuda"
        self._inputs = InputBuffers(ctx.device, None, id_dtype(table.config.num_ids), None)
        self._next_ids = InputBuffers(ctx.device, id_dtype(table.config.num_ids))
        self._replay = GraphReplay(ctx.device, self.use_graph, cfg.warmup_steps)
        # Locating a step ahead (step's next_ids_BF): two slots, the current batch's and the next's,
        # and a stream beside.
        self._slots: tuple[Located, Located] | None = None
        self._parity = 0
        self._read_ahead_at: int | None = None  # table.staging_epoch after the last step's read ahead (None: none)
        self._generation = table.generation
        self._ahead_stream = torch.cuda.Stream(ctx.device) if ctx.device.type == "cuda" else None
        # Reading a step ahead: the rounds on a third stream, beside the dense update.
        self._exchange_stream = torch.cuda.Stream(ctx.device) if ctx.device.type == "cuda" else None

    @classmethod
    def build(cls, model: nn.Module, config: EmbeddingConfig, placement: Placement, ctx: DistContext, cfg: ShardedStepConfig,
              bags: Bags | None = None) -> ShardedFastStep:
        """A new ShardedTable with the step config's capacities and kernels, and the step over it."""
        cfg.check(config, ctx.world_size)
        table = ShardedTable(config, placement, ctx, cfg.capacity, cfg.distinct_capacity,
                             cfg.kernel, cfg.fused_stages, cfg.compile)
        return cls(model, table, cfg, bags)

    # ---- counters (the table's) ----

    @property
    def rows_fetched(self) -> torch.Tensor:
        return self.table.totals.fetch[0]

    @property
    def mirror_refreshes(self) -> torch.Tensor:
        return self.table.totals.fetch[1]

    @property
    def mirror_reads(self) -> torch.Tensor:
        return self.table.totals.fetch[2]

    @property
    def rows_pushed(self) -> torch.Tensor:
        return self.table.totals.pushed

    @property
    def bytes_per_step(self) -> int:
        return self.table.exchange.bytes_to_others() + self.flat.bytes_per_worker(self.world)

    # ---- training ----

    def step(self, dense_BI: torch.Tensor, ids_BF: torch.Tensor, labels_B: torch.Tensor,
             next_ids_BF: torch.Tensor | None = None) -> torch.Tensor:
        """Train on this worker's batch; returns its mean loss as a device tensor (no sync). A collective.

        next_ids_BF: the ids of the batch the next call trains on. This step then locates them
        (sorts them, finds their owners and slots) beside its model, and reads their rows
        (both rounds, carrying this step's pushes) beside its dense weights' update; the next
        call trusts that its batch has them. Pass them on every call or on none."""
        t = self.table
        if t.generation != self._generation:  # the table grew: new buffers, so new graphs and slots
            self._replay.release()
            self._slots, self._parity, self._read_ahead_at = None, 0, None
            self._generation = t.generation
        self.steps += 1
        ahead = next_ids_BF is not None
        read_ahead = self._read_ahead_at is not None and self._read_ahead_at == t.staging_epoch
        if read_ahead and not ahead:
            # This batch's rows were read with the last step's pushes; reading it again would send them twice.
            raise HetGMPError("ShardedFastStep.step: the last call read this batch ahead (it was given next_ids_BF), "
                              "so this one must be given the ids of the batch after it too (any batch of the shape at "
                              "the last step), or call the table's flush() in between")
        if ahead and self._slots is None:
            # The first batch, located before any capture, and a second slot for the batch after.
            first = t.locate(ids_BF.reshape(-1).to(self.device))
            self._slots = (first, copy.deepcopy(first))
        parity, self._parity = self._parity, self._parity ^ ahead
        read_next = ahead and self.cfg.read_ahead
        if read_next and not read_ahead:  # the first step, or the first after a flush: read the batch first
            t.fetch(self._slots[parity])
        reads, epoch = t.reads, t.staging_epoch
        if not self.use_graph:
            loss = self._train(dense_BI, ids_BF, labels_B, next_ids_BF, parity)
        else:
            inputs = self._inputs.load(dense_BI, ids_BF, labels_B)
            next_ids = self._next_ids.load(next_ids_BF)[0] if ahead else None
            loss = self._replay(("ahead", parity) if ahead else "step", lambda: self._train(*inputs, next_ids, parity))
        t.after_fused_step(reads + 1, epoch + 1, queued=not read_next)  # a replay runs no Python: set what _train's calls set
        self._read_ahead_at = t.staging_epoch if read_next else None
        return loss

    def input_buffers(self) -> Batch:
        """The graph's (dense_BI, ids_BF, labels_B) buffers (CUDA graph only, after the first step)."""
        return self._inputs.get()

    def next_ids_buffer(self) -> torch.Tensor:
        """The graph's next_ids_BF buffer (CUDA graph only, after the first step given next ids)."""
        return self._next_ids.get()[0]

    def _train(self, dense_BI: torch.Tensor, ids_BF: torch.Tensor, labels_B: torch.Tensor,
               next_ids_BF: torch.Tensor | None = None, parity: int = 0) -> torch.Tensor:
        """One step; with next_ids_BF, the batch was located in slot `parity` and its rows read
        by the step before, and this one does both for the next batch into the other slot
        (one CUDA graph per parity)."""
        B, nf = ids_BF.shape
        t = self.table
        ahead = next_ids_BF is not None
        read_next = ahead and self.cfg.read_ahead
        at = self._slots[parity] if ahead else t.locate(ids_BF.reshape(-1))
        if not read_next:
            t.fetch(at)
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float32  # the dtype autocast would cast them to
        emb_BFD = t.rows(at, dtype).view(B, nf, -1)
        implicit = self.cfg.implicit_row_grad
        if not implicit:
            emb_BFD.requires_grad_()
        if ahead:
            with beside(self._ahead_stream, self.device):
                t.locate_into(self._slots[1 - parity], next_ids_BF.reshape(-1))
        with matmul_precision(self.cfg, self.device):
            with autocast(self.cfg, self.device):
                logits_B, loss = self._forward(dense_BI, emb_BFD, ids_BF, labels_B)
            if implicit:
                logits_B.register_hook(self._keep_logit_grad)
                loss = ctr_loss(logits_B, labels_B)
            self.correct.copy_(correct_count(logits_B, labels_B))
            self.flat.point()
            (loss / self.world).backward()
        # The rows' gradient, or what it is made of: dloss/dlogit and the row weights as this
        # forward used them (the dense optimizer changes them only after the update below).
        grad_ND = (Rank1Grad(self._logit_grad, self.model.row_weights().detach()) if implicit
                   else emb_BFD.grad.reshape(B * nf, -1).contiguous())
        loss = loss.detach()
        if self.cfg.skip_nonfinite:
            loss, grad_ND = self._skip_if_nonfinite(loss, grad_ND)
        work = self.flat.all_reduce(self.group, self.world)
        t.write(at, grad_ND)
        if ahead:  # (a capture may wait only on streams it forked)
            join(self._ahead_stream, self.device)
        if read_next:  # the next batch's rounds (this step's pushes in round A) beside the dense weights' update
            with beside(self._exchange_stream, self.device):
                t.fetch(self._slots[1 - parity])
        work.wait()
        if self.cfg.skip_nonfinite and self.optimizer.defaults.get("fused"):
            self._all_skipped.copy_(self.flat.spare[0] >= self.world)
        elif self.cfg.flag_nonfinite:  # after the wait: a worker's bad gradient reaches every worker's flat sum
            # (dloss/dlogit finite with the dense weights' gradients makes the rows' finite)
            loss = nan_unless_finite(loss, [self._logit_grad if implicit else grad_ND, self.flat.buffer])
        self._dense_step()
        if self.record is not None:
            self.record(loss, self.correct)
        if read_next:
            join(self._exchange_stream, self.device)
        return loss

    def _skip_if_nonfinite(self, loss: torch.Tensor, grad_ND: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Before anything leaves this worker: (loss or 0, the rows' gradient or zeros), the dense
        gradients zeroed in place and this worker's verdict in the flat buffer's last element."""
        bad = ~torch.isfinite(nan_unless_finite(loss, [grad_ND, self.flat.buffer]))
        self.flat.buffer.masked_fill_(bad, 0.0)
        self.flat.spare.copy_(bad.float().reshape(1))
        self.skipped.copy_(bad.reshape(()))
        return loss.masked_fill(bad, 0.0), grad_ND.masked_fill(bad, 0.0)

    def _keep_logit_grad(self, grad_B: torch.Tensor) -> None:
        """The logits' gradient hook (implicit_row_grad)."""
        self._logit_grad = grad_B

    # ---- between steps (collectives, eager, may sync) ----

    def check_overflow(self) -> None:
        """Raise HetGMPError on every worker if any worker's read of a batch dropped rows (a capacity
        too small). Reading a step ahead, the last step's read is the next batch's, not yet trained."""
        reads, most_per_peer, most_distinct = self.table.check_overflow()
        if reads:
            t = self.table
            raise HetGMPError(
                f"the sharded fast step dropped rows reading {reads} batch(es), which train on wrong rows: a worker read "
                f"{most_per_peer} distinct ids owned by one peer in one step (capacity C={t.capacity} rows per peer) "
                f"and {most_distinct} distinct ids in one batch (distinct_capacity={t.distinct_capacity}). "
                f"Build ShardedStepConfig with capacity >= {round_up(most_per_peer)} and distinct_capacity >= "
                f"{round_up(most_distinct)} (hetgmp.embedding.fixed.capacity.find_capacities measures both on the run's batches)"
            )

    def flush(self) -> None:
        """Every update at its owner (the table's flush); the next step reads its batch anew."""
        self.table.flush()

    def release(self) -> None:
        """Destroy the step's CUDA graphs, which captured its collectives: call it before the
        process group is destroyed (captured.GraphReplay.release). A later step captures anew."""
        self._replay.release()

    def gather_table(self) -> torch.Tensor:
        """The full (E, D) table from every worker's primaries, on every worker (flush() first)."""
        return self.table.gather_table()

    def gather_versions(self) -> torch.Tensor:
        """The primaries' versions, int64 [E], on every worker (flush() first)."""
        return self.table.gather_versions()

    def memory_bytes(self, batch: int, num_fields: int, num_dense: int) -> dict[str, int]:
        """This worker's device memory by the documented formula (embedding/fixed/footprint.py), term by term."""
        t, s = self.table, self.table.store
        width = self.model.layer_width() if isinstance(self.model, CTRModel) else HIDDEN
        return sharded_step_bytes(t.config, self.world, s.num_primaries, s.num_mirrors, t.capacity, t.distinct_capacity,
                                  batch, num_fields, num_dense, self.flat.buffer.numel(), self.cfg.amp == "bf16",
                                  width, None if self.bags is None else self.bags.columns)

    @property
    def max_lag_served(self) -> int:
        """Largest lag (in updates) of a mirror read served as fresh by this worker as owner."""
        return self.table.max_lag_served

    @property
    def lagging_reads_served(self) -> int:
        """Mirror reads this worker served as fresh while the copy lagged (by at most the bound)."""
        return self.table.lagging_reads_served

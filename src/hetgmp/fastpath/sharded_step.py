"""The multi-worker fast step: a sharded table with fixed shapes, one CUDA graph per step.

    C, U = find_capacities([ids_BF for _, ids_BF, _ in batches], owner_E, rank, P)
    step = ShardedFastStep(model, EmbeddingConfig(E, D, lr=0.01, bound=0), placement, ctx,
                           ShardedStepConfig(capacity=C, distinct_capacity=U))
    for t, (dense_BI, ids_BF, labels_B) in enumerate(batches):
        loss = step.step(dense_BI, ids_BF, labels_B, next_ids_BF=batches[(t + 1) % len(batches)][1])
    step.check_overflow(); step.flush(); table_ED = step.gather_table()

`loss` is a device tensor (no host sync). next_ids_BF is optional: given,
each step locates the next batch beside its model (the last step may pass
any ids of the batch's shape).

One step on worker r (P workers, N = B x F ids, capacity C rows per peer), its
batch located and its rows read by the step before (given next_ids_BF):

    gather        emb_BFD = local rows of the batch's ids, read in sorted order (a leaf)
    locate next   beside the model, on a second stream: sort the next batch's ids once:
                  distinct ids (at most U), their owners, local rows and slots in the
                  owners' blocks (sharded_rows.locate, capacity.py)
    model         forward (bf16 autocast if asked), loss, backward
    update        the fused sparse update of the local table: own rows, mirrors and
                  staging rows alike (the one-GPU step's kernels)
    write         versions and mirror counts; pushes (staging row - answer, or a due
                  mirror's unpushed delta) into round A's records
    then, on a third stream beside the dense weights' update, the next batch's reads:
      round A     one all_to_all_single, fixed splits: to every peer C + 1 records of
                  (the next batch's request, this step's push) (fixed_exchange.py)
      owner       add the received pushes, THEN answer outdated requests
      round B     one all_to_all_single: the answers, at the requests' slots; each is
                  copied to its slot's staging row or refreshes its mirror
    dense         one flat gradient buffer (the parameters' .grad are views of it),
                  all-reduced (SUM) while the table is written, then fused SGD or Adam

The per-slot stages (requests, the owner's, the receive, the write) are one
Triton kernel each where Triton runs (triton_rows.py). Without next_ids_BF a
step locates and reads its own batch first, and its pushes wait for the next
step's round A.

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

Embedding optimizer: SGD (the fused update: -lr x the gradient summed over
the id's occurrences in the worker's batch), or row-wise Adagrad (each row's
step at its owner, one round late, on every worker's gradient summed:
sharded_adagrad.py); dense optimizer: SGD or Adam. With
`compile`, the model and the bookkeeping around the rounds are compiled.

Capacity: a step whose worker reads more than C distinct ids owned by one
peer drops the excess rows; the step counts such steps on the device and
`check_overflow()` (a collective: call it at log points and at the end)
raises HetGMPError. `capacity.find_capacities` measures C (and U, the most
distinct ids in a batch, the length of every per-id pass) on the run's batches.

On CUDA with cuda_graph=True, the first warmup_steps steps run eagerly on a
side stream (NCCL communicators come up there), the next is captured, collectives
included, and replayed from then on (captured.GraphReplay; located a step ahead,
one graph per parity of the located batch's slot); elsewhere it runs eagerly.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from hetgmp.distributed import DistContext
from hetgmp.embedding.config import EmbeddingConfig
from hetgmp.embedding.exchange import gather_primaries
from hetgmp.embedding.placement import Placement
from hetgmp.embedding.store import RowStore
from hetgmp.errors import HetGMPError
from hetgmp.fastpath.capacity import round_up
from hetgmp.fastpath.captured import GraphReplay, beside, join
from hetgmp.fastpath.config import AMP_MODES, DENSE_OPTIMIZERS, autocast, dense_optimizer, matmul_precision
from hetgmp.fastpath.fixed_exchange import FixedExchange
from hetgmp.fastpath.footprint import sharded_step_bytes
from hetgmp.fastpath.inputs import Batch, InputBuffers
from hetgmp.fastpath.sharded_adagrad import OwnGradients, apply_gradients, flush_gradients, gradient_sums, new_own_gradients, queue_gradients
from hetgmp.fastpath.sharded_rows import Located, answer, flush_pending, index_add, locate, locate_into, receive, request, serve, write
from hetgmp.fastpath.step import nan_unless_finite
from hetgmp.kernels import Rank1Grad, new_scratch, resolve_backend, sparse_update
from hetgmp.kernels.gather import gather_rows, id_dtype


@dataclass(frozen=True)
class ShardedStepConfig:
    """How the sharded fast step trains (the table's own settings are its EmbeddingConfig).

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
    """

    capacity: int
    distinct_capacity: int | None = None
    dense_lr: float = 0.01
    dense_optimizer: str = "sgd"
    amp: str = "none"
    compile: bool = False
    tf32: bool = False
    cuda_graph: bool = True
    warmup_steps: int = 3
    kernel: str = "auto"
    fused_stages: bool = True
    read_ahead: bool = True
    implicit_row_grad: bool = False
    flag_nonfinite: bool = False

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
        if self.kernel == "reference":
            bad.append("kernel='reference' (it waits for the device: choose auto, triton or torch)")
        if world < 2:
            bad.append(f"world size {world}: the sharded step needs 2 or more workers; use FastStep on one")
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
    """One worker's part: its rows (RowStore), the model (data parallel) and its optimizer.

    Counters, device tensors summed over steps (read them when you like):
    `rows_fetched` (rows answered to this worker), `rows_pushed` (pushes it
    queued), `mirror_refreshes` and `mirror_reads` (mirrors read, whether
    fresh or refreshed); `correct` holds the last batch's correct predictions; `steps`
    counts calls on the host and `bytes_per_step` is what a step sends other
    workers (fixed: both rounds and the dense all-reduce). `record`, if set,
    is called with (loss, correct) at the end of every step, inside its graph
    (the trainer's StepWindow.record: no kernel between two replays).

    `store`: train the rows of an existing RowStore in place (built with
    `spare` = the exchange's slots, (P - 1)(C + 1)), e.g. a ShardedEmbedding's,
    which then evaluates and checkpoints them (see flush and resync).
    """

    def __init__(self, model: nn.Module, table: EmbeddingConfig, placement: Placement, ctx: DistContext, cfg: ShardedStepConfig,
                 store: RowStore | None = None) -> None:
        cfg.check(table, ctx.world_size)
        placement.validate(table.num_ids, ctx.world_size)
        self.table, self.cfg, self.ctx, self.device = table, cfg, ctx, ctx.device
        self.rank, self.world = ctx.rank, ctx.world_size
        # Its own group: a caller's collectives between steps cannot interleave with the step's.
        self.group = dist.new_group(backend=ctx.backend, pg_options=_high_priority(ctx.backend))
        self.exchange = FixedExchange(self.world, self.rank, cfg.capacity, table.dim, ctx.device, self.group)
        # A staging row per exchange slot after the sink, and each mirror's base (sharded_rows).
        if store is not None and store.spare != self.exchange.slots:
            raise HetGMPError(f"the store has {store.spare} spare rows; the sharded fast step needs one per exchange slot, "
                              f"(P - 1)(C + 1) = {self.exchange.slots}: build it with spare={self.exchange.slots}")
        self.store = store or RowStore(table, placement, ctx.rank, ctx.device, spare=self.exchange.slots)
        self.base = self.store.rows.new_zeros(self.store.num_mirrors + self.exchange.slots, table.dim)
        self._batch_read = False  # whether the step before read the current batch's rows (read ahead)
        self.resync()
        self.model = model
        if cfg.implicit_row_grad and not hasattr(model, "row_weights"):
            raise HetGMPError(f"implicit_row_grad needs a model whose rows reach the logit through one linear layer "
                              f"(with row_weights(), as WDL); {type(model).__name__} has none: leave implicit_row_grad off")
        self._logit_grad: torch.Tensor | None = None  # implicit_row_grad: dloss/dlogit of the step
        # Eagerly the bookkeeping around the rounds is a few hundred small kernels (1-3 us each on an
        # H100); compiled, inductor fuses them.
        compiled = (lambda fn: torch.compile(fn, dynamic=False)) if cfg.compile else (lambda fn: fn)
        self._forward = compiled(model)
        self._locate, self._locate_into = compiled(locate), compiled(locate_into)
        self.kernel = resolve_backend(cfg.kernel, ctx.device)
        # The per-slot stages: one Triton kernel each where Triton runs (triton_rows.py), else torch.
        fused = self.kernel == "triton" and cfg.fused_stages
        stages = importlib.import_module("hetgmp.fastpath.triton_rows") if fused else None
        pick = (lambda fn: getattr(stages, fn.__name__)) if stages else compiled
        self._request, self._answer, self._serve, self._receive, self._write = map(pick, (request, answer, serve, receive, write))
        self._queue = compiled(queue_gradients)
        # Row-wise Adagrad (sharded_adagrad.py): the per-id gradient sums, made at the first step (U known then).
        self.own: OwnGradients | None = None
        self._scratch: torch.Tensor | None = None  # the Triton Adagrad kernel's, for the owner's step
        self._add = torch.compiler.disable(index_add) if cfg.compile else index_add  # see sharded_rows.index_add
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.flat_grad = torch.zeros(sum(p.numel() for p in self.params), device=ctx.device)
        self.optimizer = dense_optimizer(self.params, cfg.dense_optimizer, cfg.dense_lr, ctx.device)
        zeros = lambda n: torch.zeros(n, dtype=torch.int64, device=ctx.device)  # noqa: E731
        self._fetch_counts = zeros(3)  # receive's (rows answered, mirrors refreshed, mirrors read)
        self.rows_fetched, self.mirror_refreshes, self.mirror_reads = self._fetch_counts.unbind()
        self.rows_pushed, self.correct = zeros(()), zeros(())
        self.record: Callable[[torch.Tensor, torch.Tensor], None] | None = None
        self._lag = zeros(2)            # (max lag of a fresh read served, fresh reads served with lag > 0)
        self._overflow = zeros(3)       # (batch reads that dropped rows, most ids one peer was asked for, most distinct ids)
        self.steps = 0
        self.reads = 0  # both rounds for a batch: one a step, and one more before the first step read ahead
        allreduce_bytes = 2 * (self.world - 1) * self.flat_grad.numel() * 4 // self.world
        self.bytes_per_step = self.exchange.bytes_to_others() + allreduce_bytes
        self.use_graph = cfg.cuda_graph and ctx.device.type == "cuda"
        self._inputs = InputBuffers(ctx.device, None, id_dtype(table.num_ids), None)
        self._next_ids = InputBuffers(ctx.device, id_dtype(table.num_ids))
        self._replay = GraphReplay(ctx.device, self.use_graph, cfg.warmup_steps)
        # Locating a step ahead (step's next_ids_BF): two slots, the current batch's and the next's,
        # and a stream beside.
        self._slots: tuple[Located, Located] | None = None
        self._parity = 0
        self._ahead_stream = torch.cuda.Stream(ctx.device) if ctx.device.type == "cuda" else None
        # Reading a step ahead: the rounds on a third stream, beside the dense update.
        self._exchange_stream = torch.cuda.Stream(ctx.device) if ctx.device.type == "cuda" else None

    # ---- training ----

    def step(self, dense_BI: torch.Tensor, ids_BF: torch.Tensor, labels_B: torch.Tensor,
             next_ids_BF: torch.Tensor | None = None) -> torch.Tensor:
        """Train on this worker's batch; returns its mean loss as a device tensor (no sync). A collective.

        next_ids_BF: the ids of the batch the next call trains on. This step then locates them
        (sorts them, finds their owners and slots) beside its model, and reads their rows
        (both rounds, carrying this step's pushes) beside its dense weights' update; the next
        call trusts that its batch has them. Pass them on every call or on none."""
        self.steps += 1
        ahead = next_ids_BF is not None
        if self._batch_read and not ahead:
            # This batch's rows were read with the last step's pushes; reading it again would send them twice.
            raise HetGMPError("ShardedFastStep.step: the last call read this batch ahead (it was given next_ids_BF), "
                              "so this one must be given the ids of the batch after it too (any batch of the shape at "
                              "the last step), or call flush() and resync() in between")
        if ahead and self._slots is None:
            # The first batch, located before any capture, and a second slot for the batch after.
            first = self._locate_ids(ids_BF)
            self._slots = (first, copy.deepcopy(first))
        parity, self._parity = self._parity, self._parity ^ ahead
        if ahead and self.cfg.read_ahead:
            self._allocate_owner_state(self._slots[parity])
            if not self._batch_read:  # the first step, or the first after flush/resync: read the batch first
                self._read(self._slots[parity], ids_BF.numel())
                self.reads += 1
            self._batch_read = True
        self.reads += 1
        if not self.use_graph:
            return self._train(dense_BI, ids_BF, labels_B, next_ids_BF, parity)
        inputs = self._inputs.load(dense_BI, ids_BF, labels_B)
        next_ids = self._next_ids.load(next_ids_BF)[0] if ahead else None
        return self._replay(("ahead", parity) if ahead else "step", lambda: self._train(*inputs, next_ids, parity))

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
        ahead = next_ids_BF is not None
        read_next = ahead and self.cfg.read_ahead
        at = self._slots[parity] if ahead else self._locate_ids(ids_BF)
        if not read_next:
            self._allocate_owner_state(at)
            self._read(at, ids_BF.numel())
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float32  # the dtype autocast would cast them to
        emb_BFD = gather_rows(self.store.rows, at.order, dtype, use_triton=self.kernel == "triton").view(B, nf, -1)
        implicit = self.cfg.implicit_row_grad
        if not implicit:
            emb_BFD.requires_grad_()
        if ahead:
            with beside(self._ahead_stream, self.device):
                self._locate_into(self._slots[1 - parity], self.store, self.exchange, next_ids_BF.reshape(-1), self.rank,
                                  self.table.num_ids, self.cfg.distinct_capacity)
        with matmul_precision(self.cfg, self.device):
            with autocast(self.cfg, self.device):
                logits_B = self._forward(dense_BI, emb_BFD)
            if implicit:
                logits_B.register_hook(self._keep_logit_grad)
            loss = F.binary_cross_entropy_with_logits(logits_B.float(), labels_B.float())
            self.correct.copy_(((logits_B.detach() > 0) == (labels_B > 0.5)).sum())
            self._point_grads_at_flat()
            (loss / self.world).backward()
        work = dist.all_reduce(self.flat_grad, group=self.group, async_op=True)
        # The rows' gradient, or what it is made of: dloss/dlogit and the row weights as this
        # forward used them (the dense optimizer changes them only after the update below).
        grad_ND = (Rank1Grad(self._logit_grad, self.model.row_weights().detach()) if implicit
                   else emb_BFD.grad.reshape(B * nf, -1).contiguous())
        if self.table.adagrad:
            gradient_sums(self.own, at, grad_ND, self.kernel)
            self.rows_pushed += self._queue(self.store, at, self.exchange, self.own)
        else:
            sparse_update(self.store.rows, at.local_N, grad_ND, self.table.lr, backend=self.kernel, order=at.order)
            self._write(self.store, at, self.table.bound, self.exchange, self.base, self.rows_pushed, self._add)
        if ahead:  # (a capture may wait only on streams it forked)
            join(self._ahead_stream, self.device)
        if read_next:  # the next batch's rounds (this step's pushes in round A) beside the dense weights' update
            with beside(self._exchange_stream, self.device):
                self._read(self._slots[1 - parity], ids_BF.numel())
        work.wait()
        loss = loss.detach()
        if self.cfg.flag_nonfinite:  # after the wait: a worker's bad gradient reaches every worker's flat sum
            # (dloss/dlogit finite with the dense weights' gradients makes the rows' finite)
            loss = nan_unless_finite(loss, [self._logit_grad if implicit else grad_ND, self.flat_grad])
        self.optimizer.step()
        if self.record is not None:
            self.record(loss, self.correct)
        if read_next:
            join(self._exchange_stream, self.device)
        return loss

    def _keep_logit_grad(self, grad_B: torch.Tensor) -> None:
        """The logits' gradient hook (implicit_row_grad)."""
        self._logit_grad = grad_B

    def _allocate_owner_state(self, at: Located) -> None:
        """Row-wise Adagrad's per-id sums and the owner's scratch, at the first step (eager: before any capture)."""
        if self.table.adagrad and self.own is None:
            self.own = new_own_gradients(len(at.ids.uids_N), self.table.dim, self.device)
            if self.kernel == "triton":  # the owner's step sorts U kept and R pushed gradients
                self._scratch = new_scratch(len(at.ids.uids_N) + self.exchange.slots, self.table.dim, self.device)

    def _locate_ids(self, ids_BF: torch.Tensor) -> Located:
        return self._locate(self.store, self.exchange, ids_BF.reshape(-1), self.rank, self.table.num_ids, self.cfg.distinct_capacity)

    def _read(self, at: Located, num_ids: int) -> None:
        """Both rounds for the located batch; afterwards all its rows are in the local table."""
        s, ex = self.store, self.exchange
        self._request(s, at, ex, self._overflow, self.cfg.capacity, self.cfg.distinct_capacity or num_ids)
        ex.round_a()
        if self.table.adagrad:  # one optimizer step per row on everyone's gradient, then the answers
            apply_gradients(s, ex, self.own, self.table, self._add, self.kernel, self._scratch)
            self._serve(s, ex, self.table.bound, self._lag)
        else:
            self._answer(s, ex, self.table.bound, self._lag, self._add)
        ex.round_b()
        self._receive(s, at, ex, self.base, self._fetch_counts)

    def _point_grads_at_flat(self) -> None:
        """Zero the flat buffer and make every .grad a view of it, so backward accumulates
        straight into the buffer the all-reduce sends (no copies in or out)."""
        self.flat_grad.zero_()
        offset = 0
        for p in self.params:
            p.grad = self.flat_grad[offset : offset + p.numel()].view_as(p)
            offset += p.numel()

    # ---- between steps (collectives, eager, may sync) ----

    def check_overflow(self) -> None:
        """Raise HetGMPError on every worker if any worker's read of a batch dropped rows (a capacity
        too small). Reading a step ahead, the last step's read is the next batch's, not yet trained."""
        seen = self._overflow.clone()
        dist.all_reduce(seen, op=dist.ReduceOp.MAX, group=self.group)
        reads, most_per_peer, most_distinct = seen.tolist()
        if reads:
            raise HetGMPError(
                f"the sharded fast step dropped rows reading {reads} batch(es), which train on wrong rows: a worker read "
                f"{most_per_peer} distinct ids owned by one peer in one step (capacity C={self.cfg.capacity} rows per peer) "
                f"and {most_distinct} distinct ids in one batch (distinct_capacity={self.cfg.distinct_capacity}). "
                f"Build ShardedStepConfig with capacity >= {round_up(most_per_peer)} and distinct_capacity >= "
                f"{round_up(most_distinct)} (hetgmp.fastpath.capacity.find_capacities measures both on the run's batches)"
            )

    @torch.no_grad()
    def flush(self) -> None:
        """Push every queued and pending mirror delta (row-wise Adagrad: send the queued gradients
        and take the owners' steps); afterwards the primaries hold all updates. The next step
        reads its batch anew (rows read ahead may miss the mirrors' deltas pushed here)."""
        if self._batch_read:  # the last step's pushes went out with the next batch's reads
            self.exchange.clear_pushes()
            self._batch_read = False
        if self.table.adagrad:
            flush_gradients(self.store, self.exchange, self.own, self.table)
        else:
            self.rows_pushed += flush_pending(self.store, self.exchange, self.base, self.rank, self.world)

    def release(self) -> None:
        """Destroy the step's CUDA graphs, which captured its collectives: call it before the
        process group is destroyed (captured.GraphReplay.release). A later step captures anew."""
        self._replay.release()

    @torch.no_grad()
    def resync(self) -> None:
        """Take the store's mirrors as they are, with nothing unpushed and no push queued: after
        flush() and whatever then wrote the store (loaded primaries, mirrors refreshed by another
        reader such as the ShardedEmbedding over the same store), before the next step."""
        first, m = self.store.num_primaries, self.store.num_mirrors
        self.base[:m] = self.store.rows[first : first + m]
        self.store.pending_count.zero_()
        self.exchange.clear_pushes()
        self._batch_read = False

    def gather_table(self) -> torch.Tensor:
        """The full (E, D) table from every worker's primaries, on every worker (flush() first)."""
        s, n = self.store, self.store.num_primaries
        return gather_primaries(s.ids[:n], s.rows[:n], self.table.num_ids, self.group)

    def gather_versions(self) -> torch.Tensor:
        """The primaries' versions, int64 [E], on every worker (flush() first)."""
        s, n = self.store, self.store.num_primaries
        return gather_primaries(s.ids[:n], s.version[:n], self.table.num_ids, self.group)

    def memory_bytes(self, batch: int, num_fields: int, num_dense: int) -> dict[str, int]:
        """This worker's device memory by the documented formula (fastpath/footprint.py), term by term."""
        s = self.store
        return sharded_step_bytes(self.table, self.world, s.num_primaries, s.num_mirrors, self.cfg.capacity, self.cfg.distinct_capacity,
                                  batch, num_fields, num_dense, self.flat_grad.numel(), self.cfg.amp == "bf16")

    @property
    def max_lag_served(self) -> int:
        """Largest lag (in updates) of a mirror read served as fresh by this worker as owner."""
        return int(self._lag[0].item())

    @property
    def lagging_reads_served(self) -> int:
        """Mirror reads this worker served as fresh while the copy lagged (by at most the bound)."""
        return int(self._lag[1].item())

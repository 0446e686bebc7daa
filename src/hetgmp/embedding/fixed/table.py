"""The sharded embedding table: primaries, mirrors and bounded staleness over fixed-size exchanges.

The one multi-worker table. As a layer, for any model and step (the general
training step, a user's own loop):

    table = ShardedTable(EmbeddingConfig(E, D, optimizer="rowwise_adagrad", lr=0.05, bound=100), placement, ctx)
    emb_BFD = table(ids_BF)                     # rows of the batch; the gradient flows back to them
    (loss / ctx.world_size).backward()
    table.step(next_ids=next_ids_BF)            # apply the gradient, read the next batch's rows
    table.flush()                               # every update at its owner (checkpoints, evaluation)

and in stages, for the fused step (hetgmp.fastpath.ShardedFastStep), which
captures one step in a CUDA graph:

    at = table.locate(ids_N)      sort the ids once: owners, local rows, exchange slots (rows.locate)
    table.fetch(at)               both rounds: after it every id of the batch has a local row
    ... gather table.store.rows at at.order, forward, backward ...
    table.write(at, grad_ND)      the update of the local rows, versions, and the pushes the
                                  next read's round A carries

One read is two all_to_all_single rounds of fixed split sizes (exchange.py):
round A carries the requests and the last write's pushes, the owners add the
pushes (with row-wise Adagrad: then take one step per row, adagrad.py) and
THEN answer outdated requests, round B carries the answers. So every write of
step t is in place before anything reads at step t + 1, and bound 0 is exactly
synchronous. When a mirror is outdated, when it pushes and what a refresh
returns is hetgmp.embedding.staleness, in one place.

Capacity: a read carries at most C distinct ids per peer, and the per-id
passes cover U distinct ids. the layer interface (`__call__`, `step`,
`read`) checks the batch against both first (a collective and a wait for
the device) and grows them when it needs more (`grow`); the fused step,
which may not wait, counts batches that needed more on the device
(`overflow`) and grows at its check points (fastpath/sharded_step.py).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

from hetgmp.distributed import DistContext
from hetgmp.embedding.batch import check_id_range
from hetgmp.embedding.config import EmbeddingConfig, check_state_dict
from hetgmp.embedding.counters import StepCounters
from hetgmp.embedding.fixed import rows as torch_stages
from hetgmp.embedding.fixed.adagrad import OwnGradients, apply_gradients, gradient_sums, keep_own, new_own_gradients, update_mirrors
from hetgmp.embedding.fixed.capacity import round_up
from hetgmp.embedding.fixed.exchange import FixedExchange
from hetgmp.embedding.fixed.rows import Located, apply_pushes, copies, flush_pending, index_add
from hetgmp.embedding.placement import Placement
from hetgmp.embedding.staleness import MUST_FETCH, updates_locally
from hetgmp.embedding.store import RowStore
from hetgmp.errors import HetGMPError
from hetgmp.kernels import Rank1Grad, new_scratch, resolve_backend, sparse_update
from hetgmp.kernels.gather import gather_rows

GROWTH = 1.25  # a capacity that proved too small grows to the need times this, rounded up


@dataclass(frozen=True)
class Stages:
    """The per-slot stages: torch (compiled with `compile`) or one Triton kernel each."""

    locate: Callable
    locate_into: Callable
    request: Callable
    answer: Callable
    serve: Callable
    receive: Callable
    write: Callable           # SGD's write: Triton where the stages are
    write_gradients: Callable  # row-wise Adagrad's write (it pushes gradient sums): torch
    add: Callable

    @classmethod
    def pick(cls, triton_stages: bool, compile: bool) -> Stages:
        compiled = (lambda fn: torch.compile(fn, dynamic=False)) if compile else (lambda fn: fn)
        kernels = importlib.import_module("hetgmp.embedding.fixed.triton_rows") if triton_stages else None
        pick = (lambda fn: getattr(kernels, fn.__name__)) if kernels else compiled
        t = torch_stages
        # Compiled, an accumulating index_put sorts its indices first (three radix sorts a call): the
        # adds stay eager (rows.index_add). Wrapped here, not there: the wrapper imports torch._dynamo,
        # which in one process with Triton's interpreter (the CPU tests) breaks it.
        add = torch.compiler.disable(index_add) if compile else index_add
        return cls(compiled(t.locate), compiled(t.locate_into), *map(pick, (t.request, t.answer, t.serve, t.receive, t.write)),
                   compiled(t.write), add)


@dataclass
class TableCounters:
    """Device tensors summed over the table's life (read them when you like)."""

    fetch: torch.Tensor     # int64 [3]: rows answered to this worker, mirrors refreshed, mirrors read
    pushed: torch.Tensor    # int64 []: pushes this worker sent
    lag: torch.Tensor       # int64 [2]: largest lag of a fresh read served, fresh reads served lagging
    overflow: torch.Tensor  # int64 [3]: reads that dropped rows, most ids asked of one peer, most distinct ids

    @classmethod
    def zeros(cls, device: torch.device) -> TableCounters:
        z = lambda *n: torch.zeros(n, dtype=torch.int64, device=device)  # noqa: E731
        return cls(z(3), z(), z(2), z(3))


class ShardedTable:
    """One worker's part of a table split over ctx.world_size workers (module docstring).

    capacity, distinct_capacity: C and U to start with (they grow as reads need; U None: as many
        as the batch has ids, no cut).
    kernel: 'auto' (Triton where it runs), 'triton' or 'torch', for the sparse updates and
    (with fused_stages) the per-slot stages; compile: torch.compile the torch stages.
    """

    def __init__(self, config: EmbeddingConfig, placement: Placement, ctx: DistContext, capacity: int = 256,
                 distinct_capacity: int | None = 256, kernel: str = "auto", fused_stages: bool = True, compile: bool = False,
                 group: dist.ProcessGroup | None = None) -> None:
        placement.validate(config.num_ids, ctx.world_size)
        if ctx.world_size < 2:
            raise HetGMPError(f"a sharded table needs 2 or more workers, not {ctx.world_size}: use LocalEmbedding on one")
        self.config, self.placement, self.ctx, self.device = config, placement, ctx, ctx.device
        self.rank, self.world = ctx.rank, ctx.world_size
        # Its own group unless given: a caller's collectives in between cannot interleave with the table's.
        self.group = group if group is not None else dist.new_group(backend=ctx.backend)
        self.kernel = resolve_backend(kernel, ctx.device)
        if self.kernel == "reference":
            raise HetGMPError("kernel='reference' waits for the device: choose auto, triton or torch")
        self.stages = Stages.pick(self.kernel == "triton" and fused_stages, compile)
        self.capacity, self.distinct_capacity = capacity, distinct_capacity
        # A staging row per exchange slot after the sink (rows.py), and each mirror's base. The store
        # first: it checks the memory before anything large is allocated.
        self.store = RowStore(config, placement, ctx.rank, ctx.device, spare=(self.world - 1) * (capacity + 1))
        self.exchange = self._new_exchange(capacity)
        self.base = self.store.rows.new_zeros(self.store.num_mirrors + self.exchange.slots, config.dim + int(self.exchange.adagrad))
        self.totals = TableCounters.zeros(ctx.device)
        self.own: OwnGradients | None = None       # row-wise Adagrad's per-id sums (U long), made at the first write
        self._scratch: torch.Tensor | None = None  # the Triton Adagrad kernel's, for the owner's step
        self.generation = 0       # grows with every grow(): what holds the table's buffers must rebuild
        self.reads = 0            # reads (both rounds) so far
        self.staging_epoch = 0    # grows with every read, flush, resync and grow: a batch read at another
                                  # epoch has lost its staging rows or may miss pushed deltas
        self._queued = False      # whether round A's push records hold a write not yet sent
        self._layer = LayerState()
        self.counters = StepCounters()  # the last layer step's traffic (device scalars)
        self._traffic_then = self._traffic()
        self.resync()

    # ---- in stages (the fused step) ----

    def locate(self, ids_N: torch.Tensor) -> Located:
        return self.stages.locate(self.store, self.exchange, ids_N, self.rank, self.config.num_ids, self.distinct_capacity)

    def locate_into(self, at: Located, ids_N: torch.Tensor) -> None:
        self.stages.locate_into(at, self.store, self.exchange, ids_N, self.rank, self.config.num_ids, self.distinct_capacity)

    def fetch(self, at: Located) -> None:
        """Both rounds for the located batch (a collective); afterwards all its rows are local.
        Round A carries the last write's pushes, once."""
        s, ex, st, c = self.store, self.exchange, self.stages, self.totals
        if not self._queued:
            ex.clear_pushes()
        st.request(s, at, ex, c.overflow, self.capacity, self.distinct_capacity or self.config.num_ids)
        ex.round_a()
        self._queued = False
        self._owner_step(st.answer)
        ex.round_b()
        st.receive(s, at, ex, self.base, c.fetch)
        self.reads += 1
        self.staging_epoch += 1

    def _owner_step(self, answer: Callable | None) -> None:
        """Owner, between the rounds: the pushes in (with row-wise Adagrad: one step per row), then
        the answers (`answer` None: no requests, a flush)."""
        s, ex, st = self.store, self.exchange, self.stages
        if self.config.adagrad:
            if self.own is not None:
                apply_gradients(s, ex, self.own, self.config, st.add, self.kernel, self._scratch)
            else:
                apply_pushes(s, ex, st.add)
            if answer is not None:
                st.serve(s, ex, self.config.bound, self.totals.lag)
        elif answer is not None:
            answer(s, ex, self.config.bound, self.totals.lag, st.add)
        else:
            apply_pushes(s, ex, st.add)

    def rows(self, at: Located, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[N, D] rows of the located batch, in batch order (read in sorted order)."""
        return gather_rows(self.store.rows, at.order, dtype, use_triton=self.kernel == "triton")

    def write(self, at: Located, grad_ND: torch.Tensor | Rank1Grad) -> None:
        """Apply the batch's gradient ([N, D] in batch order): SGD to every local row it read,
        row-wise Adagrad to the mirrors that update locally (the rest at the owners, adagrad.py);
        versions, counts and the pushes for the next read."""
        s, cfg, st = self.store, self.config, self.stages
        if cfg.adagrad:
            self._allocate_sums(len(at.ids.uids_N))
            gradient_sums(self.own, at, grad_ND, self.kernel)
            keep_own(s, at, self.own)
            update_mirrors(s, at, self.own, cfg, self.kernel)
            st.write_gradients(s, at, cfg.bound, self.exchange, self.base, self.totals.pushed, st.add, self.own.grads)
        else:
            sparse_update(s.rows, at.local_N, grad_ND, cfg.lr, backend=self.kernel, order=at.order)
            st.write(s, at, cfg.bound, self.exchange, self.base, self.totals.pushed, st.add)
        self._queued = True

    def after_fused_step(self, reads: int, staging_epoch: int, queued: bool) -> None:
        """The host's bookkeeping after a step the fused step ran, perhaps as a graph replay
        (which runs no Python): reads and epoch so far, and whether its write's pushes are still queued."""
        self.reads, self.staging_epoch, self._queued = reads, staging_epoch, queued

    def _allocate_sums(self, distinct: int) -> None:
        """Row-wise Adagrad's per-id sums and the owner's scratch (eager: before any capture)."""
        if self.own is None or len(self.own.grads) != distinct:
            self.own = new_own_gradients(distinct, self.config.dim, self.device)
            if self.kernel == "triton":  # the owner's step sorts U kept and R pushed gradients
                self._scratch = new_scratch(distinct + self.exchange.slots, self.config.dim, self.device)

    # ---- as a layer ----

    def __call__(self, ids_BF: torch.Tensor) -> torch.Tensor:
        """(ids.shape, D) rows for training, the gradient captured for step(): the rows the
        last step(next_ids=...) read if `ids_BF` is that tensor, else read now (a collective)."""
        layer = self._layer
        if layer.next is None or layer.next_ids is not ids_BF or layer.epoch != self.staging_epoch:
            layer.next = self.located_read(ids_BF)
        at, layer.next, layer.next_ids = layer.next, None, None
        leaf = self.rows(at).view(*ids_BF.shape, -1).requires_grad_(True)
        layer.last, layer.leaf = at, leaf
        return leaf

    @torch.no_grad()
    def step(self, next_ids: torch.Tensor | None = None) -> None:
        """Apply the last backward's gradient and read `next_ids` (its pushes travel with that
        read); a collective. `counters` then holds the traffic since the last step."""
        layer = self._layer
        if layer.last is not None and layer.leaf.grad is not None:
            self.write(layer.last, layer.leaf.grad.reshape(-1, self.config.dim))
        layer.last = layer.leaf = None
        if next_ids is not None:
            layer.next, layer.next_ids = self.located_read(next_ids), next_ids
            layer.epoch = self.staging_epoch
        self._count_step()

    def _traffic(self) -> tuple[torch.Tensor, int]:
        """(fetched, refreshed, mirrors read, pushed) on the device, and reads so far."""
        return torch.cat([self.totals.fetch, self.totals.pushed.reshape(1)]), self.reads

    def _count_step(self) -> None:
        (now, reads), (then, reads_then) = self._traffic(), self._traffic_then
        fetched, refreshed, mirror_reads, pushed = (now - then).unbind()
        sent = (reads - reads_then) * self.exchange.bytes_to_others()
        self.counters = StepCounters(mirror_hits=mirror_reads - refreshed, mirror_refreshes=refreshed, rows_fetched=fetched,
                                     rows_pushed=pushed, bytes_sent=sent, bytes_received=sent)
        self._traffic_then = (now, reads)

    @torch.no_grad()
    def read(self, ids_BF: torch.Tensor) -> torch.Tensor:
        """Current rows without gradient (evaluation); a collective."""
        return self.rows(self.located_read(ids_BF)).view(*ids_BF.shape, -1)

    def located_read(self, ids_BF: torch.Tensor) -> Located:
        """Locate and read a batch, growing the capacities first if it needs more (a collective)."""
        ids_N = ids_BF.reshape(-1).to(self.device)
        check_ids(ids_N, self.config.num_ids)
        while True:  # twice at most: ids past a cut U are not counted per peer until U grows
            at = self.locate(ids_N)
            need = torch.cat([at.per_peer.max().reshape(1), at.ids.distinct]).clamp(min=1)
            dist.all_reduce(need, op=dist.ReduceOp.MAX, group=self.group)
            per_peer, distinct = need.tolist()
            if per_peer <= self.capacity and distinct <= (self.distinct_capacity or distinct):
                break
            self.grow(per_peer, distinct)
        self.fetch(at)
        return at

    # ---- capacities ----

    def grow(self, per_peer: int, distinct: int) -> None:
        """Make room for reads of `per_peer` distinct ids per peer and `distinct` ids in all (a
        collective: every worker passes the same needs). Queued pushes are sent first."""
        capacity = max(self.capacity, round_up(math.ceil(GROWTH * per_peer)))
        distinct_capacity = self.distinct_capacity and max(self.distinct_capacity, round_up(math.ceil(GROWTH * distinct)))
        if (capacity, distinct_capacity) == (self.capacity, self.distinct_capacity):
            return
        self.send_queued()
        self.capacity, self.distinct_capacity = capacity, distinct_capacity
        self.exchange = self._new_exchange(capacity)
        self.store.resize_spare(self.exchange.slots)
        m = self.store.num_mirrors
        self.base = torch.cat([self.base[:m], self.base.new_zeros(self.exchange.slots, self.base.shape[1])])
        self.own = self._scratch = None
        self.staging_epoch += 1  # rows read before are gone with the staging rows
        self.generation += 1

    def _new_exchange(self, capacity: int) -> FixedExchange:
        """The rounds' buffers; their records carry accumulators only where mirrors update locally."""
        cfg = self.config
        with_acc = cfg.adagrad and updates_locally(cfg.bound, adagrad=True)
        return FixedExchange(self.world, self.rank, capacity, cfg.dim, self.device, self.group, with_acc)

    def check_overflow(self) -> tuple[int, int, int]:
        """(reads that dropped rows, most ids asked of one peer, most distinct ids) over every
        worker since the last call (a collective); the reads of `read` need no check."""
        seen = self.totals.overflow.clone()
        dist.all_reduce(seen, op=dist.ReduceOp.MAX, group=self.group)
        self.totals.overflow.zero_()
        return tuple(seen.tolist())

    # ---- between steps (collectives, eager, may wait) ----

    def send_queued(self) -> None:
        """Send the last write's pushes, if not yet sent, and apply them at the owners."""
        if self._queued:
            self.exchange.clear_requests()
            self.exchange.round_a()
            self._queued = False
            self._owner_step(None)
            self.exchange.clear_pushes()

    @torch.no_grad()
    def flush(self) -> None:
        """Push everything queued and every mirror's unpushed delta; afterwards the primaries hold
        every update. Rows read before it are read again (their mirrors may lag the pushes)."""
        self.send_queued()
        s, ex = self.store, self.exchange
        self.totals.pushed += flush_pending(s, ex, self.base, self.world, lambda: self._owner_step(None))
        self.staging_epoch += 1  # a read ahead is no longer current

    @torch.no_grad()
    def resync(self) -> None:
        """Take the mirrors as they are, nothing unpushed and nothing queued (after loading primaries)."""
        first, m = self.store.num_primaries, self.store.num_mirrors
        self.base[:m] = copies(self.store, torch.arange(first, first + m, device=self.device), self.exchange.adagrad)
        self.store.pending_count.zero_()
        self.exchange.clear_pushes()
        self._queued = False
        self.staging_epoch += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """This worker's primaries: ids, values, versions (and accumulators), after a flush."""
        self.flush()
        s, n = self.store, self.store.num_primaries
        sd = {"ids": s.ids[:n].clone(), "values": s.rows[:n].clone(), "versions": s.version[:n].clone()}
        if s.acc is not None:
            sd["accumulator"] = s.acc[:n].clone()
        return sd

    @torch.no_grad()
    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Load this worker's primaries; every mirror is fetched again at its next read."""
        check_state_dict(sd, self.config)
        s, n = self.store, self.store.num_primaries
        if len(sd["ids"]) != n or not torch.equal(sd["ids"].to(self.device), s.ids[:n]):
            raise HetGMPError(
                f"rank {self.rank}'s checkpoint holds {len(sd['ids'])} rows that are not the {n} rows this placement gives it: "
                "resume with the partition plan and worker count the checkpoint was written with"
            )
        s.rows[:n] = sd["values"].to(self.device)
        s.version[:n] = sd["versions"].to(self.device)
        if s.acc is not None:
            s.acc[:n] = sd["accumulator"].to(self.device)
        s.version[n : s.sink] = MUST_FETCH
        self.resync()

    def gather_table(self) -> torch.Tensor:
        """The full (E, D) table from every worker's primaries, on every worker (flush() first)."""
        return self._gather(self.store.rows)

    def gather_versions(self) -> torch.Tensor:
        """The primaries' versions, int64 [E], on every worker (flush() first)."""
        return self._gather(self.store.version)

    def _gather(self, values: torch.Tensor) -> torch.Tensor:
        s, n = self.store, self.store.num_primaries
        return gather_primaries(s.ids[:n], values[:n], self.config.num_ids, self.group)

    @property
    def max_lag_served(self) -> int:
        """Largest lag (in updates) of a mirror read served as fresh by this worker as owner."""
        return int(self.totals.lag[0].item())

    @property
    def lagging_reads_served(self) -> int:
        """Mirror reads this worker served as fresh while the copy lagged (by at most the bound)."""
        return int(self.totals.lag[1].item())


@dataclass
class LayerState:
    """The layer interface's batches: the one read ahead for the next call, the one trained."""

    next: Located | None = None
    next_ids: torch.Tensor | None = None
    epoch: int = -1          # the table's staging epoch when `next` was read (a later one: read it again)
    last: Located | None = None
    leaf: torch.Tensor | None = None


def check_ids(ids_N: torch.Tensor, num_ids: int) -> None:
    """Refuse ids outside the table (a wait for the device: the layer interface only)."""
    if len(ids_N):
        check_id_range(int(ids_N.min()), int(ids_N.max()), num_ids)


def gather_primaries(ids_N: torch.Tensor, values_N: torch.Tensor, num_ids: int, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Assemble [E, ...] on every worker from each worker's (ids, values) of the rows it owns."""
    device = values_N.device
    count = torch.tensor([len(ids_N)], device=device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size(group))]
    dist.all_gather(counts, count, group=group)
    most = int(max(c.item() for c in counts))
    pad = most - len(ids_N)
    ids_all = [torch.empty(most, dtype=torch.int64, device=device) for _ in counts]
    vals_all = [torch.empty((most,) + values_N.shape[1:], dtype=values_N.dtype, device=device) for _ in counts]
    dist.all_gather(ids_all, torch.cat([ids_N, ids_N.new_zeros(pad)]), group=group)
    dist.all_gather(vals_all, torch.cat([values_N, values_N.new_zeros((pad,) + values_N.shape[1:])]), group=group)
    out = values_N.new_zeros((num_ids,) + values_N.shape[1:])
    for n, ids, vals in zip(counts, ids_all, vals_all):
        out[ids[: int(n.item())]] = vals[: int(n.item())]
    return out

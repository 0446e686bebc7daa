"""The sharded table: primaries, mirrors and bounded staleness over torch.distributed.

One training step is one exchange (SPEC section 3):

    step(next_ids):  write          this step's gradients: owned rows kept for
                                    the owner's update, mirrors updated locally
                                    (bound > 0), pushes built
                     route_reads    next batch's unique ids: owned -> local,
                                    others -> a request (id, local version)
                     exchange       pushes + requests in one all_to_all_single
                     apply_pushes   owners add pushed deltas, then apply ONE
                                    optimizer step per row on the summed gradient
                     serve          owners answer outdated requests
                     exchange       answers in a second all_to_all_single
                     gather         refresh mirrors, assemble the next batch's rows

What is pushed, by kind of row read in the step:
  - owned: its gradient joins the pushed gradients of the same row at the owner;
  - not stored: the gradient and occurrence count are pushed now;
  - mirror, bound = 0: the same as not stored (the mirror does not change, so
    it is outdated and refreshed at its next read): every row then gets one
    optimizer step on the gradient summed over all workers, which makes
    bound 0 exactly synchronous for SGD and for row-wise Adagrad alike;
  - mirror, bound > 0: updated locally with its own accumulator copy; the
    value delta, accumulator delta and count accumulate as pending and are
    pushed once the pending count exceeds `bound` (additive at the owner).

A mirror is fresh while mirror_version + bound >= primary_version; a
refreshed mirror is the primary plus its own unpushed delta (and accumulator
delta). Rows of ids not stored here are kept only for the step.

Host syncs per step (the host must know every variable size): unique() of
the next ids, the sizes of the read and write classifications, the two count
exchanges (split sizes of all_to_all_single live on the host), unique() of the
owner's gradient rows, the outdated requests, the answered mirrors, and with
bound > 0 the mirrors due for a push. The stages only pass tensors along, so
the round can later be issued asynchronously (on its own stream and process
group) without changing the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from hetgmp.distributed import DistContext
from hetgmp.embedding.batch import BatchRows, split_by_kind
from hetgmp.embedding.config import EmbeddingConfig, check_state_dict
from hetgmp.embedding.counters import StepCounters
from hetgmp.embedding.exchange import (
    MUST_FETCH, Outgoing, Received, Traffic, exchange_records, from_record, gather_primaries, to_record,
)
from hetgmp.embedding.memory import memory_bytes
from hetgmp.embedding.optim import row_update
from hetgmp.embedding.placement import Placement
from hetgmp.embedding.store import RowStore
from hetgmp.errors import HetGMPError


@dataclass
class OwnGradients:
    """Gradients of rows this worker owns, held until the pushed ones arrive."""

    slots: torch.Tensor   # int64 [N] primary slots
    grads: torch.Tensor   # float32 [N, D] summed over the step's occurrences
    counts: torch.Tensor  # int64 [N] occurrences


@dataclass
class Pushes:
    """What one worker sends its owners in a round."""

    own: OwnGradients | None  # kept here: owned rows' gradients for the owner's update
    deltas: Outgoing          # mirror pushes [id, count, delta (D), accumulator delta?]
    grads: Outgoing           # gradient pushes [id, count, gradient (D)]


@dataclass
class Reads:
    """The requests of one round's reads, and what the counters need of them."""

    requests: Outgoing   # (id, version) records sorted by owner, mirrors first within an owner
    index: torch.Tensor  # for each request, its index in the batch's unique ids
    distinct: int        # unique ids read
    mirrors: int         # requests for mirrors (the rest are for ids not stored here)


class ShardedEmbedding:
    """One worker's part of a table split over ctx.world_size workers."""

    def __init__(self, config: EmbeddingConfig, placement: Placement, ctx: DistContext) -> None:
        placement.validate(config.num_ids, ctx.world_size)
        self.config, self.rank, self.world, self.device = config, ctx.rank, ctx.world_size, ctx.device
        self.store = RowStore(config, placement, ctx.rank, ctx.device)
        # Its own process group: the trainer may run the dense all-reduce
        # (async_op=True) while step() exchanges rows, without the two
        # collectives' order mattering.
        self.group = dist.new_group(backend=ctx.backend)
        self.acc_cols = [1] if config.adagrad else []
        self.counters = StepCounters()
        self.totals = StepCounters()
        self._current = StepCounters()
        self._last: BatchRows | None = None
        self._next: BatchRows | None = None
        self._max_lag = torch.zeros(1, dtype=torch.int64, device=ctx.device)

    # ---- the table's interface ----

    def __call__(self, ids_BF: torch.Tensor) -> torch.Tensor:
        """(ids.shape, D) rows for training: the prefetched ones if `ids_BF` is the tensor
        passed to the last step(next_ids=...), else read now (a collective)."""
        batch, self._next = self._next, None
        if batch is None or batch.ids is not ids_BF:
            batch = BatchRows.of(ids_BF, self.device, self.config.num_ids)
            with torch.no_grad():
                self._current.add(self._round(None, batch))
        self._last = batch
        return batch.output(requires_grad=True)

    @torch.no_grad()
    def read(self, ids_BF: torch.Tensor) -> torch.Tensor:
        """Current rows without gradient (evaluation); a collective."""
        batch = BatchRows.of(ids_BF, self.device, self.config.num_ids)
        self.totals.add(self._round(None, batch))
        return batch.output(requires_grad=False)

    @torch.no_grad()
    def step(self, next_ids: torch.Tensor | None = None) -> None:
        """Apply the last backward's gradient and read `next_ids`, in one exchange; a collective."""
        batch, self._last = self._last, None
        grad = batch.gradient() if batch is not None else None
        pushes = self._write(batch, *grad) if grad is not None else None
        self._next = BatchRows.of(next_ids, self.device, self.config.num_ids) if next_ids is not None else None
        self._current.add(self._round(pushes, self._next))
        self.counters, self._current = self._current, StepCounters()
        self.totals.add(self.counters)

    @torch.no_grad()
    def flush(self) -> None:
        """Push every pending mirror delta; afterwards the primaries hold all updates. A collective."""
        s = self.store
        due = torch.nonzero(s.pending_count > 0).squeeze(1)
        pushes = Pushes(None, self._take_pending(due), self._empty_grads())
        self.totals.add(self._round(pushes, None))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """This worker's primaries: ids, values, versions (and accumulators). Call flush() first."""
        s, n = self.store, self.store.num_primaries
        sd = {"ids": s.ids[:n].clone(), "values": s.rows[:n].clone(), "versions": s.version[:n].clone()}
        if s.acc is not None:
            sd["accumulator"] = s.acc[:n].clone()
        return sd

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Load this worker's primaries; mirrors are fetched again at their next read."""
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
        s.forget_mirrors()
        self._last = self._next = None  # rows read before the load are not the loaded ones

    def gather_table(self) -> torch.Tensor:
        """The full (E, D) table from every worker's primaries, on every worker; a collective."""
        s, n = self.store, self.store.num_primaries
        return gather_primaries(s.ids[:n], s.rows[:n], self.config.num_ids, self.group)

    @property
    def max_lag_served(self) -> int:
        """Largest lag (in updates) of a fresh mirror read that this worker served as owner."""
        return int(self._max_lag.item())

    def memory_bytes_per_worker(self) -> int:
        return memory_bytes(self.config, self.world, self.store.num_primaries, self.store.num_mirrors)

    # ---- write: this step's gradients ----

    def _write(self, batch: BatchRows, grad_UD: torch.Tensor, counts_U: torch.Tensor) -> Pushes:
        """Split the step's gradient by kind of row; update mirrors (bound > 0) and build the pushes."""
        # kind 0: owned; 1: mirror updated locally (bound > 0 only: see the module
        # docstring); 2: gradient pushed to the owner (not stored, or mirror at bound 0).
        mirror = (batch.slot_U >= 0) & (self.config.bound > 0)
        kind = torch.where(batch.owner_U == self.rank, 0, torch.where(mirror, 1, 2))
        own_i, mirror_i, push_i = split_by_kind(kind, 3)
        own = OwnGradients(batch.slot_U[own_i], grad_UD[own_i], counts_U[own_i])
        deltas = self._update_mirrors(batch.slot_U[mirror_i], grad_UD[mirror_i], counts_U[mirror_i])
        words = to_record([batch.uids_U[push_i], counts_U[push_i]], [grad_UD[push_i]])
        return Pushes(own, deltas, Outgoing.sort(batch.owner_U[push_i], words, self.world))

    def _update_mirrors(self, slots: torch.Tensor, grad: torch.Tensor, counts: torch.Tensor) -> Outgoing:
        """bound > 0: apply locally, accumulate pending, and push the mirrors whose count exceeds the bound."""
        s = self.store
        acc = s.acc[slots] if s.acc is not None else None
        delta, acc_delta = row_update(grad, acc, self.config)
        pend = slots - s.num_primaries
        s.rows.index_add_(0, slots, delta)
        s.pending.index_add_(0, pend, delta)
        s.pending_count.index_add_(0, pend, counts)
        if acc_delta is not None:
            s.acc.index_add_(0, slots, acc_delta)
            s.pending_acc.index_add_(0, pend, acc_delta)
        return self._take_pending(pend[s.pending_count[pend] > self.config.bound])

    def _take_pending(self, pend: torch.Tensor) -> Outgoing:
        """Pending (delta, accumulator delta, count) of these mirrors as pushes; bump their versions, reset."""
        s = self.store
        slots = pend + s.num_primaries
        ids, counts = s.ids[slots], s.pending_count[pend]
        floats = [s.pending[pend]] + ([s.pending_acc[pend]] if s.pending_acc is not None else [])
        words = to_record([ids, counts], floats)
        s.version.index_add_(0, slots, counts)  # the owner adds the same count in this round
        s.pending[pend] = 0
        s.pending_count[pend] = 0
        if s.pending_acc is not None:
            s.pending_acc[pend] = 0
        return Outgoing.sort(s.owner[ids].long(), words, self.world)

    def _empty_grads(self) -> Outgoing:
        return Outgoing.empty(4 + self.config.dim, self.world, self.device)

    # ---- one exchange round ----

    def _round(self, pushes: Pushes | None, batch: BatchRows | None) -> StepCounters:
        """Push, apply, serve and gather: the stages of the module docstring, for one round."""
        if pushes is None:
            pushes = Pushes(None, self._take_pending(self._no_rows()), self._empty_grads())
        reads = self._route_reads(batch)
        traffic = Traffic()
        got_deltas, got_grads, got_requests = exchange_records([pushes.deltas, pushes.grads, reads.requests], traffic, self.rank, self.group)
        self._apply_pushes(got_deltas, got_grads, pushes.own)
        (got_answers,) = exchange_records([self._serve(got_requests)], traffic, self.rank, self.group)
        refreshed = self._gather(batch, reads, got_answers)
        return StepCounters(
            distinct_ids=reads.distinct, local_hits=reads.distinct - len(reads.index), mirror_hits=reads.mirrors - refreshed,
            rows_fetched=len(got_answers.words), rows_pushed=len(pushes.deltas.words) + len(pushes.grads.words),
            bytes_sent=traffic.sent, bytes_received=traffic.received,
        )

    def _no_rows(self) -> torch.Tensor:
        return torch.zeros(0, dtype=torch.int64, device=self.device)

    def _route_reads(self, batch: BatchRows | None) -> Reads:
        """Locate the batch's unique ids; a request (id, local version) for every id not owned here.

        The requests are sorted by owner, and within an owner mirrors first."""
        if batch is None:
            return Reads(Outgoing.empty(4, self.world, self.device), self._no_rows(), 0, 0)
        s, world = self.store, self.world
        batch.owner_U, batch.slot_U = s.locate(batch.uids_U)
        key = torch.where(batch.owner_U == self.rank, 2 * world, 2 * batch.owner_U + (batch.slot_U < 0))
        order = torch.argsort(key, stable=True)
        sizes = torch.bincount(key, minlength=2 * world + 1).tolist()
        remote = order[: sum(sizes[: 2 * world])]
        slots = batch.slot_U[remote]
        version = torch.where(slots >= 0, s.version[slots.clamp(min=0)], MUST_FETCH)
        words = to_record([batch.uids_U[remote], version], [])
        per_owner = [sizes[2 * q] + sizes[2 * q + 1] for q in range(world)]
        requests = Outgoing(words, torch.tensor(per_owner, device=self.device))
        return Reads(requests, remote, len(batch.uids_U), sum(sizes[0 : 2 * world : 2]))

    def _apply_pushes(self, got_deltas: Received, got_grads: Received, own: OwnGradients | None) -> None:
        """Owner side: add pushed mirror deltas, then one optimizer step per row on its summed gradient."""
        s, dim = self.store, self.config.dim
        (ids, counts), floats = from_record(got_deltas.words, 2, [dim] + self.acc_cols)
        slots = s.slot[ids].long()
        s.rows.index_add_(0, slots, floats[0])
        s.version.index_add_(0, slots, counts)
        if s.acc is not None:
            s.acc.index_add_(0, slots, floats[1].squeeze(1))
        (ids, counts), (grads,) = from_record(got_grads.words, 2, [dim])
        slots = s.slot[ids].long()
        if own is not None:
            slots, grads, counts = torch.cat([own.slots, slots]), torch.cat([own.grads, grads]), torch.cat([own.counts, counts])
        if len(slots) == 0:
            return
        rows, inverse = torch.unique(slots, return_inverse=True)
        grad_sum = torch.zeros(len(rows), dim, device=self.device).index_add_(0, inverse, grads)
        count_sum = torch.zeros(len(rows), dtype=torch.int64, device=self.device).index_add_(0, inverse, counts)
        delta, acc_delta = row_update(grad_sum, s.acc[rows] if s.acc is not None else None, self.config)
        s.rows.index_add_(0, rows, delta)
        s.version.index_add_(0, rows, count_sum)
        if acc_delta is not None:
            s.acc.index_add_(0, rows, acc_delta)

    def _serve(self, got_requests: Received) -> Outgoing:
        """Owner side: answer (position, version, row[, accumulator]) to every outdated request."""
        s = self.store
        (ids, versions), _ = from_record(got_requests.words, 2, [])
        slots = s.slot[ids].long()
        primary_version = s.version[slots]
        fresh = (versions != MUST_FETCH) & (primary_version <= versions + self.config.bound)
        lag = torch.where(fresh, primary_version - versions, 0)
        self._max_lag = torch.cat([lag, self._max_lag]).max().reshape(1)  # stays on the device
        sel = torch.nonzero(~fresh).squeeze(1)
        floats = [s.rows[slots[sel]]] + ([s.acc[slots[sel]]] if s.acc is not None else [])
        words = to_record([got_requests.positions()[sel], primary_version[sel]], floats)
        return Outgoing(words, torch.bincount(got_requests.sources()[sel], minlength=self.world))

    def _gather(self, batch: BatchRows | None, reads: Reads, got_answers: Received) -> int:
        """Reader side: refresh answered mirrors, then assemble the batch's rows. Returns mirrors refreshed."""
        if batch is None:
            return 0
        s = self.store
        (pos, version), floats = from_record(got_answers.words, 2, [self.config.dim] + self.acc_cols)
        starts = torch.cumsum(reads.requests.counts_P, 0) - reads.requests.counts_P
        answered = reads.index[starts[got_answers.sources()] + pos]  # indices into batch.uids_U
        slot = batch.slot_U[answered]
        mirror_i, fetched_i = split_by_kind((slot < 0).long(), 2)
        refreshed, pend = slot[mirror_i], slot[mirror_i] - s.num_primaries
        s.rows[refreshed] = floats[0][mirror_i] + s.pending[pend]
        s.version[refreshed] = version[mirror_i]
        if s.acc is not None:
            s.acc[refreshed] = floats[1][mirror_i].squeeze(1) + s.pending_acc[pend]
        batch.rows_UD = s.rows[batch.slot_U.clamp(min=0)]
        batch.rows_UD[answered[fetched_i]] = floats[0][fetched_i]
        return len(refreshed)

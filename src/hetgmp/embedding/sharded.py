"""The sharded table: primaries, mirrors and bounded staleness over torch.distributed.

One training step is one exchange (SPEC section 3):

    step(next_ids):  write     (writes.py)  this step's gradients: owned rows kept for
                                            the owner's update, mirrors updated locally
                                            (bound > 0), pushes built
                     read      (reads.py)   next batch's unique ids: owned -> local,
                                            others -> a request (id, local version)
                     exchange               pushes + requests in one all_to_all_single
                     apply     (owner.py)   owners add pushed deltas, then apply ONE
                                            optimizer step per row on the summed gradient
                     serve     (owner.py)   owners answer outdated requests
                     exchange               answers in a second all_to_all_single
                     gather    (reads.py)   refresh mirrors, assemble the next batch's rows

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

The host waits for the device twice per step, once per all_to_all_single,
whose split sizes must live on the host: each wait is one copy that brings
back the round's counts together with every other size the host needs
(exchange.SizeExchange). Everything in between is computed on the device
from sorts (stable sorts by key replace masks, unique() and nonzero(), whose
output sizes would each make the host wait) and sliced once the sizes are
known. On a GPU the answer counts travel while the owner's row updates run.

    step         device, no wait                     host waits for        then
    ----         ---------------                     --------------        ----
    round 1      sort the next ids; key and sort     counts of pushes and  update mirrors, exchange
                 the gradient rows and the requests  requests, U, layouts  pushes + requests
    round 2      versions += pushed counts; key the  answer counts         build answers, exchange,
                 outdated requests; row updates                            gather
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from hetgmp.distributed import DistContext
from hetgmp.embedding.batch import BatchRows
from hetgmp.embedding.config import EmbeddingConfig, check_state_dict
from hetgmp.embedding.counters import StepCounters
from hetgmp.embedding.exchange import SizeExchange, Traffic, exchange_records, gather_primaries
from hetgmp.embedding.memory import memory_bytes
from hetgmp.embedding.owner import Answers, Applied
from hetgmp.embedding.placement import Placement
from hetgmp.embedding.reads import Reads
from hetgmp.embedding.shard import Shard
from hetgmp.embedding.store import RowStore
from hetgmp.embedding.writes import FlushWrites, NoWrites, StepWrites
from hetgmp.errors import HetGMPError

Writes = StepWrites | FlushWrites | NoWrites


class ShardedEmbedding:
    """One worker's part of a table split over ctx.world_size workers."""

    def __init__(self, config: EmbeddingConfig, placement: Placement, ctx: DistContext, spare: int = 0) -> None:
        """spare: rows after the store's sink for another step over the same store (RowStore)."""
        placement.validate(config.num_ids, ctx.world_size)
        self.config, self.rank, self.world, self.device = config, ctx.rank, ctx.world_size, ctx.device
        self.store = RowStore(config, placement, ctx.rank, ctx.device, spare=spare)
        # Its own process group: the trainer may run the dense all-reduce
        # (async_op=True) while step() exchanges rows, without the two
        # collectives' order mattering.
        self.group = dist.new_group(backend=ctx.backend)
        self.shard = Shard(self.store, config, ctx.rank, ctx.world_size)
        # The count exchanges' copies back to the host run here, beside the row updates.
        self._side = torch.cuda.Stream(ctx.device) if ctx.device.type == "cuda" else None
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
            with torch.no_grad():
                batch = self._exchange(NoWrites(self.shard, self.device), ids_BF, self._current)
        self._last = batch
        return batch.output(requires_grad=True)

    @torch.no_grad()
    def read(self, ids_BF: torch.Tensor) -> torch.Tensor:
        """Current rows without gradient (evaluation); a collective."""
        return self._exchange(NoWrites(self.shard, self.device), ids_BF, self.totals).output(requires_grad=False)

    @torch.no_grad()
    def step(self, next_ids: torch.Tensor | None = None) -> None:
        """Apply the last backward's gradient and read `next_ids`, in one exchange; a collective."""
        batch, self._last = self._last, None
        grad = batch.gradient() if batch is not None else None
        writes = NoWrites(self.shard, self.device) if grad is None else StepWrites(self.shard, batch, *grad)
        self._next = self._exchange(writes, next_ids, self._current)
        self.counters, self._current = self._current, StepCounters()
        self.totals.add(self.counters)

    @torch.no_grad()
    def flush(self) -> None:
        """Push every pending mirror delta; afterwards the primaries hold all updates. A collective."""
        self._exchange(FlushWrites(self.shard), None, self.totals)

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

    # ---- one exchange round ----

    def _exchange(self, writes: Writes, ids_BF: torch.Tensor | None, counters: StepCounters) -> BatchRows | None:
        """One round of `writes` and of reading `ids_BF` (if any); adds its counters to `counters`."""
        batch, reads = None, Reads(self.shard, None, None)
        if ids_BF is not None:
            batch, batch_sizes = BatchRows.sorted_unique(ids_BF, self.device)
            reads = Reads(self.shard, batch, batch_sizes)
        counters.add(self._round(writes, reads))
        return batch

    def _round(self, writes: Writes, reads: Reads) -> StepCounters:
        """Push, apply, serve and gather: the stages of the module docstring, for one round."""
        traffic = Traffic()
        deltas_P, grads_P = writes.per_owner()
        counts = torch.stack([deltas_P, grads_P, reads.requests_P], dim=1)
        sizes = SizeExchange(counts, torch.cat([reads.layout, writes.layout]), traffic, self.group, self._side).wait()
        reads.settle(sizes.extras[: len(reads.layout)])
        pushes = writes.build(sizes.extras[len(reads.layout) :])
        got_deltas, got_grads, got_requests = exchange_records([pushes.deltas, pushes.grads, reads.requests()], sizes, traffic, self.rank, self.group)
        applied = Applied(self.shard, got_deltas, got_grads, pushes.own)
        answers = Answers(self.shard, got_requests, self._max_lag)
        self._max_lag = answers.max_lag
        answer_sizes = SizeExchange(answers.per_source.unsqueeze(1), answers.per_source[:0], traffic, self.group, self._side)
        applied.rows()  # runs while the answer counts travel
        answer_sizes = answer_sizes.wait()
        answer_records = answers.records(sum(row[0] for row in answer_sizes.sent))
        (got_answers,) = exchange_records([answer_records], answer_sizes, traffic, self.rank, self.group)
        refreshed = reads.gather(got_answers)
        return StepCounters(
            distinct_ids=reads.distinct, local_hits=reads.distinct - reads.remote, mirror_hits=reads.mirrors - refreshed, mirror_refreshes=refreshed,
            rows_fetched=len(got_answers.words), rows_pushed=len(pushes.deltas) + len(pushes.grads),
            bytes_sent=traffic.sent, bytes_received=traffic.received,
        )

"""The owner's side of a round: apply what was pushed, then answer outdated requests.

Applying is split in two so the second count exchange can start early:
`Applied` adds the pushed counts to the versions at once (the answers depend
only on versions), `Applied.rows()` does the row updates, queued while the
answer counts travel. Both run before any answer is built, so bound 0 stays
exactly synchronous.

Rows are reduced by one sort instead of unique(), whose output size would
make the host wait: the segments of the sorted slots are as many as the
pushed rows, and the segments past the last distinct row add a zero gradient
to the store's sink row.
"""

from __future__ import annotations

import torch

from hetgmp.embedding.batch import sorted_segments
from hetgmp.embedding.exchange import MUST_FETCH, Received, from_record, to_record
from hetgmp.embedding.keys import sort_by_key
from hetgmp.embedding.optim import row_update
from hetgmp.embedding.shard import Shard
from hetgmp.embedding.writes import OwnGradients


class Applied:
    """Pushed mirror deltas and gradients (and this worker's own), versions already counted."""

    def __init__(self, shard: Shard, got_deltas: Received, got_grads: Received, own: OwnGradients | None) -> None:
        s, dim = shard.store, shard.config.dim
        self.shard = shard
        (ids, counts), self.delta_floats = from_record(got_deltas.words, 2, [dim] + shard.acc_cols)
        self.delta_slots = s.slot[ids].long()
        (ids, grad_counts), (self.grads,) = from_record(got_grads.words, 2, [dim])
        self.grad_slots = s.slot[ids].long()
        if own is not None and len(own.slots):
            self.grad_slots, self.grads = torch.cat([own.slots, self.grad_slots]), torch.cat([own.grads, self.grads])
            grad_counts = torch.cat([own.counts, grad_counts])
        if len(self.delta_slots) + len(self.grad_slots):
            s.version.index_add_(0, torch.cat([self.delta_slots, self.grad_slots]), torch.cat([counts, grad_counts]))

    def rows(self) -> None:
        """Add the mirror deltas, then one optimizer step per row on its summed gradient."""
        s = self.shard.store
        if len(self.delta_slots):
            s.rows.index_add_(0, self.delta_slots, self.delta_floats[0])
            if s.acc is not None:
                s.acc.index_add_(0, self.delta_slots, self.delta_floats[1].squeeze(1))
        if len(self.grad_slots) == 0:
            return
        sorted_slots, seg, inverse = sorted_segments(self.grad_slots)
        grad_sum = torch.zeros(len(seg), self.shard.config.dim, device=seg.device).index_add_(0, inverse, self.grads)
        rows = torch.full_like(sorted_slots, s.sink).scatter_(0, seg, sorted_slots)
        delta, acc_delta = row_update(grad_sum, s.acc[rows] if s.acc is not None else None, self.shard.config)
        s.rows.index_add_(0, rows, delta)
        if acc_delta is not None:
            s.acc.index_add_(0, rows, acc_delta)


class Answers:
    """Which requests are outdated, sorted by source; the records are built once the host knows how many."""

    def __init__(self, shard: Shard, got_requests: Received, max_lag: torch.Tensor) -> None:
        s = self.shard = shard
        (ids, versions), _ = from_record(got_requests.words, 2, [])
        self.slots = s.store.slot[ids].long()
        self.version = s.store.version[self.slots]
        fresh = (versions != MUST_FETCH) & (self.version <= versions + s.config.bound)
        self.max_lag = max_lag
        if s.config.bound > 0:  # at bound 0 a fresh mirror has the primary's version: lag 0
            lag = torch.where(fresh, self.version - versions, 0)
            self.max_lag = torch.cat([lag, max_lag]).max().reshape(1)  # stays on the device
        sources = got_requests.sources()
        self.order, per_key = sort_by_key(torch.where(fresh, s.world, sources), s.world + 1)
        self.per_source = per_key[: s.world]
        self.positions = got_requests.positions(sources)

    def records(self, total: int) -> torch.Tensor:
        """(position, version, row[, accumulator]) of the `total` outdated requests, sorted by source."""
        s = self.shard.store
        sel = self.order[:total]
        slots = self.slots[sel]
        floats = [s.rows[slots]] + ([s.acc[slots]] if s.acc is not None else [])
        return to_record([self.positions[sel], self.version[sel]], floats)

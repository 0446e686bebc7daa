"""The reader's side of a round: requests for the next batch's rows, then their gather.

Every unique id of the batch (padded to the batch's length, see
BatchRows.sorted_unique) gets a key, and one stable sort orders the requests
by owner, mirrors first within an owner:

    key  2q        mirror of a row owned by q     (the request carries its version)
         2q + 1    not stored here, owned by q    (the request carries MUST_FETCH)
         2P        owned here: read locally
         2P + 1    padding

The keys are sorted before the host knows any size; `layout` (U, the batch's
smallest and largest id, rows per key) rides along with the round's sizes,
and then the requests are the sort's first rows.
"""

from __future__ import annotations

import torch

from hetgmp.embedding.batch import BatchRows
from hetgmp.embedding.exchange import MUST_FETCH, WORD, Received, from_record, to_record
from hetgmp.embedding.keys import sort_by_key
from hetgmp.embedding.shard import Shard


class Reads:
    """The requests of one round's reads, and what the counters need of them."""

    def __init__(self, shard: Shard, batch: BatchRows | None, batch_sizes: torch.Tensor | None) -> None:
        self.shard, self.batch = shard, batch
        self.distinct = self.remote = self.mirrors = 0
        device = shard.store.rows.device
        if batch is None:
            self.layout = torch.zeros(0, dtype=torch.int64, device=device)
            self.requests_P = torch.zeros(shard.world, dtype=torch.int64, device=device)
            self.order = self.layout
            return
        p = shard.world
        self.order, layout = sort_by_key(self._keys(batch), 2 * p + 2)
        self.requests_P = layout[: 2 * p].view(p, 2).sum(1)
        self.layout = torch.cat([batch_sizes, layout])

    def _keys(self, batch: BatchRows) -> torch.Tensor:
        """Locate the batch's ids and key them; the lookups clamp the ids, as a bad one is
        refused only once the host reads the batch's ends (`settle`)."""
        s, p = self.shard.store, self.shard.world
        batch.owner_U, batch.slot_U = s.locate(batch.uids_U.clamp(0, self.shard.config.num_ids - 1))
        local = torch.where(batch.owner_U == self.shard.rank, 2 * p, 2 * batch.owner_U + (batch.slot_U < 0))
        return torch.where(batch.counts_U == 0, 2 * p + 1, local)

    def settle(self, layout: list[int]) -> None:
        """Once the host knows the layout: trim the batch, keep the requests' part of the sort."""
        if self.batch is None:
            return
        p = self.shard.world
        unique, low, high, per_key = layout[0], layout[1], layout[2], layout[3:]
        self.batch.trim(unique, self.shard.config.num_ids, (low, high))
        self.distinct, self.remote, self.mirrors = unique, sum(per_key[: 2 * p]), sum(per_key[0 : 2 * p : 2])
        self.order = self.order[: self.remote]

    def requests(self) -> torch.Tensor:
        """(id, version) records sorted by owner, mirrors first within an owner. Built after
        the writes: a mirror that pushed this round asks with its version bumped."""
        if self.batch is None:
            return torch.zeros(0, 4, dtype=WORD, device=self.order.device)
        slots = self.batch.slot_U[self.order]
        version = torch.where(slots >= 0, self.shard.store.version[slots.clamp(min=0)], MUST_FETCH)
        return to_record([self.batch.uids_U[self.order], version], [])

    def gather(self, got_answers: Received) -> torch.Tensor | int:
        """Refresh the answered mirrors, assemble the batch's rows; returns the mirrors refreshed
        (a device scalar: the host never needs it to go on)."""
        if self.batch is None:
            return 0
        s, batch = self.shard.store, self.batch
        refreshed = 0
        if len(got_answers.words):
            answered, value, refreshed = self._refresh(got_answers)
        batch.rows_UD = s.rows[batch.slot_U.clamp(min=0)]
        if len(got_answers.words):
            batch.rows_UD[answered] = value
        return refreshed

    def _refresh(self, got_answers: Received) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Store the answered mirrors (others go to the sink); (answered uids' indices, their rows, mirrors refreshed)."""
        s, dim = self.shard.store, self.shard.config.dim
        (pos, version), (floats,) = from_record(got_answers.words, 2, [dim + len(self.shard.acc_cols)])
        starts = torch.cumsum(self.requests_P, 0) - self.requests_P
        answered = self.order[starts[got_answers.sources()] + pos]  # indices into batch.uids_U
        slot = self.batch.slot_U[answered]
        mirror = slot >= 0  # answered rows are never owned here
        target = torch.where(mirror, slot, s.sink)
        if self.shard.config.bound > 0:  # a refreshed mirror keeps its unpushed delta (bound 0 keeps none)
            floats = floats + s.pending[torch.where(mirror, slot - s.num_primaries, s.num_mirrors)]
        s.rows[target] = floats[:, :dim]
        s.version[target] = version
        if s.acc is not None:
            s.acc[target] = floats[:, dim]
        return answered, floats[:, :dim], mirror.sum()

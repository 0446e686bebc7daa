"""The writer's side of a round: which rows of the step's gradient go where.

Every unique row of the last batch gets a key, and one stable sort by key lays
the rows out as the round needs them (P = 2, rank 0, bound > 0):

    key  0 .. P-1      gradient pushed to owner key     (not stored, or a mirror at bound 0)
         P .. 2P-1     mirror due for a push to owner key - P
         2P            mirror updated locally, not due
         2P + 1        owned: kept for the owner's update

    owner = [1, 0, 1, 1], mirror = [F, F, T, T], due = [-, -, F, T]
    key   = [1, 5, 4, 3]  ->  order = [0, 3, 2, 1], layout (rows per key) = [0, 1, 0, 1, 1, 1]

The gradient is gathered into records in that order before the host knows any
size; once the round's sizes come back (`layout` rides along), every group is
a slice. A mirror's pending count decides whether it is due before it is
updated: pending + this step's count > bound, as after the update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hetgmp.embedding.batch import BatchRows
from hetgmp.embedding.exchange import WORD, to_record
from hetgmp.embedding.keys import sort_by_key
from hetgmp.embedding.optim import row_update
from hetgmp.embedding.shard import Shard


@dataclass
class OwnGradients:
    """Gradients of rows this worker owns, held until the pushed ones arrive."""

    slots: torch.Tensor   # int64 [N] primary slots
    grads: torch.Tensor   # float32 [N, D] summed over the step's occurrences
    counts: torch.Tensor  # int64 [N] occurrences


@dataclass
class Pushes:
    """What one worker sends its owners in a round, each kind sorted by owner."""

    deltas: torch.Tensor       # mirror pushes [id, count, delta (D), accumulator delta?]
    grads: torch.Tensor        # gradient pushes [id, count, gradient (D)]
    own: OwnGradients | None   # kept here: owned rows' gradients for the owner's update


class StepWrites:
    """The last batch's gradient, sorted by key (see the module docstring)."""

    def __init__(self, shard: Shard, batch: BatchRows, grad_UD: torch.Tensor, counts_U: torch.Tensor) -> None:
        self.shard = shard
        order, self.layout = sort_by_key(self._keys(batch.owner_U, batch.slot_U, counts_U), 2 * shard.world + 2)
        self.slots, self.counts = batch.slot_U[order], counts_U[order]
        self.records = to_record([batch.uids_U[order], self.counts], [grad_UD[order]])

    def _keys(self, owner_U, slot_U, counts_U) -> torch.Tensor:
        s, p, bound = self.shard.store, self.shard.world, self.shard.config.bound
        key = torch.where(owner_U == self.shard.rank, 2 * p + 1, owner_U)
        if bound == 0:  # mirrors push their gradient like rows not stored here
            return key
        # Mirror slots follow the primaries': every other row gets pending index -1, which
        # reads the sink's entry (the last, always 0) and marks it as no mirror.
        pend = (slot_U - s.num_primaries).clamp_(min=-1)
        mirror_key = torch.where(s.pending_count[pend] + counts_U > bound, owner_U + p, 2 * p)
        return torch.where(pend >= 0, mirror_key, key)

    def per_owner(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mirror pushes, gradient pushes) per owner, int64 [P] each, on the device."""
        p = self.shard.world
        return self.layout[p : 2 * p], self.layout[:p]

    def build(self, layout: list[int]) -> Pushes:
        """Once the host knows the layout: update mirrors, take the due ones' pending, slice the rest."""
        p, dim = self.shard.world, self.shard.config.dim
        pushed, due, mirrors, own = sum(layout[:p]), sum(layout[p : 2 * p]), sum(layout[p : 2 * p + 1]), layout[2 * p + 1]
        grads = self.records[:, 4 : 4 + dim].view(torch.float32)
        if mirrors:
            m = slice(pushed, pushed + mirrors)
            update_mirrors(self.shard, self.slots[m], grads[m], self.counts[m])
        deltas = take_pending(self.shard, self.slots[pushed : pushed + due])
        kept = slice(len(self.slots) - own, len(self.slots))
        return Pushes(deltas, self.records[:pushed], OwnGradients(self.slots[kept], grads[kept], self.counts[kept]))


class FlushWrites:
    """Every mirror with a pending count, sorted by owner (key = owner, P for the others)."""

    def __init__(self, shard: Shard) -> None:
        s, p = shard.store, shard.world
        self.shard = shard
        owner = s.owner[s.ids[s.num_primaries :]].long()
        self.order, self.layout = sort_by_key(torch.where(s.pending_count[: s.num_mirrors] > 0, owner, p), p + 1)

    def per_owner(self) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.shard.world
        return self.layout[:p], torch.zeros_like(self.layout[:p])

    def build(self, layout: list[int]) -> Pushes:
        deltas = take_pending(self.shard, self.order[: sum(layout[: self.shard.world])] + self.shard.store.num_primaries)
        return Pushes(deltas, empty_records(self.shard, 4 + self.shard.config.dim), None)


class NoWrites:
    """A round that only reads (a forward without prefetch, an evaluation)."""

    def __init__(self, shard: Shard, device: torch.device) -> None:
        self.shard = shard
        self.layout = torch.zeros(0, dtype=torch.int64, device=device)

    def per_owner(self) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = torch.zeros(self.shard.world, dtype=torch.int64, device=self.layout.device)
        return zeros, zeros

    def build(self, layout: list[int]) -> Pushes:
        width = 4 + self.shard.config.dim
        return Pushes(empty_records(self.shard, width + len(self.shard.acc_cols)), empty_records(self.shard, width), None)


def empty_records(shard: Shard, width: int) -> torch.Tensor:
    return torch.zeros(0, width, dtype=WORD, device=shard.store.rows.device)


def update_mirrors(shard: Shard, slots: torch.Tensor, grad: torch.Tensor, counts: torch.Tensor) -> None:
    """bound > 0: apply the gradient to the local copies; accumulate the change as pending."""
    s = shard.store
    acc = s.acc[slots] if s.acc is not None else None
    delta, acc_delta = row_update(grad, acc, shard.config)
    pend = slots - s.num_primaries
    s.rows.index_add_(0, slots, delta)
    s.pending_count.index_add_(0, pend, counts)
    if acc_delta is None:
        s.pending.index_add_(0, pend, delta)
        return
    s.acc.index_add_(0, slots, acc_delta)
    s.pending.index_add_(0, pend, torch.cat([delta, acc_delta.unsqueeze(1)], dim=1))


def take_pending(shard: Shard, slots: torch.Tensor) -> torch.Tensor:
    """Pending (delta, accumulator delta, count) of the mirrors in these slots as push records,
    in the given order; bump their versions (the owner adds the same count this round), reset."""
    s = shard.store
    if len(slots) == 0:
        return empty_records(shard, 4 + shard.config.dim + len(shard.acc_cols))
    pend = slots - s.num_primaries
    counts = s.pending_count[pend]
    words = to_record([s.ids[slots], counts], [s.pending[pend]])
    s.version.index_add_(0, slots, counts)
    s.pending.index_fill_(0, pend, 0)
    s.pending_count.index_fill_(0, pend, 0)
    return words

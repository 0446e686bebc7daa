"""One worker's rows in the sharded fast step: read a batch, serve peers, write gradients.

The store is the embedding runtime's RowStore (primaries, then mirrors, then
one sink row; versions; each mirror's pending delta and count; owner and slot
of every id). Every stage here has fixed shapes: rows that must not change are
pointed at the sink (slot S) or at the pending sink (index M, always 0), so no
mask ever needs compacting. Except where atomics add: there the padding adds
zeros to rows spread over the whole store (`spread`), since a hundred thousand
atomic adds on the sink's one row would queue behind each other. Per unique id of the batch (N of them, padded):

    kind           read                                write
    own primary    local row                           row -= lr g; version += c
    mirror         local if fresh, else answer +       row -= lr g; pending += -lr g, count += c;
                   pending (stored, version := answer)  count > bound: push (pending, count), reset
    not stored     answer                              push (-lr g, c)

A mirror that pushes bumps its own version by the count (the owner adds the
same count before it serves anything), so primary - mirror version is the
number of other workers' updates the copy has not seen. At bound 0 a mirror
pushes every step it is written and stays fresh until another worker writes
the row, which keeps bound 0 exactly synchronous (SGD deltas add the same
floats in the same order on both sides).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hetgmp.embedding.exchange import MUST_FETCH
from hetgmp.embedding.store import RowStore
from hetgmp.fastpath.capacity import UniqueIds, peer_slots, unique_ids
from hetgmp.fastpath.fixed_exchange import NOT_ANSWERED, FixedExchange


@dataclass
class Located:
    """Where the batch's unique ids live, seen from this worker (all [N])."""

    ids: UniqueIds
    owner: torch.Tensor      # int64 owner rank
    slot: torch.Tensor       # int64 local slot, -1 if not stored here
    own: torch.Tensor        # bool: a primary of this worker
    mirror: torch.Tensor     # bool: a mirror here
    pend: torch.Tensor       # int64 pending index of a mirror, M (the pending sink, always 0) otherwise
    peer_slot: torch.Tensor  # int64 slot in the owner's block; C (the dump row) if none
    sent: torch.Tensor       # bool: remote and within capacity (has a slot this step)
    per_peer: torch.Tensor   # int64 [P] remote ids per peer


def locate(store: RowStore, ids_N: torch.Tensor, rank: int, world: int, capacity: int, num_ids: int,
           distinct_capacity: int | None = None) -> Located:
    """Where the batch's distinct ids live (the first `distinct_capacity` of them, if given)."""
    u = unique_ids(ids_N, num_ids)
    if distinct_capacity is not None:
        u = u.first(distinct_capacity)
    owner, slot = store.locate(u.uids_N)
    own = u.valid_N & (owner == rank)
    mirror = u.valid_N & ~own & (slot >= 0)
    remote = u.valid_N & ~own
    pos, per_peer = peer_slots(owner, remote, world)
    sent = remote & (pos < capacity)
    pend = torch.where(mirror, slot - store.num_primaries, store.num_mirrors)
    return Located(u, owner, slot, own, mirror, pend, torch.where(sent, pos, capacity), sent, per_peer)


def request(store: RowStore, at: Located, exchange: FixedExchange) -> None:
    """This step's requests: (id, local version or MUST_FETCH) at each remote id's slot."""
    version = torch.where(at.mirror, store.version[at.slot.clamp(min=0)], MUST_FETCH)
    exchange.write_requests(at.owner, at.peer_slot, at.ids.uids_N, version)


def spread(n: int, store: RowStore) -> torch.Tensor:
    """n row indices spread over the store (sink included): where index_add_ is handed
    zeros to add, so that they do not all wait on one row's atomics."""
    return torch.arange(n, device=store.rows.device) % (store.sink + 1)


def absorbing(n: int, base: int, store: RowStore) -> torch.Tensor:
    """n indices from `base` (the sink, or the pending sink) over it and the spare rows after it:
    where masked writes land, one row each as far as the spares go (writes to one row queue)."""
    return base + torch.arange(n, device=store.rows.device) % (store.spare + 1)


def apply_pushes(store: RowStore, exchange: FixedExchange) -> None:
    """Owner: add every received push (deltas add up; version += count)."""
    ids, counts, delta = exchange.received_pushes()
    pushed = ids >= 0
    slot = torch.where(pushed, store.slot[ids.clamp(min=0)].long(), spread(len(ids), store))
    store.rows.index_add_(0, slot, torch.where(pushed.unsqueeze(1), delta, 0.0))
    store.version.index_add_(0, slot, torch.where(pushed, counts, 0))


def serve(store: RowStore, exchange: FixedExchange, bound: int, lag: torch.Tensor) -> None:
    """Owner: answer outdated requests (after the pushes are in); `lag` [2] gets
    (max lag of a fresh read served, fresh reads served with lag > 0) added on the device."""
    ids, req_version = exchange.received_requests()
    valid = ids >= 0
    slot = torch.where(valid, store.slot[ids.clamp(min=0)].long(), store.sink)
    version = store.version[slot]
    outdated = valid & ((req_version == MUST_FETCH) | (req_version + bound < version))
    exchange.write_answers(torch.where(outdated, version, NOT_ANSWERED), store.rows[slot])
    fresh_lag = torch.where(valid & ~outdated, version - req_version, 0)
    lag[0] = torch.maximum(lag[0], fresh_lag.max())
    lag[1] += (fresh_lag > 0).sum()


def gather(store: RowStore, at: Located, exchange: FixedExchange) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows of the unique ids [N, D], rows fetched): answered rows (plus a mirror's pending
    delta) replace local ones and refresh the mirrors they belong to."""
    version, row_ND = exchange.answers_at(at.owner, at.peer_slot)
    answered = at.sent & (version != NOT_ANSWERED)
    fetched_ND = row_ND + store.pending[at.pend, : row_ND.shape[1]]
    rows_ND = torch.where(answered.unsqueeze(1), fetched_ND, store.rows[at.slot.clamp(min=0)])
    refresh = torch.where(answered & at.mirror, at.slot, absorbing(len(answered), store.sink, store))
    store.rows[refresh] = fetched_ND
    store.version[refresh] = version
    return rows_ND, answered.sum()


def write(store: RowStore, at: Located, delta_ND: torch.Tensor, bound: int, exchange: FixedExchange) -> torch.Tensor:
    """Apply this step's deltas (the module docstring's table) and queue the pushes for the
    next round A; returns the number of pushes (a device scalar)."""
    counts = at.ids.counts_N
    local = at.own | at.mirror
    new_pending = store.pending[at.pend] + delta_ND
    new_count = store.pending_count[at.pend] + counts
    due = at.mirror & (new_count > bound)
    keep = (at.mirror & ~due).unsqueeze(1)
    target = torch.where(local, at.slot, spread(len(local), store))
    store.rows.index_add_(0, target, torch.where(local.unsqueeze(1), delta_ND, 0.0))
    store.version.index_add_(0, target, torch.where(at.own, counts, torch.where(due, new_count, 0)))
    pend_target = torch.where(at.mirror, at.pend, absorbing(len(at.mirror), store.num_mirrors, store))
    store.pending[pend_target] = torch.where(keep, new_pending, 0.0)
    store.pending_count[pend_target] = torch.where(keep.squeeze(1), new_count, 0)
    push = at.sent & (due | (at.ids.valid_N & (at.slot < 0)))
    push_delta = torch.where(due.unsqueeze(1), new_pending, delta_ND)
    exchange.write_pushes(at.owner, at.peer_slot, torch.where(push, at.ids.uids_N, -1),
                          torch.where(push, torch.where(due, new_count, counts), 0), push_delta)
    return push.sum()


def flush_pending(store: RowStore, exchange: FixedExchange, rank: int, world: int) -> int:
    """Push every pending mirror delta in rounds of at most C per peer, the owners adding them
    as they arrive. Host syncs allowed (flush is rare); a collective. Returns the rows pushed."""
    exchange.clear_requests()
    exchange.round_a()  # the pushes the last step queued
    apply_pushes(store, exchange)
    m = store.num_mirrors
    slots = torch.arange(store.num_primaries, store.num_primaries + m, device=store.rows.device)
    has = store.pending_count[:m] > 0
    owner = store.owner[store.ids[slots]].long()
    pos, per_peer = peer_slots(owner, has, world)
    rounds = torch.div(per_peer.max() + exchange.capacity - 1, exchange.capacity, rounding_mode="floor").reshape(1)
    if world > 1:
        torch.distributed.all_reduce(rounds, op=torch.distributed.ReduceOp.MAX, group=exchange.group)
    for k in range(int(rounds.item())):
        mine = has & (pos // exchange.capacity == k)
        exchange.write_pushes(owner, torch.where(mine, pos % exchange.capacity, exchange.capacity),
                              torch.where(mine, store.ids[slots], -1), torch.where(mine, store.pending_count[:m], 0),
                              store.pending[:m])
        exchange.round_a()
        apply_pushes(store, exchange)
    store.version[slots] += store.pending_count[:m]
    store.pending.zero_()
    store.pending_count.zero_()
    exchange.clear_pushes()
    return int(has.sum().item())

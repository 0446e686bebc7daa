"""One worker's rows in the sharded fast step: read a batch, serve peers, write gradients.

The store is the embedding runtime's RowStore: primaries, then mirrors, then
the sink, then R = (P - 1)(C + 1) staging rows, one per exchange slot (the store's
`spare` rows). A row fetched in slot r of round B is copied to staging row r,
so every id of the batch has a row in one local table:

    own primary          its slot
    mirror               its slot (refreshed in place when an answer comes)
    not stored, sent     staging row of its request's slot
    not stored, no slot  the sink (capacity overflow: the step flags it)

and the step reads and updates that table like the one-GPU FastStep does:
one gather in sorted order and the fused sparse update, over the batch's
N ids, with no per-id [U, D] tensors in between. What a step sends is found
afterwards, per exchange slot (R rows, not U):

    staging row (not stored)   push row - answer (this step's delta), count
    mirror, count > bound      push row - base, count; base := row
    mirror, count <= bound     keep counting (the delta stays in row - base)

`base` is a mirror's row as of its last exchange with the owner (its last
answer plus what it has pushed since), so row - base is exactly what the
mirror has not pushed. An answer for a mirror keeps that:
row := answer + (row - base), base := answer.

Versions: a primary's version counts the updates applied to it; a mirror that
pushes bumps its own version by the count (the owner adds the same count
before it serves anything), so primary - mirror version is the number of
other workers' updates the copy has not seen. At bound 0 a mirror pushes
every step it is written, so row - base is zero after every step and a
refresh is exactly the owner's row: bound 0 is synchronous SGD. The owner
adds (row + delta) - row, which is exactly the rounded step the mirror took
whenever |row| >= |delta| (Fast2Sum: fl(a + b) - a is exact for |a| >= |b|).

Fixed shapes throughout: rows that must not change are pointed at rows nothing
reads (staging rows of unused slots, rows after the mirrors in `base`), so no
mask ever needs compacting. Except where atomics add: there the padding adds
zeros to rows spread over the whole store (`spread`), since a hundred thousand
atomic adds on one row would queue behind each other.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch

from hetgmp.embedding.staleness import MUST_FETCH, due, outdated, refreshed, updates_locally
from hetgmp.embedding.store import RowStore
from hetgmp.embedding.fixed.capacity import UniqueIds, peer_slots, unique_ids
from hetgmp.embedding.fixed.exchange import NOT_ANSWERED, FixedExchange


Adder = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


@dataclass
class Located:
    """Where the batch's distinct ids live, seen from this worker: [U] per distinct id
    (UniqueIds), [R] per exchange slot (the distinct id placed there, or none)."""

    ids: UniqueIds
    own: torch.Tensor        # bool [U]: a primary of this worker
    mirror: torch.Tensor     # bool [U]: a mirror here
    local: torch.Tensor      # int64 [U]: its row in the local table (see the module docstring)
    pend: torch.Tensor       # int64 [U]: pending index of a mirror (slot - Np), M otherwise
    per_peer: torch.Tensor   # int64 [P]: remote distinct ids per peer
    slot_has: torch.Tensor     # bool [R]: a distinct id sits in the slot
    slot_uid: torch.Tensor     # int64 [R]: its id, -1 if none
    slot_local: torch.Tensor   # int64 [R]: its local row, the sink if none
    slot_pend: torch.Tensor    # int64 [R]: its pending index (M if not a mirror, or none)
    slot_mirror: torch.Tensor  # bool [R]: it is a mirror here
    slot_counts: torch.Tensor  # int64 [R]: its occurrences in the batch, 0 if none
    slot_u: torch.Tensor       # int64 [R]: its index among the distinct ids, 0 if none
    order: tuple[torch.Tensor, torch.Tensor]  # [N] (local rows in the ids' sorted order, the sort's
                                              # permutation): the gather's and the update's order
                                              # (equal ids side by side, all the SGD update needs)
    local_N: torch.Tensor    # int64 [N]: the local row of every batch id, in batch order


def copy_located(dst: Located, src: Located) -> None:
    """Copy every tensor of src into dst's, in place."""
    def pairs(a, b):
        if isinstance(a, torch.Tensor):
            yield a, b
        elif isinstance(a, tuple):
            for x, y in zip(a, b):
                yield from pairs(x, y)
        else:  # a dataclass
            for f in fields(a):
                yield from pairs(getattr(a, f.name), getattr(b, f.name))

    for d, s in pairs(dst, src):
        d.copy_(s)


def staging(store: RowStore) -> int:
    """The first staging row (slot r's row is staging(store) + r)."""
    return store.sink + 1


def locate(store: RowStore, exchange: FixedExchange, ids_N: torch.Tensor, rank: int, num_ids: int,
           distinct_capacity: int | None = None) -> Located:
    """Where the batch's distinct ids live (the first `distinct_capacity` of them, if given)."""
    u = unique_ids(ids_N, num_ids)
    if distinct_capacity is not None:
        u = u.first(distinct_capacity)
    owner, slot = store.locate(u.uids_N)
    own = u.valid_N & (owner == rank)
    mirror = u.valid_N & ~own & (slot >= 0)
    remote = u.valid_N & ~own
    pos, per_peer = peer_slots(owner, remote, exchange.world)
    sent = remote & (pos < exchange.capacity)
    peer_slot = torch.where(sent, pos, exchange.capacity)
    staged = staging(store) + exchange.peer_block(owner) * (exchange.capacity + 1) + peer_slot
    local = torch.where(own | mirror, slot, torch.where(sent, staged, store.sink))
    pend = torch.where(mirror, slot - store.num_primaries, store.num_mirrors)
    # Per slot, in one gather: the distinct id's columns, or a row meaning none.
    index = torch.arange(len(local), device=local.device)
    columns = torch.stack([u.uids_N, local, pend, mirror.long(), u.counts_N, index], 1)
    none = torch.cat([torch.full((1, 1), v, device=columns.device) for v in (-1, store.sink, store.num_mirrors, 0, 0, 0)], 1)
    source = exchange.sources(owner, peer_slot)
    # Contiguous: the Triton stages (triton_rows.py) index them as flat arrays.
    uid, local_r, pend_r, mirror_r, counts_r, u_r = (c.contiguous() for c in torch.cat([columns, none])[source].unbind(1))
    sorted_run_N, perm_N = u.order
    return Located(u, own, mirror, local, pend, per_peer, source < len(local), uid, local_r, pend_r, mirror_r.bool(), counts_r, u_r,
                   (local[sorted_run_N], perm_N), local[u.inverse_N])


def locate_into(dst: Located, store: RowStore, exchange: FixedExchange, ids_N: torch.Tensor, rank: int, num_ids: int,
                distinct_capacity: int | None = None) -> None:
    """locate(), written into dst's tensors (compiled, the results go straight there)."""
    copy_located(dst, locate(store, exchange, ids_N, rank, num_ids, distinct_capacity))


def request(store: RowStore, at: Located, exchange: FixedExchange, overflow: torch.Tensor, capacity: int, distinct_capacity: int) -> None:
    """This step's requests: (id, local version or MUST_FETCH) in each slot; `overflow` [3] gets
    (batch reads that dropped rows, most ids asked of one peer, most distinct ids) tallied on the device."""
    exchange.write_requests(at.slot_uid, torch.where(at.slot_mirror, store.version[at.slot_local], MUST_FETCH))
    dropped = (at.per_peer > capacity).any() | (at.ids.distinct > distinct_capacity).any()
    overflow[0] += dropped.long()
    overflow[1] = torch.maximum(overflow[1], at.per_peer.max())
    overflow[2] = torch.maximum(overflow[2], at.ids.distinct.max())


def spread(n: int, store: RowStore) -> torch.Tensor:
    """n row indices spread over the store: where index_add_ is handed zeros to add, so that
    they do not all wait on one row's atomics."""
    return torch.arange(n, device=store.rows.device) % len(store.rows)


def index_add(target: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> None:
    """target.index_add_(0, index, values): the functions below add through `add`, this by default.
    A compiled step passes it wrapped in torch.compiler.disable: compiled, an accumulating index_put
    sorts its indices first (three radix sorts a call). Wrapped there, not here: the wrapper imports
    torch._dynamo, which in one process with Triton's interpreter (the CPU tests) breaks it."""
    target.index_add_(0, index, values)


def apply_pushes(store: RowStore, exchange: FixedExchange, add: Adder = index_add) -> None:
    """Owner: version += count for every received push, and add the deltas (with row-wise
    Adagrad, their accumulator deltas too; gradient pushes wait for the owner's step, adagrad.py)."""
    ids, counts, values = exchange.received_pushes()
    pushed = ids >= 0
    slot = torch.where(pushed, store.slot[ids.clamp(min=0)].long(), spread(len(ids), store))
    add(store.version, slot, torch.where(pushed, counts, 0))
    if not exchange.adagrad:  # every push a delta
        add(store.rows, slot, torch.where(pushed.unsqueeze(1), values, 0.0))
        return
    acc_delta, gradient = exchange.received_adagrad()
    delta = pushed & ~gradient
    add(store.rows, slot, torch.where(delta.unsqueeze(1), values, 0.0))
    add(store.acc, slot, torch.where(delta, acc_delta, 0.0))


def serve(store: RowStore, exchange: FixedExchange, bound: int, lag: torch.Tensor) -> None:
    """Owner: answer outdated requests (after the pushes are in); `lag` [2] gets
    (max lag of a fresh read served, fresh reads served with lag > 0) added on the device."""
    ids, req_version = exchange.received_requests()
    valid = ids >= 0
    slot = torch.where(valid, store.slot[ids.clamp(min=0)].long(), store.sink)
    version = store.version[slot]
    stale = valid & outdated(req_version, version, bound)
    exchange.write_answers(torch.where(stale, version, NOT_ANSWERED), store.rows[slot], store.acc[slot] if exchange.adagrad else None)
    fresh_lag = torch.where(valid & ~stale, version - req_version, 0)
    lag[0] = torch.maximum(lag[0], fresh_lag.max())
    lag[1] += (fresh_lag > 0).sum()


def answer(store: RowStore, exchange: FixedExchange, bound: int, lag: torch.Tensor, add: Adder = index_add) -> None:
    """Owner, between the rounds: add the pushes, then answer the requests."""
    apply_pushes(store, exchange, add)
    serve(store, exchange, bound, lag)


def copies(store: RowStore, rows: torch.Tensor, with_acc: bool) -> torch.Tensor:
    """[n, D + a]: the rows, and with_acc (a = 1: row-wise Adagrad where mirrors update locally,
    FixedExchange.adagrad) their accumulators as a last column (the layout of `base` and of an answer)."""
    if not with_acc:
        return store.rows[rows]
    return torch.cat([store.rows[rows], store.acc[rows].unsqueeze(1)], 1)


def set_copies(store: RowStore, rows: torch.Tensor, values: torch.Tensor) -> None:
    """Write `copies` back (the accumulators too if they are there)."""
    dim = store.rows.shape[1]
    store.rows[rows] = values[:, :dim].to(store.rows.dtype)
    if values.shape[1] > dim:
        store.acc[rows] = values[:, dim]


def receive(store: RowStore, at: Located, exchange: FixedExchange, base: torch.Tensor, fetched: torch.Tensor) -> None:
    """Reader: put round B's answers in place (staging rows, refreshed mirrors); `fetched` (int64 [3]
    on the device) counts (rows answered, mirrors refreshed, mirrors read). One scatter over the R slots:
    slot r writes its mirror's row if it refreshes one, else its own staging row (the answer: garbage if
    none came, and unread)."""
    version_R, answer_RA = exchange.answered_copies()
    r_R = torch.arange(exchange.slots, device=version_R.device)
    answered = at.slot_has & (version_R != NOT_ANSWERED)
    refresh = answered & at.slot_mirror
    target = torch.where(refresh, at.slot_local, staging(store) + r_R)
    base_at = torch.where(refresh, at.slot_pend, store.num_mirrors + r_R)
    copy_RA = refreshed(answer_RA, copies(store, target, exchange.adagrad), base[base_at])
    set_copies(store, target, torch.where(refresh.unsqueeze(1), copy_RA, answer_RA))
    base[base_at] = answer_RA
    store.version[target] = version_R
    fetched += torch.stack([answered.sum(), refresh.sum(), (at.slot_has & at.slot_mirror).sum()])


def write(store: RowStore, at: Located, bound: int, exchange: FixedExchange, base: torch.Tensor, pushed: torch.Tensor,
          add: Adder = index_add, grads_U: torch.Tensor | None = None) -> None:
    """After the table's update: versions, mirrors' counts, and the pushes for the next round A
    (the module docstring's table); `pushed` (a device scalar) counts the pushes.

    grads_U (row-wise Adagrad): each distinct id's gradient sum. Rows not stored here push it
    for the owner's step, and so do mirrors that do not update locally; due mirrors push their
    unpushed delta and accumulator delta. The owner counts its own rows' updates at its step."""
    if grads_U is not None and not updates_locally(bound, adagrad=True):
        push_gradients(at, exchange, grads_U, pushed)
        return
    counts = at.ids.counts_N
    new_count = store.pending_count[at.pend] + counts
    is_due = at.mirror & due(new_count, bound)
    # The same per slot (before the counts change below).
    new_count_R = store.pending_count[at.slot_pend] + at.slot_counts
    due_R = at.slot_mirror & due(new_count_R, bound)
    if grads_U is None:  # SGD updated the own rows here
        versioned, version_add = at.own | is_due, torch.where(at.own, counts, torch.where(is_due, new_count, 0))
    else:
        versioned, version_add = is_due, torch.where(is_due, new_count, 0)
    add(store.version, torch.where(versioned, at.local, spread(len(counts), store)), version_add)
    # A due count goes back to 0; the others add zeros, spread (as above).
    pending_at = torch.where(at.mirror, at.pend, spread(len(counts), store) % len(store.pending_count))
    add(store.pending_count, pending_at, torch.where(at.mirror, torch.where(is_due, counts - new_count, counts), 0))
    # Per slot: rows not stored here push this step's delta (or gradient), due mirrors what they have not pushed.
    push = (at.slot_has & ~at.slot_mirror) | due_R
    r_R = torch.arange(exchange.slots, device=push.device)
    base_at = torch.where(due_R, at.slot_pend, store.num_mirrors + r_R)
    copy_RA = copies(store, at.slot_local, exchange.adagrad)
    ids_R, counts_R = torch.where(push, at.slot_uid, -1), torch.where(push, torch.where(due_R, new_count_R, at.slot_counts), 0)
    if grads_U is None:
        _, answer_RD = exchange.answers()
        exchange.write_pushes(ids_R, counts_R, copy_RA - torch.where(due_R.unsqueeze(1), base[base_at], answer_RD))
    else:
        unpushed_RA = copy_RA - base[base_at]
        values_RD = torch.where(due_R.unsqueeze(1), unpushed_RA[:, :-1], grads_U[at.slot_u])
        exchange.write_pushes(ids_R, counts_R, values_RD, torch.where(due_R, unpushed_RA[:, -1], 0.0), ~due_R)
    base[base_at] = copy_RA
    pushed += push.sum()


def push_gradients(at: Located, exchange: FixedExchange, grads_U: torch.Tensor, pushed: torch.Tensor) -> None:
    """Row-wise Adagrad where no mirror updates locally: every row read here and not owned pushes
    its gradient sum and count, in the slot of its request."""
    push = at.slot_has
    exchange.write_pushes(torch.where(push, at.slot_uid, -1), torch.where(push, at.slot_counts, 0), grads_U[at.slot_u])
    pushed += push.sum()


def flush_pending(store: RowStore, exchange: FixedExchange, base: torch.Tensor, world: int, owner_step: Callable[[], None]) -> int:
    """Push every mirror's unpushed delta (copy - base) in rounds of at most C per peer, the owners
    applying each round as it arrives (`owner_step`). The last write's pushes must be sent before
    (ShardedTable.send_queued). Host syncs allowed (flush is rare); a collective. Returns the rows pushed."""
    exchange.clear_requests()
    m, first = store.num_mirrors, store.num_primaries
    ids = store.ids[first : first + m]
    has = store.pending_count[:m] > 0
    owner = store.owner[ids].long()
    pos, per_peer = peer_slots(owner, has, world) if m else (owner, torch.zeros(world, dtype=torch.int64, device=ids.device))
    mirror_rows = torch.arange(first, first + m, device=ids.device)
    unpushed = copies(store, mirror_rows, exchange.adagrad) - base[:m]
    rounds = torch.div(per_peer.max() + exchange.capacity - 1, exchange.capacity, rounding_mode="floor").reshape(1)
    if world > 1:
        torch.distributed.all_reduce(rounds, op=torch.distributed.ReduceOp.MAX, group=exchange.group)
    for k in range(int(rounds.item())):
        if not m:  # no mirror here: this worker only receives
            exchange.clear_pushes()
            exchange.round_a()
            owner_step()
            continue
        mine = has & (pos // exchange.capacity == k)
        source = exchange.sources(owner, torch.where(mine, pos % exchange.capacity, exchange.capacity))
        filled, pick = source < m, source.clamp(max=m - 1)  # a round runs only if some mirror has a delta
        values = torch.where(filled.unsqueeze(1), unpushed[pick], 0.0)
        exchange.write_pushes(torch.where(filled, ids[pick], -1), torch.where(filled, store.pending_count[pick], 0), values[:, : store.rows.shape[1]],
                              values[:, -1], torch.zeros_like(filled))
        exchange.round_a()
        owner_step()
    store.version[first : first + m] += store.pending_count[:m]
    base[:m] = copies(store, mirror_rows, exchange.adagrad)
    store.pending_count.zero_()
    exchange.clear_pushes()
    return int(has.sum().item())

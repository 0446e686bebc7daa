"""The sharded fast step's per-slot stages as Triton kernels (imported only where Triton is).

rows.py holds each stage in torch; compiled, inductor still makes
several kernels of each (an index_put, a gather, the int64 words, the counters
apart), and on an H100 pair at batch 8192, d = 128 the four stages took 0.17 ms
a step in about 45 kernels of 1-15 us. Here each stage reads and writes every
slot's record once, in one kernel (the owner's answer in two: every push must be
in before any row is served):

    request       slot r's request: id, and the mirror's version or MUST_FETCH;
                  program 0 also tallies the capacity overflow
    apply_pushes  owner: rows += delta, version += count for every received push (atomics:
                  two peers may push the same row)
    serve         owner: the answer (version if outdated, and the row) for every request;
                  the lag of fresh reads
    receive       reader: the answer into its staging row or refreshed mirror
    write_slots   after the update: each slot's push (staging row - answer, or a due
                  mirror's row - base), base := row
    write_ids     after write_slots (which reads the counts first): versions of own rows and
                  due mirrors, mirrors' pending counts

Each computes what its rows.py namesake computes, element for element:
tests/test_triton_rows.py holds them to it under Triton's interpreter. The
grid's second axis splits a row's columns (BLOCK_D at a time); the per-slot
words (ids, versions, counts, the counters) are written by its first block only.
Records are int32 words (exchange.py): an int64 is two words, low first;
a float is its bits.
"""

from __future__ import annotations

import types
from typing import Callable

import torch
import triton
import triton.language as tl

from hetgmp.embedding import staleness
from hetgmp.embedding.staleness import MUST_FETCH
from hetgmp.embedding.store import RowStore
from hetgmp.embedding.fixed.exchange import ANS_ROW, ANS_VERSION, NOT_ANSWERED, PUSH_COUNT, PUSH_DELTA, PUSH_ID, REQ_ID, REQ_VERSION, FixedExchange
from hetgmp.embedding.fixed.rows import Adder, Located, staging
from hetgmp.kernels.triton_gather import tile_shape



def _jit(fn: Callable) -> triton.JITFunction:
    """triton.jit of a plain-operator function defined elsewhere: Triton wants its language
    among the function's globals, so the function is rebuilt over globals that have it."""
    return triton.jit(types.FunctionType(fn.__code__, {**fn.__globals__, "tl": tl}, fn.__name__))


# The staleness rule, compiled from its one definition.
_outdated, _due, _refreshed = (_jit(fn) for fn in (staleness.outdated, staleness.due, staleness.refreshed))

# Stages without rows take SMALL_BLOCK slots or ids a program (at 2048 the request stage ran
# on 8 programs, 12 us).
SMALL_BLOCK = 256


def _tiles(slots: int, dim: int) -> tuple[tuple[int, int], int, int]:
    """(grid, BLOCK_R, BLOCK_D) for `slots` records of `dim` columns: the sorted gather's tiles."""
    block_r, block_d = tile_shape(dim)
    return (triton.cdiv(slots, block_r), triton.cdiv(dim, block_d)), block_r, block_d


@triton.jit
def _load_int64(word_ptr, mask):
    """The int64 whose two int32 words start at word_ptr (low word first)."""
    low = tl.load(word_ptr, mask=mask, other=0).to(tl.int64) & 0xFFFFFFFF
    high = tl.load(word_ptr + 1, mask=mask, other=0).to(tl.int64)
    return (high << 32) | low


@triton.jit
def _store_int64(word_ptr, value, mask):
    tl.store(word_ptr, value.to(tl.int32), mask=mask)  # the cast keeps the low 32 bits
    tl.store(word_ptr + 1, (value >> 32).to(tl.int32), mask=mask)


@triton.jit
def _request_kernel(
    send_ptr, W, uid_ptr, mirror_ptr, local_ptr, version_ptr, R,
    per_peer_ptr, P, distinct_ptr, overflow_ptr, C, U, MUST: tl.constexpr,
    REQ_V: tl.constexpr, REQ_I: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    inside = r < R
    mirror = tl.load(mirror_ptr + r, mask=inside, other=0) != 0
    local = tl.load(local_ptr + r, mask=inside, other=0)
    version = tl.load(version_ptr + local, mask=inside & mirror, other=MUST)
    record = send_ptr + r.to(tl.int64) * W
    _store_int64(record + REQ_V, version, inside)
    tl.store(record + REQ_I, tl.load(uid_ptr + r, mask=inside, other=-1).to(tl.int32), mask=inside)
    if tl.program_id(0) == 0:
        p = tl.arange(0, BLOCK_P)
        most = tl.max(tl.load(per_peer_ptr + p, mask=p < P, other=0), 0)
        distinct = tl.load(distinct_ptr)
        dropped = ((most > C) | (distinct > U)).to(tl.int64)
        tl.store(overflow_ptr, tl.load(overflow_ptr) + dropped)
        tl.store(overflow_ptr + 1, tl.maximum(tl.load(overflow_ptr + 1), most))
        tl.store(overflow_ptr + 2, tl.maximum(tl.load(overflow_ptr + 2), distinct))


@triton.jit
def _apply_pushes_kernel(
    recv_ptr, W, store_slot_ptr, rows_ptr, version_ptr, stride_rows, R, D,
    PUSH_I: tl.constexpr, PUSH_C: tl.constexpr, PUSH_D: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    record = recv_ptr + r.to(tl.int64) * W
    pushed = (r < R) & (tl.load(record + PUSH_I, mask=r < R, other=-1) >= 0)
    pushed_id = tl.load(record + PUSH_I, mask=pushed, other=0).to(tl.int64)
    slot = tl.load(store_slot_ptr + pushed_id, mask=pushed, other=0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cells = pushed[:, None] & (cols < D)[None, :]
    delta = tl.load(record[:, None] + PUSH_D + cols[None, :], mask=cells, other=0).to(tl.float32, bitcast=True)
    tl.atomic_add(rows_ptr + slot[:, None] * stride_rows + cols[None, :], delta, mask=cells)
    if tl.program_id(1) == 0:
        count = tl.load(record + PUSH_C, mask=pushed, other=0).to(tl.int64)
        tl.atomic_add(version_ptr + slot, count, mask=pushed)


@triton.jit
def _serve_kernel(
    recv_ptr, W_A, send_ptr, W_B, store_slot_ptr, rows_ptr, acc_ptr, version_ptr, lag_ptr, stride_rows, sink, bound, R, D,
    NOT_ANS: tl.constexpr, REQ_V: tl.constexpr, REQ_I: tl.constexpr, ANS_V: tl.constexpr, ANS_R: tl.constexpr,
    ANS_A: tl.constexpr, HAS_ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    inside = r < R
    request = recv_ptr + r.to(tl.int64) * W_A
    asked = tl.load(request + REQ_I, mask=inside, other=-1).to(tl.int64)
    valid = inside & (asked >= 0)
    slot = tl.where(valid, tl.load(store_slot_ptr + asked, mask=valid, other=0).to(tl.int64), sink)
    version = tl.load(version_ptr + slot, mask=inside, other=0)
    held = _load_int64(request + REQ_V, inside)
    outdated = valid & _outdated(held, version, bound)
    answer = send_ptr + r.to(tl.int64) * W_B
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cells = inside[:, None] & (cols < D)[None, :]
    row = tl.load(rows_ptr + slot[:, None] * stride_rows + cols[None, :], mask=cells, other=0.0).to(tl.float32)
    tl.store(answer[:, None] + ANS_R + cols[None, :], row.to(tl.int32, bitcast=True), mask=cells)
    if tl.program_id(1) == 0:
        _store_int64(answer + ANS_V, tl.where(outdated, version, NOT_ANS), inside)
        if HAS_ACC:
            acc = tl.load(acc_ptr + slot, mask=inside, other=0.0)
            tl.store(answer + ANS_A, acc.to(tl.int32, bitcast=True), mask=inside)
        fresh_lag = tl.where(valid & (outdated == 0), version - held, 0)
        tl.atomic_max(lag_ptr, tl.max(fresh_lag, 0))
        tl.atomic_add(lag_ptr + 1, tl.sum((fresh_lag > 0).to(tl.int64), 0))


@triton.jit
def _receive_kernel(
    recv_ptr, W, has_ptr, mirror_ptr, local_ptr, pend_ptr, rows_ptr, acc_ptr, base_ptr, version_ptr, fetched_ptr,
    stride_rows, stride_base, first_staging, M, R, D,
    NOT_ANS: tl.constexpr, ANS_V: tl.constexpr, ANS_R: tl.constexpr, ANS_A: tl.constexpr, HAS_ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    inside = r < R
    answer = recv_ptr + r.to(tl.int64) * W
    version = _load_int64(answer + ANS_V, inside)
    answered = inside & (tl.load(has_ptr + r, mask=inside, other=0) != 0) & (version != NOT_ANS)
    refresh = answered & (tl.load(mirror_ptr + r, mask=inside, other=0) != 0)
    target = tl.where(refresh, tl.load(local_ptr + r, mask=inside, other=0), first_staging + r)
    base_at = tl.where(refresh, tl.load(pend_ptr + r, mask=inside, other=0), M + r)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cells = inside[:, None] & (cols < D)[None, :]
    value = tl.load(answer[:, None] + ANS_R + cols[None, :], mask=cells, other=0).to(tl.float32, bitcast=True)
    row_ptrs = rows_ptr + target[:, None] * stride_rows + cols[None, :]
    base_ptrs = base_ptr + base_at[:, None] * stride_base + cols[None, :]
    copy = _refreshed(value, tl.load(row_ptrs, mask=cells, other=0.0).to(tl.float32), tl.load(base_ptrs, mask=cells, other=0.0))
    tl.store(row_ptrs, tl.where(refresh[:, None], copy, value).to(rows_ptr.dtype.element_ty), mask=cells)
    tl.store(base_ptrs, value, mask=cells)
    if tl.program_id(1) == 0:
        tl.store(version_ptr + target, version, mask=inside)
        if HAS_ACC:  # the accumulator: the base's last column, refreshed like the row
            acc_value = tl.load(answer + ANS_A, mask=inside, other=0).to(tl.float32, bitcast=True)
            acc_base_ptrs = base_ptr + base_at * stride_base + D
            acc_copy = _refreshed(acc_value, tl.load(acc_ptr + target, mask=inside, other=0.0), tl.load(acc_base_ptrs, mask=inside, other=0.0))
            tl.store(acc_ptr + target, tl.where(refresh, acc_copy, acc_value), mask=inside)
            tl.store(acc_base_ptrs, acc_value, mask=inside)
        tl.atomic_add(fetched_ptr, tl.sum(answered.to(tl.int64), 0))
        tl.atomic_add(fetched_ptr + 1, tl.sum(refresh.to(tl.int64), 0))
        mirror_read = inside & (tl.load(has_ptr + r, mask=inside, other=0) != 0) & (tl.load(mirror_ptr + r, mask=inside, other=0) != 0)
        tl.atomic_add(fetched_ptr + 2, tl.sum(mirror_read.to(tl.int64), 0))


@triton.jit
def _write_slots_kernel(
    send_ptr, W_A, recv_ptr, W_B, has_ptr, mirror_ptr, local_ptr, pend_ptr, uid_ptr, counts_ptr, pending_ptr,
    rows_ptr, base_ptr, pushed_ptr, stride_rows, stride_base, M, bound, R, D,
    PUSH_I: tl.constexpr, PUSH_C: tl.constexpr, PUSH_D: tl.constexpr, ANS_R: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    inside = r < R
    mirror = tl.load(mirror_ptr + r, mask=inside, other=0) != 0
    pend = tl.load(pend_ptr + r, mask=inside, other=0)
    counts = tl.load(counts_ptr + r, mask=inside, other=0)
    new_count = tl.load(pending_ptr + pend, mask=inside, other=0) + counts
    due = inside & mirror & _due(new_count, bound)
    push = (inside & (tl.load(has_ptr + r, mask=inside, other=0) != 0) & (mirror == 0)) | due
    base_at = tl.where(due, pend, M + r)
    local = tl.load(local_ptr + r, mask=inside, other=0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cells = inside[:, None] & (cols < D)[None, :]
    row = tl.load(rows_ptr + local[:, None] * stride_rows + cols[None, :], mask=cells, other=0.0).to(tl.float32)
    base_ptrs = base_ptr + base_at[:, None] * stride_base + cols[None, :]
    answer = tl.load(recv_ptr + r.to(tl.int64)[:, None] * W_B + ANS_R + cols[None, :], mask=cells, other=0).to(tl.float32, bitcast=True)
    delta = row - tl.where(due[:, None], tl.load(base_ptrs, mask=cells, other=0.0), answer)
    tl.store(base_ptrs, row, mask=cells)
    record = send_ptr + r.to(tl.int64) * W_A
    tl.store(record[:, None] + PUSH_D + cols[None, :], delta.to(tl.int32, bitcast=True), mask=cells)
    if tl.program_id(1) == 0:
        uid = tl.load(uid_ptr + r, mask=inside, other=-1)
        tl.store(record + PUSH_I, tl.where(push, uid, -1).to(tl.int32), mask=inside)
        tl.store(record + PUSH_C, tl.where(push, tl.where(due, new_count, counts), 0).to(tl.int32), mask=inside)
        tl.atomic_add(pushed_ptr, tl.sum(push.to(tl.int64), 0))


@triton.jit
def _write_ids_kernel(
    own_ptr, mirror_ptr, local_ptr, pend_ptr, counts_ptr, pending_ptr, version_ptr, bound, U, BLOCK_U: tl.constexpr,
):
    u = tl.program_id(0) * BLOCK_U + tl.arange(0, BLOCK_U)
    inside = u < U
    own = inside & (tl.load(own_ptr + u, mask=inside, other=0) != 0)
    mirror = inside & (tl.load(mirror_ptr + u, mask=inside, other=0) != 0)
    counts = tl.load(counts_ptr + u, mask=inside, other=0)
    pend = tl.load(pend_ptr + u, mask=mirror, other=0)
    new_count = tl.load(pending_ptr + pend, mask=mirror, other=0) + counts
    due = mirror & _due(new_count, bound)
    # Distinct ids have distinct rows and pending slots: plain read-modify-writes.
    versioned = own | due
    local = tl.load(local_ptr + u, mask=versioned, other=0)
    version = tl.load(version_ptr + local, mask=versioned, other=0)
    tl.store(version_ptr + local, version + tl.where(own, counts, new_count), mask=versioned)
    tl.store(pending_ptr + pend, tl.where(due, 0, new_count), mask=mirror)


def _acc(store: RowStore) -> torch.Tensor:
    """The accumulator, or with SGD any float tensor in its place (the kernels then never read it)."""
    return store.acc if store.acc is not None else store.rows


def request(store: RowStore, at: Located, exchange: FixedExchange, overflow: torch.Tensor, capacity: int, distinct_capacity: int) -> None:
    """rows.request."""
    send = exchange.send_a.view(exchange.slots, -1)
    _request_kernel[(triton.cdiv(exchange.slots, SMALL_BLOCK),)](
        send, send.shape[1], at.slot_uid, at.slot_mirror, at.slot_local, store.version, exchange.slots,
        at.per_peer, len(at.per_peer), at.ids.distinct, overflow, capacity, distinct_capacity, MUST=MUST_FETCH,
        REQ_V=REQ_VERSION, REQ_I=REQ_ID, BLOCK_R=SMALL_BLOCK, BLOCK_P=triton.next_power_of_2(len(at.per_peer)),
    )


def apply_pushes(store: RowStore, exchange: FixedExchange, add: Adder | None = None) -> None:
    """rows.apply_pushes (`add` is not used: the kernel adds atomically)."""
    grid, block_r, block_d = _tiles(exchange.slots, store.rows.shape[1])
    recv = exchange.recv_a.view(exchange.slots, -1)
    _apply_pushes_kernel[grid](
        recv, recv.shape[1], store.slot, store.rows, store.version, store.rows.stride(0), exchange.slots, store.rows.shape[1],
        PUSH_I=PUSH_ID, PUSH_C=PUSH_COUNT, PUSH_D=PUSH_DELTA, BLOCK_R=block_r, BLOCK_D=block_d,
    )


def serve(store: RowStore, exchange: FixedExchange, bound: int, lag: torch.Tensor) -> None:
    """rows.serve."""
    grid, block_r, block_d = _tiles(exchange.slots, store.rows.shape[1])
    recv, send = exchange.recv_a.view(exchange.slots, -1), exchange.send_b.view(exchange.slots, -1)
    _serve_kernel[grid](
        recv, recv.shape[1], send, send.shape[1], store.slot, store.rows, _acc(store), store.version, lag, store.rows.stride(0),
        store.sink, bound, exchange.slots, store.rows.shape[1], NOT_ANS=NOT_ANSWERED, REQ_V=REQ_VERSION, REQ_I=REQ_ID,
        ANS_V=ANS_VERSION, ANS_R=ANS_ROW, ANS_A=exchange.ans_acc, HAS_ACC=exchange.adagrad, BLOCK_R=block_r, BLOCK_D=block_d,
    )


def answer(store: RowStore, exchange: FixedExchange, bound: int, lag: torch.Tensor, add: Adder | None = None) -> None:
    """rows.answer: the pushes in, then the answers."""
    apply_pushes(store, exchange)
    serve(store, exchange, bound, lag)


def receive(store: RowStore, at: Located, exchange: FixedExchange, base: torch.Tensor, fetched: torch.Tensor) -> None:
    """rows.receive."""
    grid, block_r, block_d = _tiles(exchange.slots, store.rows.shape[1])
    recv = exchange.recv_b.view(exchange.slots, -1)
    _receive_kernel[grid](
        recv, recv.shape[1], at.slot_has, at.slot_mirror, at.slot_local, at.slot_pend, store.rows, _acc(store), base, store.version, fetched,
        store.rows.stride(0), base.stride(0), staging(store), store.num_mirrors, exchange.slots, store.rows.shape[1],
        NOT_ANS=NOT_ANSWERED, ANS_V=ANS_VERSION, ANS_R=ANS_ROW, ANS_A=exchange.ans_acc, HAS_ACC=exchange.adagrad,
        BLOCK_R=block_r, BLOCK_D=block_d,
    )


def write(store: RowStore, at: Located, bound: int, exchange: FixedExchange, base: torch.Tensor, pushed: torch.Tensor,
          add: Adder | None = None) -> None:
    """rows.write: the slots' pushes first (they read the pending counts), then the ids'."""
    grid, block_r, block_d = _tiles(exchange.slots, store.rows.shape[1])
    send, recv = exchange.send_a.view(exchange.slots, -1), exchange.recv_b.view(exchange.slots, -1)
    _write_slots_kernel[grid](
        send, send.shape[1], recv, recv.shape[1], at.slot_has, at.slot_mirror, at.slot_local, at.slot_pend, at.slot_uid,
        at.slot_counts, store.pending_count, store.rows, base, pushed, store.rows.stride(0), base.stride(0), store.num_mirrors,
        bound, exchange.slots, store.rows.shape[1],
        PUSH_I=PUSH_ID, PUSH_C=PUSH_COUNT, PUSH_D=PUSH_DELTA, ANS_R=ANS_ROW, BLOCK_R=block_r, BLOCK_D=block_d,
    )
    distinct = len(at.own)
    _write_ids_kernel[(triton.cdiv(distinct, SMALL_BLOCK),)](
        at.own, at.mirror, at.local, at.pend, at.ids.counts_N, store.pending_count, store.version, bound, distinct, BLOCK_U=SMALL_BLOCK,
    )

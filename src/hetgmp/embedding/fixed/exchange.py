"""The two fixed-size rounds of the sharded fast step, as int32 word buffers.

Every worker sends every other worker a block of C + 1 records a round (and
itself none), so `all_to_all_single` runs with split sizes fixed at
construction and no size ever travels to the host. Block k goes to peer k,
or k + 1 from the worker's own rank on (`peer_block`). Row C of each block
is a dump: it always goes out as padding (id -1).

Round A, one record [W_A] per slot (W_A = 5 + D, + 2 with row-wise Adagrad,
rounded up to even so the int64 version is 8-byte aligned in every row):

    words 0-1   request version (int64; MUST_FETCH = -1: the reader holds no copy)
    word  2     request id (-1: no request in this slot)
    word  3     push id (-1: no push in this slot)
    word  4     push count (updates the push carries)
    words 5..   push values (float32 [D]): a delta (-lr * gradient summed, or a mirror's
                unpushed delta), or with row-wise Adagrad a gradient sum (see word 6 + D)
    word  5 + D row-wise Adagrad: the accumulator delta of a delta push
    word  6 + D row-wise Adagrad: PUSH_GRADIENT if the values are a gradient sum for the
                owner's optimizer step, PUSH_DELTA_KIND if a delta to add

A push and a request share a record instead of travelling as two blocks of
C: a push of step t sits in the slot its id's request had in step t, both are
bounded by the same C, and the record stays a plain strided view (no flag
word, no second layout). Example, D = 2, rank 0 asks rank 1 for id 7 (held
as a mirror at version 12) in slot 0 and pushes id 4 (3 updates) in slot 1:

    to rank 1, slot 0: [12, 0,  7, -1, 0, 0.0, 0.0]
               slot 1: [-1, -1, -1, 4, 3, -0.1, 0.2]     (+ the dump row C)

Round B, the owner's answers at the requests' slots [W_B] (W_B = 2 + D, + 1 with
row-wise Adagrad, rounded up to even):

    words 0-1   version of the answered row (int64; -1: the reader's copy is fresh)
    words 2..   row (float32 [D])
    word  2 + D row-wise Adagrad: the row's accumulator
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from hetgmp.embedding.staleness import MUST_FETCH

NOT_ANSWERED = -1
WORD = torch.int32
REQ_VERSION, REQ_ID, PUSH_ID, PUSH_COUNT, PUSH_DELTA = 0, 2, 3, 4, 5
ANS_VERSION, ANS_ROW = 0, 2
PUSH_DELTA_KIND, PUSH_GRADIENT = 0, 1

__all__ = ["MUST_FETCH", "NOT_ANSWERED", "FixedExchange"]


def record_words(dim: int, adagrad: bool = False) -> tuple[int, int]:
    """(W_A, W_B): int32 words of a round A and a round B record, each rounded up to even."""
    extra_a, extra_b = (2, 1) if adagrad else (0, 0)
    return tuple(words + words % 2 for words in (PUSH_DELTA + dim + extra_a, ANS_ROW + dim + extra_b))


# An int64 travels as two int32 words, low word first. By arithmetic, not a dtype view: under
# torch.compile a write through an int64 view of an int32 buffer cannot be traced.
def _to_words(values: torch.Tensor) -> torch.Tensor:
    """int64 [R] -> int32 [R, 2]."""
    low = values & 0xFFFFFFFF
    return torch.stack([torch.where(low >= 2**31, low - 2**32, low), values >> 32], 1).to(WORD)


def _from_words(words: torch.Tensor) -> torch.Tensor:
    """int32 [R, 2] -> int64 [R]."""
    return (words[:, 1].long() << 32) | (words[:, 0].long() & 0xFFFFFFFF)


class FixedExchange:
    """The send and receive buffers of both rounds (allocated once: a CUDA graph reads them
    in place) and typed views into them. Shapes: [P - 1, C + 1, W]."""

    def __init__(self, world: int, rank: int, capacity: int, dim: int, device: torch.device, group: dist.ProcessGroup | None,
                 adagrad: bool = False) -> None:
        self.world, self.rank, self.capacity, self.dim, self.group, self.adagrad = world, rank, capacity, dim, group, adagrad
        # Row-wise Adagrad's words after the values (module docstring).
        self.push_acc, self.push_kind, self.ans_acc = PUSH_DELTA + dim, PUSH_DELTA + dim + 1, ANS_ROW + dim
        words_a, words_b = record_words(dim, adagrad)
        shape_a, shape_b = (world - 1, capacity + 1, words_a), (world - 1, capacity + 1, words_b)
        self.send_a = torch.zeros(shape_a, dtype=WORD, device=device)
        self.recv_a = torch.zeros_like(self.send_a)
        self.send_b = torch.zeros(shape_b, dtype=WORD, device=device)
        self.recv_b = torch.zeros_like(self.send_b)
        self.slots = (world - 1) * (capacity + 1)  # R: slot r = block * (C + 1) + slot in the block
        # Split sizes in records (dim 0 of the [R, W] views): C + 1 to and from each peer, none to itself.
        self._splits = [0 if p == rank else capacity + 1 for p in range(world)]
        self.clear_pushes()
        self.clear_requests()

    # ---- sizes ----

    def bytes_to_others(self) -> int:
        """Bytes one worker sends other workers per step (both rounds)."""
        return (self.send_a.numel() + self.send_b.numel()) * 4

    def peer_block(self, peer: torch.Tensor) -> torch.Tensor:
        """The block of each peer's records (the own rank has none: it maps onto the next block,
        callers never place records for it)."""
        return peer - (peer > self.rank).long()

    # ---- the sender's side of round A ----

    def clear_requests(self) -> None:
        self.send_a[:, :, REQ_ID].fill_(-1)

    def clear_pushes(self) -> None:
        self.send_a[:, :, PUSH_ID:].zero_()
        self.send_a[:, :, PUSH_ID].fill_(-1)

    def sources(self, peer_U: torch.Tensor, slot_U: torch.Tensor) -> torch.Tensor:
        """For each of the R = (P - 1)(C + 1) slots, the index of the entry (peer_U, slot_U) placed
        there, or U (none): int64 [R]. Entries with slot == C (no slot) go nowhere.

        Indices are scattered, each entry to its own cell (the ones without a slot to spare cells
        past the blocks): a scatter of whole records sent them all to the dump rows, and on a GPU
        writes that pile onto one row queue behind each other (0.86 ms a call, batch 8192, d = 128)."""
        n, blocks = len(peer_U), self.slots
        spare_U = blocks + torch.arange(n, device=peer_U.device)
        dest_U = torch.where(slot_U < self.capacity, self.peer_block(peer_U) * (self.capacity + 1) + slot_U, spare_U)
        source = torch.full((blocks + n,), n, dtype=torch.int64, device=peer_U.device)
        source[dest_U] = torch.arange(n, device=peer_U.device)
        return source[:blocks]

    def write_requests(self, ids_R: torch.Tensor, version_R: torch.Tensor) -> None:
        """One request per slot (id -1: none; version MUST_FETCH: the reader holds no copy)."""
        flat = self.send_a.view(self.slots, -1)
        flat[:, REQ_VERSION : REQ_VERSION + 2] = _to_words(version_R)
        flat[:, REQ_ID].copy_(ids_R)

    def write_pushes(self, ids_R: torch.Tensor, counts_R: torch.Tensor, values_RD: torch.Tensor,
                     acc_delta_R: torch.Tensor | None = None, gradient_R: torch.Tensor | None = None) -> None:
        """One push per slot, replacing the last ones (id -1: none). Row-wise Adagrad: each push's
        accumulator delta, and whether its values are a gradient sum (bool [R]) or a delta;
        both None: every push is a gradient sum."""
        flat = self.send_a.view(self.slots, -1)
        flat[:, PUSH_ID].copy_(ids_R)
        flat[:, PUSH_COUNT].copy_(counts_R)
        flat[:, PUSH_DELTA : PUSH_DELTA + self.dim] = values_RD.float().contiguous().view(WORD)
        if not self.adagrad:
            return
        if gradient_R is None:
            flat[:, self.push_acc].zero_()
            flat[:, self.push_kind].fill_(PUSH_GRADIENT)
        else:
            flat[:, self.push_acc] = acc_delta_R.float().contiguous().view(WORD)
            flat[:, self.push_kind] = torch.where(gradient_R, PUSH_GRADIENT, PUSH_DELTA_KIND).to(WORD)

    # ---- the rounds ----

    def round_a(self) -> None:
        self._round(self.recv_a, self.send_a)

    def round_b(self) -> None:
        self._round(self.recv_b, self.send_b)

    def _round(self, recv: torch.Tensor, send: torch.Tensor) -> None:
        dist.all_to_all_single(recv.view(self.slots, -1), send.view(self.slots, -1), self._splits, self._splits, group=self.group)

    # ---- the owner's side: what arrived in round A, and its answers ----

    def received_pushes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids int64, counts int64, values float32 [R, D]) of every received slot, R = (P - 1)(C + 1)."""
        flat = self.recv_a.view(-1, self.recv_a.shape[2])
        return flat[:, PUSH_ID].long(), flat[:, PUSH_COUNT].long(), flat[:, PUSH_DELTA : PUSH_DELTA + self.dim].view(torch.float32)

    def received_adagrad(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Row-wise Adagrad: (accumulator deltas float32 [R], gradient pushes bool [R]) of every received slot."""
        flat = self.recv_a.view(-1, self.recv_a.shape[2])
        return flat[:, self.push_acc : self.push_acc + 1].view(torch.float32).squeeze(1), flat[:, self.push_kind] == PUSH_GRADIENT

    def received_requests(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids int64 (-1: none), versions int64) of every received slot."""
        flat = self.recv_a.view(-1, self.recv_a.shape[2])
        return flat[:, REQ_ID].long(), _from_words(flat[:, REQ_VERSION : REQ_VERSION + 2])

    def write_answers(self, version_R: torch.Tensor, rows_RD: torch.Tensor, acc_R: torch.Tensor | None = None) -> None:
        """Answers in the received requests' order (version NOT_ANSWERED where the copy is fresh);
        row-wise Adagrad: with the rows' accumulators."""
        flat = self.send_b.view(-1, self.send_b.shape[2])
        flat[:, ANS_VERSION : ANS_VERSION + 2] = _to_words(version_R)
        flat[:, ANS_ROW : ANS_ROW + self.dim] = rows_RD.float().contiguous().view(WORD)
        if self.adagrad:
            flat[:, self.ans_acc] = acc_R.float().contiguous().view(WORD)

    # ---- the reader's side of round B ----

    def answers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(version int64 [R], row float32 [R, D]) answered at each slot (views of the receive buffer)."""
        version_R, copy_RA = self.answered_copies()
        return version_R, copy_RA[:, : self.dim]

    def answered_copies(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(version int64 [R], copy float32 [R, D + a]): the answered row, and with row-wise Adagrad
        (a = 1) its accumulator as a last column: the layout of a mirror's base (rows.py)."""
        flat = self.recv_b.view(self.slots, -1)
        width = self.dim + int(self.adagrad)
        return _from_words(flat[:, ANS_VERSION : ANS_VERSION + 2]), flat[:, ANS_ROW : ANS_ROW + width].view(torch.float32)

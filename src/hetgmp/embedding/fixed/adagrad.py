"""Row-wise Adagrad in the sharded table: one optimizer step per row at its owner, and
mirrors that keep the staleness bound.

Row-wise Adagrad is not linear in the gradient (acc += mean(g^2) over the row,
then row -= lr g / (sqrt(acc) + eps)), so a row that no copy updates for itself
must take its step on every worker's gradient summed, as the single-process
step does. Each step, on every worker:

    the batch's gradient summed per distinct id (OwnGradients.grads)
    own ids          kept, with their local rows, for the owner's step
    mirrors          when they update locally (bound > 0, staleness.updates_locally):
                     one Adagrad step on the copy and its own accumulator; the copy's
                     (row, accumulator) - base is pushed once due, as a delta (rows.write)
    the others       rows not stored here, and mirrors at bound 0: the gradient sum is
                     pushed, with its count, in the slot of the id's request
    round A of the next step (the pushes travel with the next batch's requests)
    owner, before serving: deltas added (rows and accumulators), then one Adagrad step
                     per row on the kept and pushed gradient sums (`apply_gradients`)

so at bound 0 every row of step t has its one step before anything reads it at
step t + 1: exactly synchronous row-wise Adagrad on the global batch. Above bound 0
a mirror's accumulator is the owner's as of its last refresh plus its own squared
gradients since; its accumulator delta reaches the owner with its row delta.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hetgmp.embedding.config import EmbeddingConfig
from hetgmp.embedding.fixed.exchange import FixedExchange
from hetgmp.embedding.fixed.rows import Adder, Located, apply_pushes, index_add, spread
from hetgmp.embedding.staleness import updates_locally
from hetgmp.embedding.store import RowStore
from hetgmp.kernels import Rank1Grad, sparse_update


@dataclass
class OwnGradients:
    """A worker's gradient sums of the last batch, per distinct id, and which rows it owns."""

    grads: torch.Tensor   # float32 [U, D]: each distinct id's gradient summed over its occurrences
    rows: torch.Tensor    # int64 [U]: the local row of an owned id (spread rows for the others)
    counts: torch.Tensor  # int64 [U]: an owned id's occurrences, 0 for the others (and once applied)


def new_own_gradients(distinct: int, dim: int, device: torch.device) -> OwnGradients:
    zeros = torch.zeros(distinct, dtype=torch.int64, device=device)
    return OwnGradients(torch.zeros(distinct, dim, device=device), zeros.clone(), zeros)


def gradient_sums(own: OwnGradients, at: Located, grad_ND: torch.Tensor | Rank1Grad, backend: str) -> None:
    """own.grads := the batch's gradient summed per distinct id. The SGD update with lr = -1 on a
    zeroed [U, D] table keyed by the ids' run numbers is exactly that sum (fp32, runs reduced in
    registers on the Triton path)."""
    own.grads.zero_()
    sparse_update(own.grads, at.ids.inverse_N, grad_ND, -1.0, backend=backend, order=at.ids.order)


def keep_own(store: RowStore, at: Located, own: OwnGradients) -> None:
    """Keep the owned ids' sums for the owner's step (rows.write pushes the others')."""
    own.rows.copy_(torch.where(at.own, at.local, spread(len(at.local), store)))
    own.counts.copy_(torch.where(at.own, at.ids.counts_N, 0))


def update_mirrors(store: RowStore, at: Located, own: OwnGradients, table: EmbeddingConfig, backend: str) -> None:
    """Mirrors that update locally: one Adagrad step on each copy with its own accumulator."""
    if not updates_locally(table.bound, adagrad=True):
        return
    rows = torch.where(at.mirror, at.local, spread(len(at.local), store))
    grads = torch.where(at.mirror.unsqueeze(1), own.grads, 0.0)  # zeros leave the spread rows as they are
    sparse_update(store.rows, rows, grads, table.lr, store.acc, table.adagrad_eps, backend=backend)


def apply_gradients(store: RowStore, exchange: FixedExchange, own: OwnGradients, table: EmbeddingConfig, add: Adder = index_add,
                    backend: str = "torch", scratch: torch.Tensor | None = None) -> None:
    """Owner: the received deltas added (where mirrors update locally), then one row-wise Adagrad
    step per row on its kept gradient plus every received gradient push; versions += the counts.
    The kept sums are then spent (counts zeroed). `backend` and `scratch` as for
    kernels.sparse_update (which sorts the rows and sums duplicates first)."""
    ids, counts, values = exchange.received_pushes()
    pushed = ids >= 0
    slot = torch.where(pushed, store.slot[ids.clamp(min=0)].long(), spread(len(ids), store))
    deltas = updates_locally(table.bound, adagrad=True)
    if deltas:  # the deltas and every push's count, then the gradient pushes' step
        apply_pushes(store, exchange, add)
        pushed = pushed & exchange.received_adagrad()[1]
    rows = torch.cat([own.rows, slot])
    mine = own.counts > 0
    grad = torch.cat([torch.where(mine.unsqueeze(1), own.grads, 0.0), torch.where(pushed.unsqueeze(1), values, 0.0)])
    sparse_update(store.rows, rows, grad, table.lr, store.acc, table.adagrad_eps, backend=backend, scratch_TD=scratch)
    if deltas:
        add(store.version, own.rows, own.counts)
    else:
        add(store.version, rows, torch.cat([own.counts, torch.where(pushed, counts, 0)]))
    own.counts.zero_()

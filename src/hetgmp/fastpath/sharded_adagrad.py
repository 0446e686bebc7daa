"""Row-wise Adagrad in the sharded fast step: one optimizer step per row, at its owner.

Row-wise Adagrad is not linear in the gradient (acc += mean(g^2) over the row,
then row -= lr g / (sqrt(acc) + eps)), so a row's step must see its gradient
summed over every worker's batch, as the single-process step does. With SGD
each worker can apply its own share and push the difference; here no worker
updates a row it does not own, and an owner updates its rows one round late:

    step t, every worker   the batch's gradient summed per distinct id (OwnGradients.grads)
                           own ids: kept, with their local rows and counts
                           other ids (fetched rows and mirrors alike): pushed in the slot
                           of their request, as raw gradient sums with their counts
    round A of step t + 1  (the pushes travel with step t + 1's requests)
    owner, before serving  kept + received gradients -> one Adagrad step per row
                           (sparse_update sums duplicates first), versions += counts

so every row of step t has its step before anything reads it at step t + 1:
bound 0 is exactly synchronous row-wise Adagrad on the global batch. A
mirror is read under the bound as with SGD (refreshed once its primary is
more than `bound` updates ahead), but it is never updated locally and its
gradient goes to the owner every step: its accumulator lives with the
owner only, and the copy counts its own updates as lag like anyone else's.
`flush_gradients` sends the last step's pushes and applies the kept sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hetgmp.embedding.config import EmbeddingConfig
from hetgmp.embedding.store import RowStore
from hetgmp.fastpath.fixed_exchange import FixedExchange
from hetgmp.fastpath.sharded_rows import Adder, Located, index_add, spread
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


def queue_gradients(store: RowStore, at: Located, exchange: FixedExchange, own: OwnGradients) -> torch.Tensor:
    """Keep the owned ids' sums for the owner's step; push the others' in their slots (for the
    next round A). Returns the number of pushes (a device scalar)."""
    own.rows.copy_(torch.where(at.own, at.local, spread(len(at.local), store)))
    own.counts.copy_(torch.where(at.own, at.ids.counts_N, 0))
    push = at.slot_has
    exchange.write_pushes(torch.where(push, at.slot_uid, -1), torch.where(push, at.slot_counts, 0), own.grads[at.slot_u])
    return push.sum()


def apply_gradients(store: RowStore, exchange: FixedExchange, own: OwnGradients, table: EmbeddingConfig, add: Adder = index_add,
                    backend: str = "torch", scratch: torch.Tensor | None = None) -> None:
    """Owner: one row-wise Adagrad step per row on its kept gradient plus every received push;
    versions += the counts. The kept sums are then spent (counts zeroed). `backend` and
    `scratch` as for kernels.sparse_update (which sorts the rows and sums duplicates first)."""
    ids, counts, grads = exchange.received_pushes()
    pushed = ids >= 0
    slot = torch.where(pushed, store.slot[ids.clamp(min=0)].long(), spread(len(ids), store))
    mine = own.counts > 0
    rows = torch.cat([own.rows, slot])
    grad = torch.cat([torch.where(mine.unsqueeze(1), own.grads, 0.0), torch.where(pushed.unsqueeze(1), grads, 0.0)])
    sparse_update(store.rows, rows, grad, table.lr, store.acc, table.adagrad_eps, backend=backend, scratch_TD=scratch)
    add(store.version, rows, torch.cat([own.counts, torch.where(pushed, counts, 0)]))
    own.counts.zero_()


def flush_gradients(store: RowStore, exchange: FixedExchange, own: OwnGradients | None, table: EmbeddingConfig) -> None:
    """Send the last step's pushes and apply them with the kept sums (a collective);
    afterwards the primaries hold every update."""
    exchange.clear_requests()
    exchange.round_a()
    if own is not None:
        apply_gradients(store, exchange, own, table)
    exchange.clear_pushes()

"""The sharded fast step's memory formula against the tensors its parts really hold."""

import copy

import numpy as np
import pytest
import torch

from hetgmp.embedding import EmbeddingConfig
from hetgmp.embedding.reference import plan_like, skewed_batches
from hetgmp.embedding.store import RowStore
from hetgmp.embedding.fixed.capacity import remote_per_peer, round_up
from hetgmp.embedding.fixed.exchange import FixedExchange
from hetgmp.embedding.fixed.footprint import sharded_step_bytes
from hetgmp.embedding.fixed.rows import locate


def _held_bytes(*objects) -> int:
    """Bytes of the distinct storages of every tensor reachable through the objects' attributes."""
    seen, total = set(), 0

    def visit(x):
        nonlocal total
        if isinstance(x, torch.Tensor):
            key = x.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += x.untyped_storage().nbytes()
        elif isinstance(x, (tuple, list)):
            for y in x:
                visit(y)
        elif hasattr(x, "__dict__"):
            for y in vars(x).values():
                visit(y)

    for obj in objects:
        visit(obj)
    return total


@pytest.mark.parametrize("world, optimizer", [(2, "sgd"), (3, "sgd"), (2, "rowwise_adagrad")])
def test_formula_covers_the_step_buffers_closely(world, optimizer):
    """Store (with staging rows), bases, both rounds' buffers and two located batches: the
    formula's terms for them hold at least what the tensors take, and at most 1.5x."""
    num_ids, dim, batch, fields = 4000, 16, 64, 8
    ids, _ = skewed_batches(num_ids, 4, world * batch, fields, seed=2)
    placement = plan_like(ids, num_ids, world, store_rate=0.2)
    table = EmbeddingConfig(num_ids, dim, lr=0.1, bound=3, optimizer=optimizer)
    mine = [torch.as_tensor(ids[t, :batch]) for t in range(4)]
    owner = torch.as_tensor(placement.owner.astype(np.int64))
    counts = [remote_per_peer(b, owner, 0, world, num_ids) for b in mine]
    capacity = round_up(max(int(p.max()) for p, _ in counts), 8)
    distinct = round_up(max(int(u) for _, u in counts), 8)
    exchange = FixedExchange(world, 0, capacity, dim, torch.device("cpu"), None)
    store = RowStore(table, placement, 0, torch.device("cpu"), spare=exchange.slots)
    m = store.num_mirrors
    base = torch.zeros(m + exchange.slots, dim)
    located = [locate(store, exchange, b.reshape(-1), 0, num_ids, distinct) for b in mine[:2]]
    located[1] = copy.deepcopy(located[1])
    terms = sharded_step_bytes(table, world, store.num_primaries, m, capacity, distinct, batch, fields, 0, 0, False)
    store_held = _held_bytes(store)
    formula = {"store": terms["maps"] + terms["table"] + terms["mirrors"] - 4 * dim * (m + exchange.slots),
               "base": 4 * dim * (m + exchange.slots), "rounds": terms["rounds"],
               "located": terms["located"] - 16 * world * distinct}
    held = {"store": store_held, "base": base.nbytes, "rounds": _held_bytes(exchange), "located": _held_bytes(located)}
    for part in formula:
        assert held[part] <= formula[part] <= 1.5 * held[part], (part, held[part], formula[part])

"""The Python API: a model defined only here trains through hetgmp.EmbeddingTable on 1 and 2
CPU workers (real Gloo processes); at bound 0 the two workers end where one does, and a
checkpoint of the model's state_dict round-trips the table's rows."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hetgmp
from hetgmp.embedding.reference import plan_like, skewed_batches
from workers import run_workers

IDS, FIELDS, DENSE, DIM, BATCH, STEPS = 300, 4, 3, 8, 32, 12


class TinyCTR(nn.Module):
    """A user's own model: the table, then an MLP on the rows and the dense features."""

    def __init__(self, table: hetgmp.EmbeddingTable) -> None:
        super().__init__()
        self.table = table
        torch.manual_seed(1)
        self.mlp = nn.Sequential(nn.Linear(FIELDS * DIM + DENSE, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.table(ids).flatten(1), dense], 1)).squeeze(1)


def _data():
    ids, labels = skewed_batches(IDS, STEPS, 2 * BATCH, FIELDS, seed=3)
    dense = np.random.default_rng(3).random((STEPS, 2 * BATCH, DENSE)).astype(np.float32)
    return ids, labels, dense


def _train(ctx, optimizer, bounds, mirrors):
    """Each worker takes its slice of every global batch: the README's loop, then a checkpoint; per bound."""
    return [_train_at(ctx, optimizer, bound, mirrors) for bound in bounds]


def _train_at(ctx, optimizer, bound, mirrors):
    ids, labels, dense = _data()
    plan = plan_like(ids, IDS, ctx.world_size, store_rate=0.3) if mirrors and ctx.world_size > 1 else None
    table = hetgmp.EmbeddingTable(IDS, DIM, ctx, optimizer=optimizer, lr=0.3, plan=plan, bound=bound, seed=5, init_std=0.1)
    model = TinyCTR(table)
    dense_opt = torch.optim.SGD(model.parameters(), lr=0.2)
    rows = slice(ctx.rank * len(ids[0]) // ctx.world_size, (ctx.rank + 1) * len(ids[0]) // ctx.world_size)
    batches = [(torch.as_tensor(dense[t, rows]), torch.as_tensor(ids[t, rows]), torch.as_tensor(labels[t, rows])) for t in range(STEPS)]
    losses = []
    for t, (d, i, y) in enumerate(batches):
        loss = F.binary_cross_entropy_with_logits(model(d, i), y)
        dense_opt.zero_grad()
        (loss / ctx.world_size).backward()
        hetgmp.all_reduce_gradients(model, ctx)
        table.step(batches[t + 1][1] if t + 1 < STEPS else None)
        dense_opt.step()
        losses.append(loss.item())
    table.flush()
    saved = model.state_dict()
    again = TinyCTR(hetgmp.EmbeddingTable(IDS, DIM, ctx, optimizer=optimizer, lr=0.3, plan=plan, bound=bound, seed=5))  # its rows start where the trained ones did
    again.load_state_dict(saved)
    return (table.full_table().numpy(), [p.detach().numpy().copy() for p in model.mlp.parameters()], losses,
            again.table.full_table().numpy(), sorted(saved))


@pytest.mark.parametrize("optimizer, mirrors", [("sgd", False), ("rowwise_adagrad", True)])
def test_two_workers_at_bound_zero_train_as_one_and_a_bound_lets_mirrors_lag(optimizer, mirrors):
    (one,) = run_workers(_train, 1, args=(optimizer, [0], mirrors))
    two = run_workers(_train, 2, args=(optimizer, [0, 100], mirrors))
    for (table, weights, losses, reloaded, keys), _ in two:
        np.testing.assert_allclose(table, one[0][0], rtol=0, atol=1e-5)
        for got, want in zip(weights, one[0][1]):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(reloaded, table)  # the checkpoint holds every row, by worker
        assert {"table.ids", "table.values", "table.versions", "mlp.0.weight"} <= set(keys)
    # each worker's mean loss over its half; their mean is the global batch's, as on one worker
    np.testing.assert_allclose(np.mean([r[0][2] for r in two], axis=0), one[0][2], rtol=1e-5)
    assert np.abs(one[0][0] - _start()).max() > 1e-3, "the rows must have moved far past the tolerance"
    bounded = [r[1] for r in two]
    assert all(np.isfinite(r[2]).all() for r in bounded)
    np.testing.assert_array_equal(bounded[0][0], bounded[1][0])  # every worker sees the same flushed table
    if mirrors:
        assert np.abs(bounded[0][0] - one[0][0]).max() > 1e-6, "bound 100 lets mirrors lag: not the synchronous result"


def _start() -> np.ndarray:
    from hetgmp.embedding import EmbeddingConfig
    from hetgmp.embedding.init import initial_rows

    return initial_rows(torch.arange(IDS), EmbeddingConfig(IDS, DIM, seed=5, init_std=0.1), torch.device("cpu")).numpy()

"""What a planned table (mirrors, bound) adds to a training step over row sharding.

Counted on CPU workers as aten operations per step (each a kernel launch on a
GPU, views excluded), on the same batches: at bound 0 mirrors must cost no
operation at all, and at bound > 0 the mirror updates stay within a fixed
budget of operations, however many mirrors there are.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from hetgmp.embedding import EmbeddingConfig, Placement, build_embedding
from hetgmp.embedding.reference import plan_like, skewed_batches
from workers import run_workers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from profile_sharded import OpCounter  # noqa: E402  (the profile's count of operations that launch a kernel)

# Operations the bound > 0 path may add per step with row-wise Adagrad (today 100, whatever the
# number of mirrors): the mirrors' own Adagrad step (a sparse update over the batch's distinct ids),
# their unpushed counts, due flags and versions, the due mirrors' row and accumulator deltas in the
# pushes, the owner adding pushed deltas before its step, accumulators in answers and refreshes.
# At bound 0 a mirror pushes its gradient like any row not stored here: nothing is added.
BOUND_BUDGET = 110


def _per_step(ctx, ids, placement: Placement, bound: int, num_ids: int) -> tuple[float, float]:
    """(operations, rows fetched) per step of the trainer's use of one table."""
    config = EmbeddingConfig(num_ids, 8, optimizer="rowwise_adagrad", lr=0.05, bound=bound, seed=3)
    emb = build_embedding(config, placement, ctx)
    rows = slice(ctx.rank * ids.shape[1] // 2, (ctx.rank + 1) * ids.shape[1] // 2)
    batches = [torch.as_tensor(ids[t, rows]) for t in range(len(ids))]
    weight = torch.randn(8, generator=torch.Generator().manual_seed(0))
    ops, fetched, counted = 0, 0, len(batches) // 2 - 1
    for t in range(len(batches) - 1):
        counter = OpCounter()
        with counter:
            (emb(batches[t]) * weight).sum().backward()
            emb.step(next_ids=batches[t + 1])
        if t >= len(batches) - 1 - counted:  # the later steps: mirrors are warm, some due
            ops, fetched = ops + counter.launches, fetched + emb.counters.as_dict()["rows_fetched"]
    return ops / counted, fetched / counted


def _modes(ctx) -> dict[str, tuple[float, float]]:
    num_ids = 5_000
    ids, _ = skewed_batches(num_ids, 6, 2 * 64, 8, seed=4)
    plan = plan_like(ids, num_ids, 2, store_rate=0.2)
    no_mirrors = Placement(plan.owner, [np.zeros(0, dtype=np.int64)] * 2)  # row sharding, the plan's owners
    return {"rows": _per_step(ctx, ids, no_mirrors, 0, num_ids),
            "plan": _per_step(ctx, ids, plan, 0, num_ids),
            "plan+bound": _per_step(ctx, ids, plan, 20, num_ids)}


def test_mirrors_cost_nothing_at_bound_zero_and_a_fixed_budget_above():
    for modes in run_workers(_modes, 2):
        (rows_ops, rows_fetched), (plan_ops, _), (bound_ops, bound_fetched) = modes["rows"], modes["plan"], modes["plan+bound"]
        assert plan_ops <= rows_ops, modes
        assert bound_ops <= rows_ops + BOUND_BUDGET, modes
        assert bound_fetched < rows_fetched, modes  # fresh mirrors are read locally

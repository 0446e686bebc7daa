"""The sharded fast step with multi-hot bags on 2 Gloo workers at bound 0, held to the
single-process reference (which pools with F.embedding_bag) on the whole global batch.

Bags (3, 1, 2) per sample over a skewed table of 500 ids; columns 0-2 and 4-5
pad with ids 7 and 11, about a third of their slots, so padding rows are
read by both workers (and mirrored) but must never move.
"""

import copy

import numpy as np
import pytest
import torch

from hetgmp.embedding import EmbeddingConfig
from hetgmp.embedding.fixed.capacity import find_capacities
from hetgmp.embedding.init import initial_rows
from hetgmp.embedding.reference import plan_like, skewed_batches
from hetgmp.fastpath import FastStepConfig, ReferenceStep
from hetgmp.fastpath.sharded_step import ShardedFastStep, ShardedStepConfig
from hetgmp.models import Bags, DLRMShape, build_model
from workers import run_workers

WORLD, IDS, DIM, DENSE, BATCH, STEPS = 2, 500, 8, 3, 16, 5
BAGS = Bags((3, 1, 2), (7, -1, 11))
LR, DENSE_LR = 0.5, 0.1


def _data(seed=4):
    ids, labels = skewed_batches(IDS, STEPS, WORLD * BATCH, BAGS.columns, seed=seed)
    rng = np.random.default_rng(seed)
    ids[np.isin(ids, (7, 11))] += 1  # the padding ids pad, and are no field's real id
    pad = rng.random(ids.shape) < 0.35
    ids[..., :3] = np.where(pad[..., :3], 7, ids[..., :3])
    ids[..., 4:] = np.where(pad[..., 4:], 11, ids[..., 4:])
    dense = rng.random((STEPS, WORLD * BATCH, DENSE)).astype(np.float32)
    return ids, labels, dense


def _model():
    torch.manual_seed(3)
    return build_model("dlrm", len(BAGS.sizes), DENSE, DIM, DLRMShape(bottom=(6,), top=(5,)))


def _worker(ctx, placement, arrays, optimizer, ahead, compile):
    ids, labels, dense = arrays
    rows = slice(ctx.rank * BATCH, (ctx.rank + 1) * BATCH)
    batches = [(torch.as_tensor(dense[t, rows]), torch.as_tensor(ids[t, rows]), torch.as_tensor(labels[t, rows])) for t in range(STEPS)]
    owner = torch.as_tensor(placement.owner.astype(np.int64))
    capacity, distinct = find_capacities([b[1] for b in batches], owner, ctx.rank, ctx.world_size, multiple=4)
    config = EmbeddingConfig(IDS, DIM, optimizer=optimizer, lr=LR, bound=0, init_std=0.3)
    cfg = ShardedStepConfig(capacity=capacity, distinct_capacity=distinct, dense_lr=DENSE_LR, compile=compile)
    step = ShardedFastStep.build(_model(), config, placement, ctx, cfg, bags=BAGS)
    losses = []
    for t, b in enumerate(batches):
        following = {"next_ids_BF": batches[(t + 1) % STEPS][1]} if ahead else {}
        losses.append(step.step(*b, **following).item())
    step.check_overflow()
    step.flush()
    return step.gather_table().numpy(), [p.detach().numpy().copy() for p in step.model.parameters()], losses


# compile: the model with its pooling (padding mask included) compiled, as `--compile` runs it.
@pytest.mark.parametrize("optimizer, ahead, compile", [("sgd", False, False), ("rowwise_adagrad", True, True)])
def test_sharded_step_with_bags_matches_one_process(optimizer, ahead, compile):
    arrays = _data()
    placement = plan_like(arrays[0], IDS, WORLD, store_rate=0.2)
    assert {7, 11} <= set(np.concatenate(placement.mirrors).tolist()), "the padding rows are hot: both workers mirror them"
    results = run_workers(_worker, WORLD, args=(placement, arrays, optimizer, ahead, compile), timeout_s=600)
    start = initial_rows(torch.arange(IDS), EmbeddingConfig(IDS, DIM, lr=LR, init_std=0.3), torch.device("cpu"))
    model = _model()
    ref = ReferenceStep(copy.deepcopy(model), start.clone(), FastStepConfig(lr=LR, dense_lr=DENSE_LR, sparse_optimizer=optimizer),
                        bags=BAGS)
    ids, labels, dense = arrays
    ref_losses = [ref.step(torch.as_tensor(dense[t]), torch.as_tensor(ids[t]), torch.as_tensor(labels[t])).item() for t in range(STEPS)]
    assert np.mean([r[2] for r in results], axis=0) == pytest.approx(ref_losses, rel=1e-6)
    for table, weights, _ in results:
        torch.testing.assert_close(torch.from_numpy(table), ref.table_ED.detach(), rtol=0, atol=1e-5)
        for got, want in zip(weights, ref.model.parameters()):
            torch.testing.assert_close(torch.from_numpy(got), want.detach(), rtol=0, atol=1e-5)
        # The padding rows never move; the table does.
        torch.testing.assert_close(torch.from_numpy(table[[7, 11]]), start[[7, 11]], rtol=0, atol=0)
    assert not torch.allclose(ref.table_ED, start, atol=1e-3)

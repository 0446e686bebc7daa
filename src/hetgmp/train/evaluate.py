"""Evaluation over the whole test split, all workers' predictions combined.

Every worker scores its contiguous test shard (the same number of `emb.read`
calls on every worker, see `EvalBatches`), the logits are gathered in rank
order, which is the test split's own order, and rank 0 computes the exact AUC,
log loss and accuracy against the split's labels. Example with 5 test rows
and 2 workers: worker 0 scores rows 0-1, worker 1 rows 2-4; after the gather
rank 0 holds the logits of rows 0..4 in order.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from hetgmp.auc import exact_auc
from hetgmp.data.arrays import Split
from hetgmp.distributed import DistContext
from hetgmp.models.bags import Bags, pool_rows
from hetgmp.train.data import EvalBatches, contiguous_shard


@torch.no_grad()
def predict_shard(model: nn.Module, emb, batches: EvalBatches, bags: Bags | None = None) -> torch.Tensor:
    """Logits of this worker's test shard, in row order (padding batches dropped)."""
    emb.flush()  # every update at its owner first: the rows every worker reads are the trained ones
    was_training = model.training
    model.eval()
    out = []
    for batch, valid in batches:
        logits = model(batch.dense, pool_rows(bags, emb.read(batch.ids), batch.ids))
        if valid:
            out.append(logits.float())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, device=batches.rows.device)


def gather_logits(local: torch.Tensor, test_rows: int, ctx: DistContext) -> torch.Tensor:
    """All workers' logits of the test split, in the split's order (every rank gets them)."""
    if ctx.world_size == 1:
        return local
    sizes = [b - a for a, b in (contiguous_shard(test_rows, r, ctx.world_size) for r in range(ctx.world_size))]
    padded = torch.zeros(max(sizes), dtype=local.dtype, device=local.device)
    padded[: local.numel()] = local
    gathered = torch.empty(ctx.world_size * max(sizes), dtype=local.dtype, device=local.device)
    # all_gather_single replaces all_gather_into_tensor from torch 2.13 on; 2.11 has only the latter.
    all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    all_gather(gathered, padded)
    parts = gathered.view(ctx.world_size, -1)
    return torch.cat([parts[r, : sizes[r]] for r in range(ctx.world_size)])


def metrics(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Exact AUC, mean log loss (from logits, stable) and accuracy at probability 0.5."""
    y = torch.from_numpy(np.asarray(labels, dtype=np.float64))
    z = torch.from_numpy(np.asarray(logits, dtype=np.float64))
    return {
        "auc": float(exact_auc(np.asarray(labels), np.asarray(logits))),
        "logloss": float(F.binary_cross_entropy_with_logits(z, y)),
        "accuracy": float(((z > 0).double() == y).double().mean()),
    }


def evaluate(model: nn.Module, emb, batches: EvalBatches, split: Split, ctx: DistContext,
             bags: Bags | None = None) -> dict[str, float] | None:
    """Score the whole test split; rank 0 returns its metrics, other ranks None."""
    logits = gather_logits(predict_shard(model, emb, batches, bags), len(split), ctx)
    if not ctx.is_main:
        return None
    result = metrics(np.asarray(split.labels), logits.cpu().numpy())
    result["test_rows"] = len(split)
    return result

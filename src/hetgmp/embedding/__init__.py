"""The embedding runtime: owners, mirrors and bounded staleness (SPEC section 3).

One worker: LocalEmbedding, a plain table. Several: ShardedTable (fixed/table.py),
the one multi-worker table, whose staleness rule is staleness.py; the fused
sharded step (hetgmp.fastpath.ShardedFastStep) trains the same table in stages.

    config = EmbeddingConfig(num_ids=E, dim=16, optimizer="rowwise_adagrad", lr=0.05, bound=100)
    emb = build_embedding(config, Placement.from_partition(plan, store_rate=0.01), ctx)
    for t, batch in enumerate(batches):
        out = model(batch.dense, emb(batch.ids))          # (B, F, D)
        (loss / ctx.world_size).backward()                # gradient of the global-batch mean
        all-reduce (SUM) dense grads; dense_opt.step()
        emb.step(next_ids=next_batch.ids)                 # apply, and start reading the next batch
    emb.flush()

Gradient convention: every worker back-propagates its local mean loss divided
by the world size; dense gradients are all-reduced with SUM, and the table
applies the sparse gradients it receives unscaled. With one worker this is the
plain mean loss.
"""

from __future__ import annotations

from hetgmp.distributed import DistContext
from hetgmp.embedding.config import EmbeddingConfig
from hetgmp.embedding.counters import StepCounters
from hetgmp.embedding.local import LocalEmbedding
from hetgmp.embedding.placement import Placement
from hetgmp.embedding.fixed.table import ShardedTable
from hetgmp.errors import HetGMPError

__all__ = ["EmbeddingConfig", "LocalEmbedding", "Placement", "ShardedTable", "StepCounters", "build_embedding"]


def build_embedding(config: EmbeddingConfig, placement: Placement | None, ctx: DistContext) -> LocalEmbedding | ShardedTable:
    """world_size 1 -> LocalEmbedding (a plain table); else ShardedTable (placement required)."""
    if ctx.world_size == 1:
        return LocalEmbedding(config, ctx.device)
    if placement is None:
        raise HetGMPError(
            f"{ctx.world_size} workers need a placement of the embedding rows: pass a partition plan "
            "or Placement.random(num_ids, world_size, seed)"
        )
    return ShardedTable(config, placement, ctx)

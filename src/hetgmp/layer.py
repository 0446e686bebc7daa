"""hetgmp's embedding table as an `nn.Module` layer for a model of your own.

    ctx = hetgmp.init_distributed("auto")            # alone, or one worker of a torchrun job
    table = hetgmp.EmbeddingTable(num_ids, 16, ctx, plan="plan.npz", store_rate=0.01, bound=100)
    model = MyModel(table).to(ctx.device)            # the table is a submodule like any other
    dense_opt = torch.optim.Adam(model.parameters()) # the table's rows are not parameters
    for dense, ids, labels in batches:
        loss = F.binary_cross_entropy_with_logits(model(dense, ids), labels)
        dense_opt.zero_grad()
        (loss / ctx.world_size).backward()           # the gradient of the global batch's mean
        hetgmp.all_reduce_gradients(model, ctx)      # dense gradients summed over workers
        table.step(next_ids)                         # the rows' update; reads the next batch's rows
        dense_opt.step()
    table.flush(); torch.save(model.state_dict(), f"model-{ctx.rank}.pt")

One worker holds the whole table (LocalEmbedding). Several share it as
HET-GMP does (ShardedTable): each row has one owner, each worker mirrors
the rows its plan ranks first (`store_rate` of its candidate list) and reads a
mirror locally while it misses at most `bound` updates (hetgmp.embedding.staleness).
Without a plan the rows are sharded by a seeded hash, with no mirrors. At bound 0
several workers train exactly as one does on the global batch.

The table trains with its own sparse optimizer (SGD or row-wise Adagrad, in
`step`), not with the dense optimizer: call `step` once after each backward.
`state_dict` holds this worker's rows (its primaries after a flush: ids,
values, versions, accumulators); load it into a table of the same placement.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from hetgmp.distributed import DistContext
from hetgmp.embedding import EmbeddingConfig, LocalEmbedding, Placement, ShardedTable, build_embedding
from hetgmp.errors import HetGMPError

STATE_KEYS = ("ids", "values", "versions", "accumulator")


class EmbeddingTable(nn.Module):
    """An embedding table of `num_ids` rows, `dim` wide, trained by its own sparse optimizer.

    forward(ids) -> rows: ids int (B, F) global ids (any leading shape) -> float32 (B, F, dim),
    differentiable; the next `step` applies their gradient.

    optimizer: "sgd" or "rowwise_adagrad" (one accumulator per row); lr: its learning rate.
    plan: a partition plan (`hetgmp partition`, a path or a PartitionPlan, or a Placement) for several workers;
    store_rate: the share of each worker's candidate list it mirrors; bound: the staleness bound
    in updates (0: synchronous). seed: the rows' initial draw, N(0, init_std), the same on any
    number of workers.
    """

    def __init__(self, num_ids: int, dim: int, ctx: DistContext, optimizer: str = "rowwise_adagrad", lr: float = 0.05,
                 plan=None, store_rate: float = 0.01, bound: int = 0, seed: int = 0, init_std: float = 0.01) -> None:
        super().__init__()
        self.ctx = ctx
        self.config = EmbeddingConfig(num_ids, dim, optimizer=optimizer, lr=lr, bound=bound, seed=seed, init_std=init_std)
        self.table: LocalEmbedding | ShardedTable = build_embedding(self.config, placement_of(plan, store_rate, num_ids, ctx, seed), ctx)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids.to(self.ctx.device))

    @torch.no_grad()
    def step(self, next_ids: torch.Tensor | None = None) -> None:
        """Apply the gradient of the last forward's rows; with `next_ids` (the next batch's), read
        their rows now, with this step's updates on their way (a collective on several workers)."""
        self.table.step(next_ids=None if next_ids is None else next_ids.to(self.ctx.device))

    @torch.no_grad()
    def read(self, ids: torch.Tensor) -> torch.Tensor:
        """The rows as they are, without gradient (evaluation; a collective on several workers)."""
        return self.table.read(ids.to(self.ctx.device))

    def flush(self) -> None:
        """Every update at its owner (before evaluating or saving; a collective on several workers)."""
        self.table.flush()

    def full_table(self) -> torch.Tensor:
        """The whole (num_ids, dim) table on every worker, after a flush (a collective)."""
        self.flush()
        return self.table.gather_table()

    def _save_to_state_dict(self, destination: OrderedDict, prefix: str, keep_vars: bool) -> None:
        for key, value in self.table.state_dict().items():
            destination[prefix + key] = value

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs) -> None:
        mine = {key: state_dict[prefix + key] for key in STATE_KEYS if prefix + key in state_dict}
        if not mine:
            missing_keys.extend(prefix + key for key in STATE_KEYS[:3])
            return
        try:
            self.table.load_state_dict(mine)
        except HetGMPError as e:
            error_msgs.append(str(e))


def placement_of(plan, store_rate: float, num_ids: int, ctx: DistContext, seed: int) -> Placement | None:
    """Where the rows live: one worker holds them all; several follow the plan, or a seeded hash."""
    if ctx.world_size == 1:
        return None
    if plan is None:
        return Placement.random(num_ids, ctx.world_size, seed)
    if isinstance(plan, Placement):  # owners and mirrors made by hand
        return plan
    from hetgmp.partition.plan import PartitionPlan

    plan = PartitionPlan.load(plan) if not isinstance(plan, PartitionPlan) else plan
    if len(np.asarray(plan.embed_partition)) != num_ids:
        raise HetGMPError(f"the plan places {len(plan.embed_partition)} ids but the table has {num_ids}: "
                          "make the plan for this dataset (`hetgmp partition`)")
    return Placement.from_partition(plan, store_rate)


def all_reduce_gradients(module: nn.Module, ctx: DistContext) -> None:
    """Sum the dense parameters' gradients over the workers, in one flat collective (a no-op
    alone). With each worker's loss divided by the world size, that is the global batch's mean."""
    if ctx.world_size == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()

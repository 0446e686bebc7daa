"""Build everything one worker trains with: data, plan, model, embedding, optimizers, step.

`build_run(cfg, ctx)` returns a `Run`; the loop in `loop.py` only drives it.
Dense parameters start identical on every rank: the same seed draws them and
rank 0's copy is broadcast anyway, so a launcher that seeds differently
cannot make the replicas diverge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from hetgmp.data.arrays import Dataset, load_dataset
from hetgmp.distributed import DistContext
from hetgmp.embedding import EmbeddingConfig, LocalEmbedding, Placement
from hetgmp.embedding.fixed.table import ShardedTable
from hetgmp.embedding.memory import check_batch_memory
from hetgmp.fastpath import FastStep, ShardedFastStep
from hetgmp.fastpath.config import dense_optimizer
from hetgmp.models import Bags, build_model, model_size, shape_of, shape_record, table_width
from hetgmp.train.checkpoint import fingerprint
from hetgmp.train.config import TrainConfig
from hetgmp.train.data import BatchStream, EvalBatches, shard_sizes, steps_per_epoch, train_rows
from hetgmp.train.fast import build_fast_step, describe_fast_step
from hetgmp.train.sharded_fast import build_sharded_fast_step, build_sharded_table, describe_sharded_fast_step
from hetgmp.train.validate import check_rows


@dataclass
class Run:
    """One worker's training state and the fixed facts about the run."""

    cfg: TrainConfig
    ctx: DistContext
    dataset: Dataset
    model: nn.Module
    emb: LocalEmbedding | ShardedTable  # one worker's table, or its share of the sharded one
    dense_opt: torch.optim.Optimizer
    stream: BatchStream
    eval_batches: EvalBatches | None
    steps_per_epoch: int
    total_steps: int
    plan_id: str
    fast: FastStep | ShardedFastStep | None  # the fast step (train/fast.py, train/sharded_fast.py), which owns
                                             # dense_opt; None: the general step
    step_note: str  # which step trains and why, for the start-up line
    mirrors_note: str  # how many rows each worker mirrors, ranked how, for the start-up line
    scanned_steps: int  # steps whose batches the sharded table's capacities were measured on (0: one worker)
    placement: Placement | None  # who owns and mirrors each row; None: one worker holds every row
    bags: Bags | None = None  # how the steps pool multi-hot bags; None: one id per field
    resume_note: str = ""  # how a resume placed the rows, for the start-up line (train/reshard.py)

    def checkpoint_meta(self) -> dict[str, Any]:
        """What a checkpoint of this run records about itself (see checkpoint.MUST_MATCH)."""
        meta = self.dataset.meta
        return {
            "model": self.cfg.model, "embed_dim": self.cfg.embed_dim,
            "shape": shape_record(shape_of(self.cfg.model, self.cfg.shape())),
            **({} if self.bags is None else self.bags.describe()),
            "table_width": table_width(self.cfg.model, self.cfg.embed_dim),
            "num_fields": meta.num_fields, "num_dense": int(self.dataset.train.dense.shape[1]),
            "num_ids": meta.num_ids, "world_size": self.ctx.world_size, "plan": self.plan_id,
            "optimizer": self.cfg.optimizer, "sparse_optimizer": self.cfg.sparse_optimizer,
            "steps_per_epoch": self.steps_per_epoch,  # where a resume on another worker count continues (reshard.py)
            "config_hash": self.cfg.config_hash(), "data": str(self.dataset.directory),
            # For scoring (hetgmp.serve): the vocabulary it was trained on, and the seed its rows were drawn from.
            "fields": list(meta.fields), "seed": self.cfg.seed,
        }


def load_plan(path: str, dataset: Dataset, ctx: DistContext):
    """The partition plan, checked against the dataset, the worker count and (across nodes) GPUs per node."""
    from hetgmp.partition.plan import PartitionPlan

    plan = PartitionPlan.load(path)
    multi_node = ctx.world_size > ctx.local_world_size
    plan.check(dataset.meta, ctx.world_size, gpus_per_node=ctx.local_world_size if multi_node else None, train_ids=dataset.train.sparse,
               data=dataset.directory)
    return plan


def build_placement(cfg: TrainConfig, plan, num_ids: int, ctx: DistContext) -> tuple[Placement | None, str]:
    """The embedding placement and an id of it for checkpoints."""
    if plan is not None:
        return Placement.from_partition(plan, cfg.store_rate), fingerprint(plan.embed_partition, plan.data_partition)
    if ctx.world_size == 1:
        return None, "single"
    return Placement.random(num_ids, ctx.world_size, cfg.seed), f"random(seed={cfg.seed})"


def describe_mirrors(cfg: TrainConfig, plan, placement: Placement | None) -> str:
    """e.g. "mirrors 5,120 / 5,087 rows per worker (0.01 of each candidate list, staleness ranking for bound 100)"."""
    counts = [len(m) for m in placement.mirrors] if placement is not None else []
    if not any(counts):
        return "no mirrors"
    from hetgmp.partition.report import ranking_name

    note = f"mirrors {' / '.join(f'{c:,}' for c in counts)} rows per worker ({cfg.store_rate:g} of each candidate list, {ranking_name(plan.meta)}"
    if plan.meta.get("ranking") == "staleness" and plan.meta.get("bound") != cfg.bound:
        note += f"; this run's bound is {cfg.bound}: `hetgmp partition --bound {cfg.bound}` ranks for it"
    return note + ")"


def broadcast_parameters(model: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every rank (one flattened collective)."""
    if ctx.world_size == 1:
        return
    tensors = [t.data for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.broadcast(flat, src=0)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset: offset + t.numel()].view_as(t))
        offset += t.numel()


def total_steps(cfg: TrainConfig, per_epoch: int) -> int:
    if cfg.iter is not None:
        return cfg.iter
    return max(1, round((cfg.epochs if cfg.epochs is not None else 1.0) * per_epoch))


def build_run(cfg: TrainConfig, ctx: DistContext) -> Run:
    step_kind, why = cfg.choose_step(ctx.world_size)
    dataset = load_dataset(cfg.data)
    meta = dataset.meta
    bags = Bags.of(meta, cfg.bag_pooling)
    num_dense = int(dataset.train.dense.shape[1])
    shape = cfg.shape()
    size = model_size(cfg.model, meta.num_fields, num_dense, cfg.embed_dim, shape)
    check_batch_memory(cfg.batch_size, meta.num_fields, num_dense, table_width(cfg.model, cfg.embed_dim), ctx.device,
                       size.layer_width, size.parameters, meta.id_columns)
    plan = load_plan(cfg.partition, dataset, ctx) if cfg.partition else None
    placement, plan_id = build_placement(cfg, plan, meta.num_ids, ctx)
    data_partition = None if plan is None else np.asarray(plan.data_partition)

    sizes = shard_sizes(data_partition, meta.train_rows, ctx.world_size)
    per_epoch = steps_per_epoch(sizes, cfg.batch_size)
    rows = train_rows(dataset.train, data_partition, ctx.rank, ctx.world_size, ctx.device)
    check_rows(dataset.directory, "train", meta, rows.ids, rows.labels)
    total = total_steps(cfg, per_epoch)
    stream = BatchStream(rows, cfg.batch_size, per_epoch, cfg.seed, ctx.rank, total)
    eval_batches = EvalBatches(dataset.test, ctx.rank, ctx.world_size, cfg.batch_size, ctx.device) if cfg.val else None
    if eval_batches is not None:
        check_rows(dataset.directory, "test", meta, eval_batches.rows.ids, eval_batches.rows.labels)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, meta.num_fields, num_dense, cfg.embed_dim, shape).to(ctx.device)
    broadcast_parameters(model, ctx)
    emb_cfg = EmbeddingConfig(
        num_ids=meta.num_ids, dim=table_width(cfg.model, cfg.embed_dim), optimizer=cfg.sparse_optimizer,
        lr=cfg.sparse_lr, bound=cfg.bound, seed=cfg.seed, ids_per_batch=cfg.batch_size * meta.id_columns,
    )
    if ctx.world_size > 1:
        emb, scanned = build_sharded_table(cfg, emb_cfg, placement, ctx, stream, total)
        fast = build_sharded_fast_step(cfg, model, emb, bags) if step_kind == "fast" else None
        how = describe_sharded_fast_step(fast) if fast else None
    else:
        emb, scanned = LocalEmbedding(emb_cfg, ctx.device), 0
        fast = build_fast_step(cfg, model, emb, stream, bags) if step_kind == "fast" else None
        how = describe_fast_step(fast) if fast else None
    dense_opt = fast.optimizer if fast else dense_optimizer(list(model.parameters()), cfg.optimizer, cfg.lr, ctx.device, cfg.skip_nonfinite)
    note = f"step {step_kind} ({why}" + (f"; {how})" if how else ")")
    return Run(cfg, ctx, dataset, model, emb, dense_opt, stream, eval_batches, per_epoch, total, plan_id, fast, note,
               describe_mirrors(cfg, plan, placement), scanned, placement, bags)

"""Start-up check that every worker was given the same run: one all-gather of a settings hash.

Workers started by hand (torchrun on each node, mpirun with per-rank
arguments) can disagree on a flag. Most disagreements would not fail
cleanly: a different --embed-dim or --model changes the size of the first
broadcast, a different --log-every or --iter the order of collectives, a
different --bound or --lr silently trains something else. So before any
other collective each worker hashes the settings that must agree, the ranks
all-gather the 64-bit hashes, and on a mismatch they all-gather the settings
themselves (only then) to name every rank and field that differs:

    workers were started with different settings: rank 1 differs from rank 0 in
    embed_dim (8 vs 16), bound (100 vs 0): start every worker with the same flags ...

What must agree: every TrainConfig field except those naming per-worker
paths or launch details (LOCAL_FIELDS), plus the dataset's shape from
meta.json and the size of the plan file (a cheap identity; the plan's
contents are checked against the dataset by `PartitionPlan.check`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import torch
import torch.distributed as dist

from hetgmp.data.arrays import read_meta
from hetgmp.distributed import DistContext
from hetgmp.errors import HetGMPError
from hetgmp.train.config import TrainConfig

# May differ between workers: where files are on each node, and how it was launched.
LOCAL_FIELDS = ("data", "partition", "output", "metrics", "tensorboard", "checkpoint_dir", "nproc", "progress")


def run_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The settings every worker must share (see the module doc)."""
    settings = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in LOCAL_FIELDS}
    meta = read_meta(cfg.data)
    settings.update({
        "dataset fields": meta.fields, "dataset train_rows": meta.train_rows,
        "dataset test_rows": meta.test_rows, "dataset num_dense": meta.num_dense,
    })
    plan = cfg.partition
    settings["partition file size"] = os.path.getsize(plan) if plan and os.path.isfile(plan) else None
    return settings


def settings_hash(settings: dict[str, Any]) -> int:
    """63 bits of SHA-256 of the settings (fits an int64 tensor)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


def check_same_settings(cfg: TrainConfig, ctx: DistContext) -> None:
    """Collective: raise HetGMPError on every rank if any two workers' settings differ."""
    if ctx.world_size == 1:
        return
    settings = run_settings(cfg)
    mine = torch.tensor([settings_hash(settings)], dtype=torch.int64, device=ctx.device)
    hashes = [torch.zeros_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(hashes, mine)
    if all(int(h) == int(hashes[0]) for h in hashes):
        return
    every: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(every, settings)
    raise HetGMPError(
        f"workers were started with different settings: {describe_differences(every)}: start every worker with "
        "the same flags (and the same dataset and plan), e.g. one torchrun/mpirun command line for all nodes"
    )


def describe_differences(every: list[dict[str, Any]]) -> str:
    """'rank 1 differs from rank 0 in embed_dim (8 vs 16), bound (100 vs 0); rank 3 ...'."""
    base = every[0]
    parts = []
    for rank, settings in enumerate(every[1:], start=1):
        fields = [f"{k} ({settings.get(k)!r} vs {base.get(k)!r})" for k in sorted(base.keys() | settings.keys()) if settings.get(k) != base.get(k)]
        if fields:
            parts.append(f"rank {rank} differs from rank 0 in {', '.join(fields)}")
    return "; ".join(parts)

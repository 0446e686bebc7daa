"""Where a run without --checkpoint-dir saves its final model: a fresh run folder.

    runs/wdl-20261202-101500/      (runs/ under the current directory, or $HETGMP_RUNS_DIR)
    runs/wdl-20261202-101500-2/    a second run started in the same second

Rank 0 picks the name and creates the folder (so that no other run takes it),
and every worker takes rank 0's choice: the workers of a job started by
torchrun or mpirun read the clock at different moments.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import torch.distributed as dist

from hetgmp.distributed import DistContext
from hetgmp.errors import HetGMPError
from hetgmp.train.config import TrainConfig

RUNS_ENV = "HETGMP_RUNS_DIR"


def new_run_folder(model: str) -> Path:
    root = Path(os.environ.get(RUNS_ENV) or "runs")
    stamp = f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    for k in range(1, 10_000):
        folder = root / (stamp if k == 1 else f"{stamp}-{k}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
        except OSError as e:
            raise HetGMPError(f"cannot create the run folder {folder} for the model ({e}): pass --checkpoint-dir DIR, "
                              f"or set {RUNS_ENV} to a folder you can write") from e
    raise HetGMPError(f"{root} already holds 10,000 runs named {stamp}*: pass --checkpoint-dir DIR")


def with_model_folder(cfg: TrainConfig, ctx: DistContext) -> TrainConfig:
    """`cfg` itself with --checkpoint-dir, else a copy saving to a new run folder (a collective)."""
    if cfg.checkpoint_dir:
        return cfg
    chosen = [str(new_run_folder(cfg.model)) if ctx.is_main else None]
    if ctx.world_size > 1:
        dist.broadcast_object_list(chosen, src=0)
    return dataclasses.replace(cfg, checkpoint_dir=chosen[0])

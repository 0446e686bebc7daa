"""Checkpoints: one directory per save, complete only once every rank has written.

Layout of --checkpoint-dir (2 workers, saved at steps 200 and 300):

    step-000200/   rank-0.pt  rank-1.pt  meta.json
    step-000300/   rank-0.pt  rank-1.pt  meta.json
    latest         the text "step-000300"

A save writes into `.step-000300.tmp/`; each rank writes its own `rank-R.pt`
(atomically), all ranks meet at a barrier, then rank 0 writes `meta.json`,
renames the folder, points `latest` at it (atomic file replace) and deletes
all but the newest KEEP folders. A kill at any moment leaves `latest` naming
a complete checkpoint. Multi-node jobs need the directory on a shared
filesystem.

`rank-R.pt` holds plain tensors and containers (loadable with
`torch.load(weights_only=True)`): the model's and dense optimizer's state
dicts, the embedding's `state_dict()` (this rank's primaries, versions and
optimizer state, taken after `emb.flush()`), the RNG states and the step.
`meta.json` records what the checkpoint belongs to; resuming with another
model, dims, world size or plan is refused, naming every difference.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from hetgmp.atomic import atomic_file
from hetgmp.distributed import DistContext
from hetgmp.errors import HetGMPError

KEEP = 2
_DAMAGED_FIX = "delete that step folder and point `latest` at the previous one (or delete `latest` to start over)"
LATEST = "latest"
# meta.json keys that must match for a checkpoint to be resumed.
MUST_MATCH = ("model", "embed_dim", "table_width", "num_fields", "num_dense", "num_ids", "world_size", "plan",
              "optimizer", "sparse_optimizer")


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def fingerprint(*arrays: np.ndarray) -> str:
    """Short SHA-256 of arrays' shapes, dtypes and bytes (identifies a partition plan)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:16]


def _barrier(ctx: DistContext) -> None:
    if ctx.world_size > 1:
        dist.barrier()


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], meta: dict[str, Any], ctx: DistContext) -> Path:
    """Collective: every rank passes its own `state`; returns the finished folder."""
    directory = Path(directory)
    final = directory / step_name(step)
    tmp = directory / f".{final.name}.tmp"
    if ctx.is_main:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier(ctx)
    with atomic_file(tmp / f"rank-{ctx.rank}.pt") as part:
        torch.save(state, part)
    _barrier(ctx)
    if ctx.is_main:
        (tmp / "meta.json").write_text(json.dumps({**meta, "step": step}, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        with atomic_file(directory / LATEST) as pointer:
            pointer.write_text(final.name + "\n")
        _prune(directory)
    _barrier(ctx)
    return final


def _prune(directory: Path) -> None:
    done = sorted(p for p in directory.glob("step-*") if p.is_dir())
    for old in done[:-KEEP]:
        shutil.rmtree(old)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The folder `latest` names, or None when there is no checkpoint yet."""
    pointer = Path(directory) / LATEST
    if not pointer.is_file():
        return None
    folder = Path(directory) / pointer.read_text().strip()
    if not (folder / "meta.json").is_file():
        raise HetGMPError(f"{pointer} names {folder}, which is not a complete checkpoint: delete {pointer} to start over")
    return folder


def read_meta(folder: Path) -> dict[str, Any]:
    """A checkpoint folder's meta.json (what it belongs to and its step)."""
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise HetGMPError(f"{folder / 'meta.json'} is not readable JSON ({e}): the checkpoint is damaged; {_DAMAGED_FIX}") from e


def check_meta(folder: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """Read meta.json and refuse a checkpoint of another model, dims, world size or plan."""
    saved = read_meta(folder)
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, this run {expected.get(k)!r}" for k in MUST_MATCH if saved.get(k) != expected.get(k)]
    if diffs:
        raise HetGMPError(
            f"checkpoint {folder} belongs to another run ({'; '.join(diffs)}): "
            "resume with the same --model, --embed-dim, optimizers, dataset, plan and worker count, "
            "or choose a new --checkpoint-dir"
        )
    return saved


def load_rank_state(folder: Path, rank: int) -> dict[str, Any]:
    """This rank's state on the CPU: each load_state_dict moves it to its device, and
    the dense optimizer's step counters stay on the CPU as the optimizer keeps them."""
    path = folder / f"rank-{rank}.pt"
    if not path.is_file():
        raise HetGMPError(f"{path} is missing: the checkpoint {folder} is damaged; {_DAMAGED_FIX}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        # RuntimeError: torch's zip reader on a truncated file; UnpicklingError:
        # garbage bytes, or objects other than tensors and containers.
        first = str(e).strip().splitlines()[0][:200]
        raise HetGMPError(
            f"{path} is not a loadable checkpoint (expected a torch.save zip of tensors, loaded with weights_only=True; "
            f"torch says: {first}): the file is truncated or corrupt; {_DAMAGED_FIX}"
        ) from e


# How an optimizer runs, not what it computes: kept from the optimizer a checkpoint is
# loaded into, so that the fast step's Adam (capturable, for its CUDA graph) and the
# general step's (fused under --skip-nonfinite) resume each other's checkpoints.
RUN_FLAGS = ("capturable", "fused", "foreach", "differentiable")


def optimizer_state_for(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> dict[str, Any]:
    """`saved` (an optimizer state dict) with `optimizer`'s own RUN_FLAGS in each param group.

    torch's `load_state_dict` takes every group setting from the checkpoint and
    places Adam's step counters by them (on the device when capturable or fused).
    """
    mine = optimizer.param_groups
    if len(saved["param_groups"]) != len(mine):
        return saved  # load_state_dict names the mismatch
    groups = [{**group, **{k: own[k] for k in RUN_FLAGS if k in own}} for group, own in zip(saved["param_groups"], mine)]
    return {**saved, "param_groups": groups}


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())

"""The one place that reads the launcher's environment and sets up torch.distributed.

Supported launchers, detected from their variables:
  - torchrun:  RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT
  - Open MPI:  OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK / _LOCAL_SIZE
  - MPICH/PMI: PMI_RANK, PMI_SIZE (local rank from MPI_LOCALRANKID if set)
With none of them, the process is a single worker (world size 1).
Under mpirun, MASTER_ADDR defaults to 127.0.0.1 and MASTER_PORT to 29500;
set both for multi-node mpirun jobs.

Backend: NCCL when the device is CUDA, Gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from hetgmp.errors import HetGMPError

DEFAULT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in the job, as the launcher described it."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launcher: str  # "torchrun", "mpirun" or "none"


@dataclass(frozen=True)
class DistContext:
    """Topology and device of this worker; passed to every distributed component."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str | None  # None when world_size == 1 and no group was made

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int_env(*names: str) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return None


def detect_launch() -> LaunchEnv:
    """Read rank and world size from torchrun, Open MPI or PMI variables."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = _int_env("RANK"), _int_env("WORLD_SIZE")
        local = _int_env("LOCAL_RANK") or 0
        local_world = _int_env("LOCAL_WORLD_SIZE") or world
        return LaunchEnv(rank, world, local, local_world, "torchrun")
    rank = _int_env("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
    world = _int_env("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
    if rank is not None and world is not None:
        local = _int_env("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID") or 0
        local_world = _int_env("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS") or world
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        return LaunchEnv(rank, world, local, local_world, "mpirun")
    return LaunchEnv(0, 1, 0, 1, "none")


def pick_device(kind: str, local_rank: int) -> torch.device:
    """`kind` is "cpu", "cuda" or "auto" (CUDA when available)."""
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise HetGMPError("--device cuda was asked for but torch sees no CUDA device: use --device cpu, or install a CUDA build of torch")
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise HetGMPError(
                f"local rank {local_rank} needs GPU {local_rank} but this node has {count}: "
                f"start at most {count} workers per node (torchrun --nproc-per-node {count})"
            )
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if kind != "cpu":
        raise HetGMPError(f"--device must be cpu, cuda or auto, not {kind!r}")
    return torch.device("cpu")


def init_distributed(device_kind: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """Join the launcher's job (or stay single) and return this worker's context.

    Collectives time out after `timeout_s`, so a lost worker ends the job with
    an error instead of a hang.
    """
    env = detect_launch()
    device = pick_device(device_kind, env.local_rank)
    backend = None
    if env.world_size > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(
                backend=backend,
                rank=env.rank,
                world_size=env.world_size,
                timeout=datetime.timedelta(seconds=timeout_s),
                device_id=device if device.type == "cuda" else None,
            )
    return DistContext(env.rank, env.world_size, env.local_rank, env.local_world_size, device, backend)


def shutdown() -> None:
    """Leave the process group if one was made."""
    if dist.is_initialized():
        dist.destroy_process_group()

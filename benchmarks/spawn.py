"""Run a benchmark's workers: in this process under a launcher, else one spawned process each.

    launch(run, args, workers=2)   # torchrun/mpirun set RANK: run(args) here; otherwise spawn
                                   # `workers` processes with RANK, WORLD_SIZE and a free port set
                                   # as torchrun would, each calling run(args)

`run` must live at module level (spawned processes import it by reference).
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(rank: int, world: int, port: int, run: Callable[[Any], None], args: Any) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    run(args)


def launch(run: Callable[[Any], None], args: Any, workers: int) -> None:
    if "RANK" in os.environ:  # torchrun (or another launcher) started this process
        run(args)
    else:
        mp.spawn(_spawned, args=(workers, free_port(), run, args), nprocs=workers)

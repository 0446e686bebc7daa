"""Run a function in N real worker processes joined by a Gloo process group.

    results = run_workers(my_fn, world_size=2, args=(cfg,))

`my_fn(ctx: DistContext, *args)` must live at module level (it is pickled by
reference for the spawn start method). Each worker gets RANK/WORLD_SIZE and a
fresh MASTER_PORT in its environment, exactly as torchrun would set them, then
calls `hetgmp.distributed.init_distributed("cpu")`. Returns each rank's
return value, in rank order; a worker's exception fails the caller with that
worker's traceback.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import socket
import traceback
from typing import Any, Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(fn: Callable, rank: int, world_size: int, port: int, args: tuple, out: mp.Queue) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    import torch

    torch.set_num_threads(1)  # N workers share the CI machine's 2 cores
    from hetgmp.distributed import init_distributed, shutdown

    try:
        ctx = init_distributed("cpu", timeout_s=60)
        out.put((rank, True, fn(ctx, *args)))
        shutdown()
    except BaseException:  # report everything, including assertion errors
        out.put((rank, False, traceback.format_exc()))


def run_workers(fn: Callable, world_size: int, args: tuple = (), timeout_s: float = 180) -> list[Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(fn, r, world_size, port, args, out)) for r in range(world_size)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    try:
        for _ in range(world_size):
            rank, ok, value = out.get(timeout=timeout_s)
            if not ok:
                raise AssertionError(f"worker {rank} failed:\n{value}")
            results[rank] = value
    except queue.Empty:
        raise AssertionError(f"workers did not finish within {timeout_s}s (finished: {sorted(results)})") from None
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world_size)]

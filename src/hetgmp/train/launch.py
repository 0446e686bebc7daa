"""`--nproc N`: start N local workers, stream their output, stop them all if one dies.

Each worker is `python -m hetgmp.cli ARGV` with the variables torchrun would
set (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1,
a free MASTER_PORT), so it joins the job through `hetgmp.distributed` exactly
as under torchrun. Workers inherit this process's stdout and stderr, so their
lines appear as they are written. CPU workers get cores // N threads each
(OMP_NUM_THREADS, when set, wins).

If a worker exits with a non-zero code, the others are terminated (then
killed after a grace period) and a HetGMPError names the rank and its code.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from hetgmp.errors import HetGMPError

GRACE_S = 10.0
POLL_S = 0.1


def free_port() -> int:
    """A TCP port free on this machine right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(rank: int, nproc: int, port: int, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(nproc),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    env.setdefault("OMP_NUM_THREADS", str(threads))  # a user's own setting wins
    return env


def launch_local(nproc: int, argv: list[str]) -> int:
    """Run `hetgmp ARGV` as N workers; returns 0 when all succeed, else raises HetGMPError."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    port = free_port()
    cmd = [sys.executable, "-m", "hetgmp.cli", *argv]
    # A SIGTERM to the launcher (a job scheduler's stop) must stop the workers too.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    procs = [subprocess.Popen(cmd, env=worker_env(r, nproc, port, max(1, cores // nproc))) for r in range(nproc)]
    try:
        return watch(procs)
    finally:
        stop(procs)
        signal.signal(signal.SIGTERM, previous)


def watch(procs: list[subprocess.Popen]) -> int:
    """Wait for every worker; on the first failure, stop the rest and name it."""
    while True:
        codes = [p.poll() for p in procs]
        failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            rank, code = failed[0]
            stop(procs)
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            raise HetGMPError(
                f"worker rank {rank} of {len(procs)} {how}; the other workers were stopped "
                "(its error is printed above)"
            )
        if all(code == 0 for code in codes):
            return 0
        time.sleep(POLL_S)


def stop(procs: list[subprocess.Popen]) -> None:
    """Terminate the workers still running, then kill any that outlive the grace period."""
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        p.terminate()
    deadline = time.monotonic() + GRACE_S
    for p in alive:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

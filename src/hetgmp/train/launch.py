"""`--nproc N`: start N local workers, stream their output, stop them all if one dies.

Each worker is `python -m hetgmp.cli ARGV` with the variables torchrun would
set (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1,
a free MASTER_PORT), so it joins the job through `hetgmp.distributed` exactly
as under torchrun. Workers inherit this process's stdout, so their lines
appear as they are written; their stderr passes through this process
(`WorkerStderr`) as it comes, except their `hetgmp train: error: ...` and
`interrupted` lines: an error every worker hit is printed once, naming the
ranks it came from, and an interrupt once, by this process. CPU workers get
cores // N threads each (OMP_NUM_THREADS, when set, wins).

If a worker exits with a non-zero code, the others get a moment to report
their own errors, are terminated (then killed after a grace period), and
every error is printed once; a worker that died without one (killed by a
signal, the out-of-memory killer) is named with the last checkpoint and the
command that resumes from it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO

GRACE_S = 10.0
POLL_S = 0.1
SETTLE_S = 1.0  # after the first failure, how long the other workers may take to report their own errors
PREFIX = "hetgmp train"
_HELD = (b": error: ", b": interrupted")  # the worker lines this process prints once for all


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


class WorkerStderr:
    """Copies one worker's stderr to ours as it comes (progress bars' `\\r` updates included),
    holding back its `hetgmp ...: error:` and `interrupted` lines in `reports`."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.reports: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), name="hetgmp-worker-stderr", daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[bytes]) -> None:
        pending = b""
        while chunk := os.read(stream.fileno(), 1 << 16):
            pending = self._forward(pending + chunk)
        if pending:
            self._emit(pending)
        stream.close()

    def _forward(self, data: bytes) -> bytes:
        """Emit every finished line (or `\\r`-ended bar) of `data`; return what must wait for more."""
        while True:
            ends = [i for i in (data.find(b"\n"), data.find(b"\r")) if i >= 0]
            if not ends:
                if data.startswith(b"hetgmp ") or b"hetgmp ".startswith(data):
                    return data  # may become a held line: wait for its end
                self._emit(data)
                return b""
            cut = min(ends) + 1
            self._emit(data[:cut])
            data = data[cut:]

    def _emit(self, piece: bytes) -> None:
        if piece.startswith(b"hetgmp ") and any(mark in piece for mark in _HELD):
            self.reports.append(piece.decode(errors="replace").strip())
        else:
            sys.stderr.buffer.write(piece)
            sys.stderr.buffer.flush()

    def errors(self) -> list[str]:
        return [line.split(": error: ", 1)[1] for line in self.reports if ": error: " in line]

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def launch_local(nproc: int, argv: list[str], checkpoint_dir: str | None = None) -> int:
    """Run `hetgmp ARGV` as N workers; returns 0 when all succeed, else 2 once every error is printed."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    port = free_port()
    cmd = [sys.executable, "-m", "hetgmp.cli", *argv]
    # A SIGTERM to the launcher (a job scheduler's stop) must stop the workers too.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    procs = [subprocess.Popen(cmd, env=worker_env(r, nproc, port, max(1, cores // nproc)), stderr=subprocess.PIPE) for r in range(nproc)]
    pumps = [WorkerStderr(p.stderr) for p in procs]
    try:
        return watch(procs, pumps, checkpoint_dir)
    finally:
        stop(procs)
        for pump in pumps:
            pump.join(GRACE_S)
        signal.signal(signal.SIGTERM, previous)


def watch(procs: list[subprocess.Popen], pumps: list[WorkerStderr] | None = None, checkpoint_dir: str | None = None) -> int:
    """Wait for every worker; on the first failure, stop the rest and print each error once (exit code 2)."""
    while True:
        codes = [p.poll() for p in procs]
        if any(code not in (None, 0) for code in codes):
            break
        if all(code == 0 for code in codes):
            return 0
        time.sleep(POLL_S)
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(POLL_S)
    ended = [p.poll() for p in procs]  # None: still running, stopped by us below
    stop(procs)
    for pump in pumps or []:
        pump.join(GRACE_S)
    report_failures(ended, pumps, checkpoint_dir)
    return 2


def report_failures(ended: list[int | None], pumps: list[WorkerStderr] | None, checkpoint_dir: str | None) -> None:
    """Each distinct worker error once with the ranks it came from, and each worker that failed
    without one, with where the run can continue from."""
    from hetgmp.train.checkpoint import resume_hint

    world, by_message = len(ended), {}
    for rank, pump in enumerate(pumps or []):
        for message in dict.fromkeys(pump.errors()):
            by_message.setdefault(message, []).append(rank)
    for message, ranks in by_message.items():
        print(f"{PREFIX}: error: {message} ({_ranks(ranks, world)})", file=sys.stderr)
    reported = {rank for ranks in by_message.values() for rank in ranks}
    silent = [(rank, code) for rank, code in enumerate(ended) if code not in (None, 0) and rank not in reported]
    for rank, code in silent:
        how = (f"was killed by signal {-code} ({signal.Signals(-code).name}: the out-of-memory killer or a kill)" if code < 0
               else f"exited with code {code}")
        print(f"{PREFIX}: error: worker rank {rank} of {world} {how} without an error of its own (any traceback it printed is "
              f"above); the other workers were stopped; {resume_hint(checkpoint_dir)}", file=sys.stderr)


def _ranks(ranks: list[int], world: int) -> str:
    if len(ranks) == world:
        return f"all {world} workers"
    return f"worker rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} of {world}"


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

"""Start `hetgmp` processes the way a launcher would, and find or kill them.

    procs = start_workers(["train", "--data", ds, ...], world_size=4)   # RANK/WORLD_SIZE/... set, as torchrun does
    wait_for(lambda: (ckpt / "latest").exists())
    os.kill(procs[2].pid, signal.SIGKILL)
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

from cli_runs import cli_env, hetgmp_command
from workers import free_port

# Two CI cores are shared by every worker of a test.
ENV = cli_env(OMP_NUM_THREADS="1")


def hetgmp(*argv: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run `hetgmp ARGV` to completion, capturing its output."""
    return subprocess.run(hetgmp_command(*argv), env=ENV, capture_output=True, text=True, timeout=timeout)


def _answer_ctrl_c() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a shell's background job may have inherited SIGINT ignored


def start(*argv: str, env: dict[str, str] | None = None, session: bool = False) -> subprocess.Popen:
    """`hetgmp ARGV` running, output captured; `session`: in a process group of its own (for a terminal's Ctrl-C)."""
    return subprocess.Popen(hetgmp_command(*argv), env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_answer_ctrl_c, start_new_session=session)


def start_workers(argv: list[str], world_size: int, per_rank: Callable[[int], list[str]] = lambda r: []) -> list[subprocess.Popen]:
    """One process per rank with torchrun's variables; `per_rank(r)` adds flags to rank r's command."""
    port = str(free_port())
    procs = []
    for rank in range(world_size):
        env = {**ENV, "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(start(*argv, *per_rank(rank), env=env))
    return procs


def wait_for(condition: Callable[[], bool], timeout: float = 180, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def children(pid: int) -> dict[int, int]:
    """{rank: pid} of the processes `pid` started (Linux /proc), read from their RANK variable."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != pid:
                continue
            env = dict(v.split("=", 1) for v in (entry / "environ").read_text().split("\0") if "=" in v)
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
        if "RANK" in env:
            found[int(env["RANK"])] = int(entry.name)
    return found


def finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    """Wait for every process (at most `timeout` s in all); return (exit code, stderr) per process."""
    deadline = time.monotonic() + timeout
    out = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            _, err = p.communicate()
            raise AssertionError(f"process {p.args[3:6]} still running after {timeout}s: it hangs\n{err[-3000:]}") from None
        out.append((p.returncode, err))
    return out

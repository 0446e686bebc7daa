"""Naming the lost worker: a heartbeat per rank in the job's rendezvous store.

When a worker is killed, the others learn it only as a failed collective
(Gloo: "Connection closed by peer [127.0.0.1]:41234"; NCCL or a stopped
peer: the collective timeout of `hetgmp.distributed.init_distributed`),
which names an address, not a rank. So every worker of a multi-worker run
keeps a counter `hetgmp/alive/R` in the rendezvous TCPStore (the one
MASTER_ADDR:MASTER_PORT names) and bumps it every HEARTBEAT_S seconds from a
daemon thread. When a collective fails, the worker

  1. adds 1 to `hetgmp/failed/R` (it is alive and saw the failure),
  2. reads every counter twice, STILL_S apart,
  3. names the ranks whose counter stood still and that reported nothing:
     they were killed or crashed (their own output says why, if anything),
  4. adds 1 to `hetgmp/checked/R` (it has read what it needs from the store).

Example, 4 workers, rank 2 SIGKILLed: ranks 0, 1 and 3 fail in the
all-to-all, report, see alive counters 0: 31 -> 34, 1: 30 -> 33,
2: 29 -> 29, 3: 30 -> 33, and each raises "worker rank 2 of 4 was lost".
If the store itself is gone, rank 0, which hosts it under `--nproc` and
mpirun, was the lost one. Rank 0 waits until every live worker has checked
(at most LINGER_S) before it exits, so that its store outlives their
questions: waiting only for their failure reports (step 1) let rank 0 leave
while a peer was still between its two reads.
"""

from __future__ import annotations

import datetime
import os
import threading
import time

import torch.distributed as dist

from hetgmp.distributed import DistContext
from hetgmp.errors import HetGMPError

HEARTBEAT_S = 0.5
STILL_S = 4 * HEARTBEAT_S
LINGER_S = 10.0


class Heartbeat:
    """This worker's heartbeat thread and its reading of the others'."""

    def __init__(self, ctx: DistContext) -> None:
        self.rank, self.world = ctx.rank, ctx.world_size
        # A client of its own: the default group's store handle is private API.
        self.store = dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
            timeout=datetime.timedelta(seconds=LINGER_S),
        )
        # Keys of a torchrun restart must not meet the last attempt's.
        self.prefix = f"hetgmp/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self._stop = threading.Event()
        self.store_lost = False  # set by the heartbeat thread when the store stops answering
        self._thread = threading.Thread(target=self._beat, name="hetgmp-heartbeat", daemon=True)
        self._thread.start()

    def _key(self, kind: str, rank: int) -> str:
        return f"{self.prefix}/{kind}/{rank}"

    def _beat(self) -> None:
        while True:
            try:
                self.store.add(self._key("alive", self.rank), 1)
            except Exception:  # the store is gone: the job is ending, nothing to beat for
                self.store_lost = True
                return
            if self._stop.wait(HEARTBEAT_S):
                return

    def stop(self) -> None:
        self._stop.set()

    def lost_ranks(self) -> list[int] | None:
        """Ranks that stopped beating without reporting a failure; None when the store is unreachable."""
        if self.store_lost:  # known already: asking again would only repeat torch's connection warnings
            return None
        try:
            self.store.add(self._key("failed", self.rank), 1)
            before = self._read("alive")
            time.sleep(STILL_S)
            after, failed = self._read("alive"), self._read("failed")
            self.store.add(self._key("checked", self.rank), 1)
        except Exception:  # DistStoreError / RuntimeError: the store's host is gone
            return None
        lost = [r for r in range(self.world) if after[r] == before[r] and not failed[r]]
        if self.rank == 0:
            self._linger(len(lost))
        return lost

    def _read(self, kind: str) -> list[int]:
        return [self.store.add(self._key(kind, r), 0) for r in range(self.world)]

    def _linger(self, lost: int) -> None:
        """Keep rank 0's store up until every live worker has checked (or LINGER_S passed)."""
        deadline = time.monotonic() + LINGER_S
        while time.monotonic() < deadline:
            if sum(1 for n in self._read("checked") if n) >= self.world - lost:
                return
            time.sleep(HEARTBEAT_S)

    def explain(self, error: BaseException, where: str, resume_hint: str) -> BaseException:
        """A HetGMPError naming the lost ranks if `error` came from losing one, else `error` itself;
        `resume_hint` says where the run can continue from (checkpoint.resume_hint)."""
        lost = self.lost_ranks()
        if lost == []:
            return error  # everybody is alive: not a lost worker, let the real error through
        if lost is None:
            who = f"worker rank 0 of {self.world} (it hosts the job's rendezvous store) or the network to it was lost"
        else:
            names = ", ".join(str(r) for r in lost)
            who = f"worker rank{'s' if len(lost) > 1 else ''} {names} of {self.world} {'were' if len(lost) > 1 else 'was'} lost (killed or crashed)"
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        return HetGMPError(
            f"{who} {where}; rank {self.rank} stops too ({first}). Look at the lost worker's output for its "
            f"own error; {resume_hint}"
        )


def start_heartbeat(ctx: DistContext) -> Heartbeat | None:
    """A running heartbeat for multi-worker runs (None for one worker)."""
    return Heartbeat(ctx) if ctx.world_size > 1 else None

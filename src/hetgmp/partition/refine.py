"""The fast refinement: batched moves, proposed in parallel, applied only when they pay.

Each pass walks its vertices (samples, then rows) in chunks of `chunk`
(default: 1/32 of a part, see auto_chunk):

1. Propose, in parallel over the chunk (numba prange, both cores): every
   vertex computes its best part against the counts as they stand at the
   start of the chunk, with the original's score (see reference.py; the
   sample itself is taken out of its own part's counts first, and the
   balance terms are `balance_scale` times the original's alpha / beta).
2. Apply, in order, one vertex at a time, against the live state. A
   proposed move cur -> k is made only if
   (a) balance: part k holds fewer than cap = floor((1 + tol) * even)
       vertices and part cur more than floor = ceil((1 - tol) * even),
       where even = N/P (samples) or E/P (rows), at that moment;
   (b) cost: it lowers the SPEC cost, recomputed exactly against the
       counts at that moment: for a sample,
         sum_e w[k][o(e)] D(c[e][k]) - w[cur][o(e)] D(c[e][cur] - 1) < 0
       (D(c) = S(c+1) - S(c), o = owner, e over its ids); for a row, its
       weighted traffic sum_j w[j][k] S(c[j][e]) at k is not above that
       at cur (equal lets unread ids balance). Counts do not change during
       a row pass, so this test is made, exactly, when the row proposes.

So the total cost never rises, move by move (stale proposals are re-checked
against the live counts, never trusted), and sizes stay within tol
(default 3%) of even, since the seeded random start is exactly balanced
(and never tighter than that start on tiny graphs, see caps). Results do not
depend on the thread count: proposals read only the chunk's snapshot and
moves are applied in a fixed order.

Changes from the original, chosen by measurement on community graphs:
hard caps instead of the strong soft pull alpha = -100 P/N (which, with
batched proposals, herds whole chunks toward the smallest part), no
served-load term in the row pass (it trades cost for a load balance the
cost does not count), and `sample_sweeps` = 2 sample passes per round: the
second sweep gives most of the gain over the original (about 13-15% fewer
remote rows at 5 rounds). Ids read so often in every part that they cannot
sway a proposal are skipped when proposing (see sample_moves.py, which also
says how the sample pass reads memory).

Settled samples are not re-scored. Each proposal records the sample's gap,
score(cur) minus the best other score. A sweep scores only samples whose
gap is at most `settled` (default 1) times one id's largest term w_max D(0)
(about 0.1 on one node): those that proposed a move, and near ties. In a
round's second sweep the gaps are those of its first. The first sweep of
the first round scores every sample; that of a later round first lowers
every gap by a bound on how far the moves and owner changes of the round
before can have moved it (rescore.py), so samples whose ids kept their
owners and, nearly, their counts keep their part unscored. Skipping only
withholds proposals; every move is still checked exactly, so the cost and
balance guarantees above hold.

Measured on `hetgmp synth --rows 2000000 --seed 0` (1.8M train samples,
3.8M ids, 26 fields), 8 parts, 5 rounds, batch 8192, on a shared 2-core
machine: the plan (seed 0) is the same, bit for bit, as before the drift
bound, the prefetching and the one-byte owners (32.0% remote rows per
batch, 30.1% with 1% mirrors); sweeps score 10.7M samples instead of 12.4M; a full sweep
of proposals takes 0.9 s on one core instead of 2.9 s. The whole
`hetgmp partition` command took 12-18 s wall (14-18 CPU s) against 32-48 s
(34-49 CPU s) before, run alternately under a load average of 1.4-3.6 from
other processes; with --rows 8000000 (7.2M samples, 10.7M ids) 58 s against
165 s, again the same plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from hetgmp.partition import rescore, sample_moves
from hetgmp.partition.reference import alpha_beta, row_costs
from hetgmp.partition.state import PartitionState


@dataclass(frozen=True)
class RefineConfig:
    """Knobs of the fast refinement (defaults are the benchmarked settings)."""

    chunk: int = 0  # vertices proposed against one snapshot of the counts; 0: auto_chunk
    tol: float = 0.03  # parts stay within this fraction of even
    balance_scale: float = 0.1  # proposals use balance_scale * (alpha, beta)
    sample_sweeps: int = 2  # sample passes per round before the row pass
    settled: float = 1.0  # sweeps skip samples whose (lowered) gap is above this many w_max D(0)


def auto_chunk(total: int, parts: int) -> int:
    """Chunk size for `total` vertices: 1/32 of a part (at least 16).

    Proposals in one chunk do not see each other, so a chunk must stay a
    small slice of a part: measured at a sixth of a part or more, quality
    fell below the original's; at 1/12 and 1/32 it matched one-at-a-time
    moves. Scaling with the part keeps that ratio, and keeps big graphs to
    a few thousand parallel steps per pass (or GPU launches).
    """
    return int(max(16, total // (parts * 32)))


def chunk_for(config: RefineConfig, total: int, parts: int) -> int:
    return config.chunk or auto_chunk(total, parts)


def caps(total: int, parts: int, tol: float) -> tuple[int, int]:
    """(floor, cap): the fewest and most vertices a part may hold.

    Never tighter than the balanced start (sizes floor(even) .. ceil(even)),
    so tiny graphs can still move. Example: caps(1000, 8, 0.03) == (122, 128).
    """
    even = total / parts
    low = min(math.ceil((1 - tol) * even), math.floor(even))
    high = max(math.floor((1 + tol) * even), math.ceil(even))
    return int(low), int(high)


ROW_BLOCK = 128  # rows per parallel task


@njit(parallel=True, cache=True)
def _propose_rows(lo, hi, counts, owner, rows, soft, w, beta, best):  # pragma: no cover - compiled
    """best[e - lo] = the part maximising beta |rows of k| - sum_j w[j][k] S(c[j][e]), if that
    part's traffic is not above the current one's, else the current part.

    Counts do not change during a row pass, so this cost test is the exact one.
    """
    parts = counts.shape[1]
    for blk in prange((hi - lo + ROW_BLOCK - 1) // ROW_BLOCK):
        cost_k = np.empty(parts)
        for e in range(lo + blk * ROW_BLOCK, min(lo + (blk + 1) * ROW_BLOCK, hi)):
            row_costs(counts, e, soft, w, cost_k)
            cur = owner[e]
            b, bs = cur, beta * (rows[cur] - 1) - cost_k[cur]
            for k in range(parts):
                s = beta * rows[k] - cost_k[k]
                if k != cur and s > bs:
                    b, bs = k, s
            best[e - lo] = b if cost_k[b] <= cost_k[cur] else cur


@njit(cache=True)
def _apply_rows(lo, hi, owner, rows, best, floor, cap):  # pragma: no cover - compiled
    """Make, in order, each proposed row move that keeps both row counts within [floor, cap]."""
    moved = 0
    for e in range(lo, hi):
        k, cur = best[e - lo], owner[e]
        if k == cur or rows[k] >= cap or rows[cur] <= floor:
            continue
        rows[cur] -= 1
        rows[k] += 1
        owner[e] = k
        moved += 1
    return moved


@njit(cache=True)
def row_pass(counts, owner, rows, soft, w, beta, chunk, floor, cap):  # pragma: no cover - compiled
    """One batched row pass over all ids; returns the number moved."""
    best = np.empty(chunk, dtype=np.int32)
    moved = 0
    for lo in range(0, counts.shape[0], chunk):
        hi = min(lo + chunk, counts.shape[0])
        _propose_rows(lo, hi, counts, owner, rows, soft, w, beta, best)
        moved += _apply_rows(lo, hi, owner, rows, best, floor, cap)
    return moved


class Refiner:
    """Runs rounds of the fast refinement on one PartitionState, in place.

    Between rounds it keeps each sample's score gap and the counts, owners
    and sizes at the start of the last round, which decide the samples the
    next round's first sweep re-scores (see rescore.py). That copy of the
    (E, P) counts is its main memory: 122 MB at 2M samples, 1.1 GB for
    full Criteo (33.8M ids, 8 parts).
    """

    def __init__(self, state: PartitionState, config: RefineConfig = RefineConfig()) -> None:
        self.state, self.config = state, config
        self.flat = np.ascontiguousarray(state.marginal[: sample_moves.flat_top(state.marginal) + 1])
        self.own = np.empty(state.num_ids, dtype=sample_moves.own_dtype(state.parts))
        self.gap = np.zeros(len(state.part), dtype=np.float32)
        self.last: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # counts, owner, sizes at the last round's start

    def run_round(self) -> tuple[int, int]:
        """`sample_sweeps` sample passes, then a row pass. Returns (samples moved, rows moved)."""
        st, config = self.state, self.config
        alpha, beta = (x * config.balance_scale for x in alpha_beta(st))
        settled = config.settled * st.weights.max() * st.marginal[0]  # one id's largest term
        first = self._lower_gaps(alpha, settled)
        moved_s = sum(self.sample_pass(alpha, first if sweep == 0 else settled) for sweep in range(config.sample_sweeps))
        r_floor, r_cap = caps(st.num_ids, st.parts, config.tol)
        moved_r = row_pass(
            st.counts, st.owner, st.rows, st.soft, st.weights,
            beta, chunk_for(config, st.num_ids, st.parts), r_floor, r_cap,
        )
        return int(moved_s), int(moved_r)

    def sample_pass(self, alpha: float, settled: float) -> int:
        """One sample pass that scores only samples whose gap is at most `settled`; returns the number moved."""
        st = self.state
        floor, cap = caps(len(st.part), st.parts, self.config.tol)
        sample_moves.fill_own(st.counts, st.owner, len(self.flat) - 1, self.own)
        return int(sample_moves.sample_pass(
            np.asarray(st.ids), st.part, st.owner, self.own, st.counts, st.sizes, st.marginal, self.flat, st.weights,
            alpha, chunk_for(self.config, len(st.part), st.parts), floor, cap, self.gap, settled,
        ))

    def _lower_gaps(self, alpha: float, settled: float) -> float:
        """Lower every gap by how far it can have fallen since the last round; returns the first sweep's threshold.

        The first round scores every sample (threshold infinity).
        """
        st = self.state
        first = np.inf
        if self.last is not None:
            counts, owner, sizes = self.last
            drift = rescore.id_drift(st.counts, st.owner, counts, owner, self.flat, st.weights)
            balance = 2 * abs(alpha) * float(np.abs(st.sizes - sizes).max())
            rescore.lower_gaps(np.asarray(st.ids), drift, self.gap, balance, settled)
            first = settled
            for saved, now in zip(self.last, (st.counts, st.owner, st.sizes)):
                np.copyto(saved, now)
        else:
            self.last = (st.counts.copy(), st.owner.copy(), st.sizes.copy())
        return first

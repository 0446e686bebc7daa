"""The fast refinement in PyTorch (`--device cuda`): same scores, same chunks, whole chunks at once.

Per chunk of `chunk` vertices, as in refine.py, proposals are computed
against the counts at the chunk's start:

    samples: cnt = counts[ids[i]] (C, F, P), minus one in the sample's own
             part; cost_k = sum_f w[k][owner] * D[cnt]; score = alpha |k| - cost_k
    rows:    cost_k = S[counts[e]] @ w (C, P); score = beta |k| - cost_k

Where refine.py then applies moves one by one, re-checking each against the
live counts, here a whole chunk is applied at once: a move is kept if it
lowers the cost at the chunk's snapshot (delta = cost_k[best] - cost_k[cur]
< 0 for samples, <= 0 for rows) and if the part sizes stay within
[floor, cap] (the last surplus moves into a full part, or out of a part at
its floor, are dropped, in a few rounds, until the net flows fit). Moves of
one chunk do not see each other, so after each pass the exact SPEC cost is
recomputed and the pass is undone if it rose: the cost never goes up from
round to round, and balance holds chunk by chunk. Hot ids and settled samples
(refine.py's `settled`) are not skipped here: on a GPU the gather costs the
same either way, and every sample is scored in every sweep.
"""

from __future__ import annotations

import numpy as np
import torch

from hetgmp.partition.reference import alpha_beta
from hetgmp.partition.refine import RefineConfig, caps, chunk_for
from hetgmp.partition.state import PartitionState


class TorchRefiner:
    """Holds a PartitionState's arrays on `device` and refines them there."""

    def __init__(self, state: PartitionState, config: RefineConfig, device: str) -> None:
        self.state, self.config, self.device = state, config, torch.device(device)
        put = lambda a, dt=None: torch.as_tensor(np.asarray(a), device=self.device, dtype=dt)  # noqa: E731
        self.ids = put(state.ids)
        self.part = put(state.part, torch.int64)
        self.owner = put(state.owner, torch.int64)
        self.counts = put(state.counts)
        self.sizes = put(state.sizes, torch.int64)
        self.rows = put(state.rows, torch.int64)
        self.soft = put(state.soft, torch.float64)
        self.marginal = put(state.marginal, torch.float64)
        self.w = put(state.weights, torch.float64)
        self.top = len(state.soft) - 1
        self.alpha, self.beta = (x * config.balance_scale for x in alpha_beta(state))

    def traffic(self) -> np.ndarray:
        """comm[p][q] computed on the device (see cost.py)."""
        parts = self.w.shape[0]
        s = self.soft[self.counts.clamp(max=self.top).long()]  # (E, P): S(c[e, p])
        comm = torch.zeros(parts, parts, dtype=torch.float64, device=self.device)
        comm.index_add_(0, self.owner, s)  # comm[q, p] = sum over e owned by q of S(c[e, p])
        return (comm.T * (self.state.batch / self.state.m)).cpu().numpy()

    def balance(self) -> tuple[np.ndarray, np.ndarray]:
        """(samples per part, rows per part) as numpy arrays."""
        return self.sizes.cpu().numpy(), self.rows.cpu().numpy()

    def cost(self) -> float:
        return float((self.traffic() * self.state.weights).sum())

    def _fit(self, src: torch.Tensor, dst: torch.Tensor, keep: torch.Tensor, sizes: torch.Tensor, floor: int, cap: int) -> torch.Tensor:
        """Drop the last surplus moves until sizes + inflow - outflow lies in [floor, cap]."""
        parts = sizes.shape[0]
        for _ in range(8):
            inflow = torch.bincount(dst[keep], minlength=parts)
            outflow = torch.bincount(src[keep], minlength=parts)
            new = sizes + inflow - outflow
            over, under = (new - cap).clamp(min=0), (floor - new).clamp(min=0)
            if int(over.sum()) == 0 and int(under.sum()) == 0:
                return keep
            # rank of each kept move among later kept moves into the same part / out of the same part
            into = torch.nn.functional.one_hot(dst, parts) * keep[:, None]
            outof = torch.nn.functional.one_hot(src, parts) * keep[:, None]
            late_in = into.flip(0).cumsum(0).flip(0).gather(1, dst[:, None])[:, 0]
            late_out = outof.flip(0).cumsum(0).flip(0).gather(1, src[:, None])[:, 0]
            keep = keep & (late_in > over[dst]) & (late_out > under[src])
        return keep & False

    def _sample_chunk(self, lo: int, hi: int, floor: int, cap: int) -> int:
        ids = self.ids[lo:hi].long()  # (C, F)
        cur = self.part[lo:hi]
        parts = self.w.shape[0]
        own = torch.nn.functional.one_hot(cur, parts)  # (C, P)
        cnt = self.counts[ids].long() - own[:, None, :]  # (C, F, P), sample taken out of its part
        wk = self.w[:, self.owner[ids]].permute(1, 2, 0)  # (C, F, P): w[k][owner(e)]
        cost_k = (wk * self.marginal[cnt.clamp(max=self.top)]).sum(1)  # (C, P)
        score = self.alpha * (self.sizes[None, :] - own) - cost_k
        best = score.argmax(1)
        best = torch.where(score.gather(1, cur[:, None])[:, 0] >= score.max(1).values, cur, best)
        delta = cost_k.gather(1, best[:, None])[:, 0] - cost_k.gather(1, cur[:, None])[:, 0]
        keep = self._fit(cur, best, (best != cur) & (delta < 0), self.sizes, floor, cap)
        idx = keep.nonzero()[:, 0]
        if len(idx) == 0:
            return 0
        moved_ids, src, dst = ids[idx], cur[idx], best[idx]
        flat = self.counts.view(-1)
        ones = torch.ones(moved_ids.numel(), dtype=self.counts.dtype, device=self.device)
        flat.index_add_(0, (moved_ids * parts + src[:, None]).reshape(-1), -ones)
        flat.index_add_(0, (moved_ids * parts + dst[:, None]).reshape(-1), ones)
        self.sizes += torch.bincount(dst, minlength=parts) - torch.bincount(src, minlength=parts)
        self.part[lo + idx] = dst
        return len(idx)

    def _row_chunk(self, lo: int, hi: int, floor: int, cap: int) -> int:
        cur = self.owner[lo:hi]
        parts = self.w.shape[0]
        own = torch.nn.functional.one_hot(cur, parts)
        cost_k = self.soft[self.counts[lo:hi].clamp(max=self.top).long()] @ self.w  # (C, P)
        score = self.beta * (self.rows[None, :] - own) - cost_k
        best = score.argmax(1)
        best = torch.where(score.gather(1, cur[:, None])[:, 0] >= score.max(1).values, cur, best)
        delta = cost_k.gather(1, best[:, None])[:, 0] - cost_k.gather(1, cur[:, None])[:, 0]
        keep = self._fit(cur, best, (best != cur) & (delta <= 0), self.rows, floor, cap)
        idx = keep.nonzero()[:, 0]
        self.rows += torch.bincount(best[idx], minlength=parts) - torch.bincount(cur[idx], minlength=parts)
        self.owner[lo + idx] = best[idx]
        return len(idx)

    def _guarded(self, one_pass) -> int:
        """Run a pass; undo it if the exact cost rose (chunk moves do not see each other)."""
        saved = [t.clone() for t in (self.part, self.owner, self.counts, self.sizes, self.rows)]
        before = self.cost()
        moved = one_pass()
        if self.cost() > before:
            self.part, self.owner, self.counts, self.sizes, self.rows = saved
            return 0
        return moved

    def _sample_pass(self) -> int:
        n = self.ids.shape[0]
        floor, cap = caps(n, self.w.shape[0], self.config.tol)
        step = chunk_for(self.config, n, self.w.shape[0])
        return sum(self._sample_chunk(lo, min(lo + step, n), floor, cap) for lo in range(0, n, step))

    def _row_pass(self) -> int:
        e = self.owner.shape[0]
        floor, cap = caps(e, self.w.shape[0], self.config.tol)
        step = chunk_for(self.config, e, self.w.shape[0])
        return sum(self._row_chunk(lo, min(lo + step, e), floor, cap) for lo in range(0, e, step))

    def run_round(self) -> tuple[int, int]:
        """`sample_sweeps` sample passes then a row pass, each guarded. Returns (samples, rows) moved."""
        moved_s = sum(self._guarded(self._sample_pass) for _ in range(self.config.sample_sweeps))
        return moved_s, self._guarded(self._row_pass)

    def finish(self) -> PartitionState:
        """Copy the assignment and counts back into the numpy state and return it."""
        st = self.state
        st.part[:] = self.part.cpu().numpy()
        st.owner[:] = self.owner.cpu().numpy()
        st.counts = self.counts.cpu().numpy()
        st.sizes[:] = self.sizes.cpu().numpy()
        st.rows[:] = self.rows.cpu().numpy()
        return st

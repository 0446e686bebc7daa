"""SPEC §3's bounded-staleness protocol written out per row, in one process: the reference the
production sharded table is held to at every bound, for SGD and row-wise Adagrad.

P workers advance in lockstep; worker r trains on rows r*B .. (r+1)*B-1 of each global batch:

    read (step t)   own primary, or an id not stored: the owner's value;
                    mirror: refreshed first if it holds no copy (version -1) or
                    mirror_version + bound < primary_version, to the primary plus the mirror's
                    unpushed delta (mirror_version := primary's); with Adagrad the accumulator alike
    write           g = the gradient summed over the id's occurrences in the worker's batch
                    SGD: delta = -lr g, everywhere a row is written
                    Adagrad: acc' = acc + mean(g^2); delta = -lr g / (sqrt(acc') + eps)
                    mirror (SGD, or Adagrad at bound > 0): the copy takes the step with its own
                      accumulator, pending += (delta, acc delta), count += occurrences; once
                      count > bound: the primary adds the pending deltas, both versions += count
                    own / not stored (and mirrors under Adagrad at bound 0): SGD adds the delta to
                      the primary; Adagrad sums g over every worker, then ONE step per row on the sum
                      (after the step's pushed deltas), version += occurrences
    flush           every mirror pushes what it has pending (its copy stays as it is)
    forget          (a checkpoint loaded) every mirror holds no copy: fetched at its next read

Every worker's writes of step t reach the owners before any worker reads step t + 1.
Dense weights: the sum over workers of the gradients of loss_r / P (each worker's mean
loss over its slice), then the dense optimizer: the global batch's mean loss.

    ref = StalenessReference(model, start_ED, mirrors, owner, bound=3, lr=0.5, dense_lr=0.1)
    losses = ref.step(dense, ids, labels)    # one global batch; the workers' mean losses
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-8


class StalenessReference:
    def __init__(self, model: nn.Module, start_ED: torch.Tensor, mirrors: list[np.ndarray], owner: np.ndarray,
                 bound: int, lr: float, dense_lr: float, adagrad: bool = False) -> None:
        self.model, self.bound, self.lr, self.world, self.adagrad = model, bound, lr, len(mirrors), adagrad
        self.owner = np.asarray(owner)
        self.primary = start_ED.clone()
        self.acc = torch.zeros(len(start_ED))
        self.version = torch.zeros(len(start_ED), dtype=torch.int64)
        self.mirrors = [set(np.asarray(m).tolist()) for m in mirrors]
        self.copy = [{e: start_ED[e].clone() for e in m} for m in self.mirrors]
        self.copy_acc = [dict.fromkeys(m, 0.0) for m in self.mirrors]
        self.copy_version = [dict.fromkeys(m, 0) for m in self.mirrors]
        self.pending = [{e: torch.zeros(start_ED.shape[1]) for e in m} for m in self.mirrors]
        self.pending_acc = [dict.fromkeys(m, 0.0) for m in self.mirrors]
        self.count = [dict.fromkeys(m, 0) for m in self.mirrors]
        self.optimizer = torch.optim.SGD(model.parameters(), lr=dense_lr)

    def _view(self, r: int, ids_BF: torch.Tensor) -> torch.Tensor:
        """Worker r's rows for its batch, refreshing the mirrors past the bound."""
        rows = self.primary.clone()
        for e in set(ids_BF.reshape(-1).tolist()) & self.mirrors[r]:
            held = self.copy_version[r][e]
            if held < 0 or held + self.bound < int(self.version[e]):
                self.copy[r][e] = self.primary[e] + self.pending[r][e]
                self.copy_acc[r][e] = float(self.acc[e]) + self.pending_acc[r][e]
                self.copy_version[r][e] = int(self.version[e])
            rows[e] = self.copy[r][e]
        return rows

    def read(self, ids: np.ndarray) -> None:
        """Every worker reads its slice of a global batch without training on it (a read ahead)."""
        b = len(ids) // self.world
        for r in range(self.world):
            self._view(r, torch.as_tensor(ids[r * b: (r + 1) * b]))

    def step(self, dense: np.ndarray, ids: np.ndarray, labels: np.ndarray) -> list[float]:
        b = len(ids) // self.world
        parts = [slice(r * b, (r + 1) * b) for r in range(self.world)]
        views = [self._view(r, torch.as_tensor(ids[p])) for r, p in enumerate(parts)]  # every read before any write
        self.optimizer.zero_grad(set_to_none=True)
        losses, grads = [], []
        for r, p in enumerate(parts):
            table = views[r].requires_grad_()
            logits = self.model(torch.as_tensor(dense[p]), table[torch.as_tensor(ids[p])])
            loss = F.binary_cross_entropy_with_logits(logits.float(), torch.as_tensor(labels[p]).float())
            (loss / self.world).backward()  # dense gradients add up over the workers
            losses.append(loss.item())
            grads.append(table.grad)
        at_owner: dict[int, list] = {}  # Adagrad: id -> [gradient summed over workers, occurrences]
        for r, p in enumerate(parts):
            uids, counts = np.unique(ids[p], return_counts=True)
            for e, c in zip(uids.tolist(), counts.tolist()):
                self._write(r, e, grads[r][e], c, at_owner)
        for e, (g, c) in at_owner.items():  # after the pushed deltas, as the owners apply them
            delta, acc_delta = self._update(g, float(self.acc[e]))
            self.primary[e] += delta
            self.acc[e] += acc_delta
            self.version[e] += c
        self.optimizer.step()
        return losses

    def _update(self, g: torch.Tensor, acc: float) -> tuple[torch.Tensor, float]:
        """(row delta, accumulator delta) of one optimizer step on the summed gradient g."""
        if not self.adagrad:
            return -self.lr * g, 0.0
        acc_delta = float(g.pow(2).mean())
        return -self.lr * g / (np.sqrt(acc + acc_delta) + EPS), acc_delta

    def _write(self, r: int, e: int, g: torch.Tensor, count: int, at_owner: dict[int, list]) -> None:
        mirror = e in self.mirrors[r] and self.owner[e] != r
        if not mirror or (self.adagrad and self.bound == 0):
            if self.adagrad:
                total = at_owner.setdefault(e, [torch.zeros_like(g), 0])
                total[0], total[1] = total[0] + g, total[1] + count
            else:
                self.primary[e] += -self.lr * g
                self.version[e] += count
            return
        delta, acc_delta = self._update(g, self.copy_acc[r][e])
        self.copy[r][e] = self.copy[r][e] + delta
        self.copy_acc[r][e] += acc_delta
        self.pending[r][e] = self.pending[r][e] + delta
        self.pending_acc[r][e] += acc_delta
        self.count[r][e] += count
        if self.count[r][e] > self.bound:
            self._push(r, e)

    def _push(self, r: int, e: int) -> None:
        self.primary[e] += self.pending[r][e]
        self.acc[e] += self.pending_acc[r][e]
        self.version[e] += self.count[r][e]
        self.copy_version[r][e] += self.count[r][e]
        self.pending[r][e] = torch.zeros_like(self.pending[r][e])
        self.pending_acc[r][e] = 0.0
        self.count[r][e] = 0

    def flush(self) -> None:
        for r in range(self.world):
            for e in self.mirrors[r]:
                if self.count[r][e]:
                    self._push(r, e)

    def forget(self) -> None:
        """After a checkpoint is loaded (flush first): no worker holds a copy of its mirrors."""
        for r in range(self.world):
            for e in self.mirrors[r]:
                self.copy_version[r][e] = -1

    def mirror_rows(self, r: int, ids: np.ndarray) -> torch.Tensor:
        """Worker r's copies of `ids` (all mirrored by r)."""
        return torch.stack([self.copy[r][int(e)] for e in ids])

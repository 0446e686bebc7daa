"""The step the fast path must reproduce, written with plain autograd.

The table is a leaf that receives a full [E, D] gradient (rows the batch did
not use get zeros), and the embedding optimizer is applied to every row with
dense tensor math: SGD `table -= lr * G`, or row-wise Adagrad
`acc += mean(G^2, dim 1); table -= lr * G / (sqrt(acc) + eps)`, which leaves
unused rows unchanged. No sorting, no segments, no kernels: a check on the
fast step that shares none of its sparse machinery. Multi-hot bags pool
through torch's own `F.embedding_bag`, field by field, its `padding_idx` the
field's padding id (not `pool_bags`, which the fast step uses).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hetgmp.fastpath.config import FastStepConfig, autocast, dense_optimizer, matmul_precision
from hetgmp.fastpath.objective import ctr_loss
from hetgmp.models.bags import Bags


class ReferenceStep:
    """`step(dense_BI, ids_BF, labels_B) -> loss` on a full-table gradient.

    Trains `model` and `table_ED` in place, as `FastStep` does, under the same
    config (its amp and tf32 settings too; graphs and kernels do not apply).
    """

    def __init__(self, model: nn.Module, table_ED: torch.Tensor, cfg: FastStepConfig, acc_E: torch.Tensor | None = None,
                 bags: Bags | None = None) -> None:
        cfg.check()
        self.cfg = cfg
        self.bags = bags
        self.device = table_ED.device
        self.model = model
        self.table_ED = table_ED.detach().requires_grad_()
        self.acc_E = None
        if cfg.sparse_optimizer == "rowwise_adagrad":
            self.acc_E = acc_E if acc_E is not None else torch.zeros(len(table_ED), device=self.device)
        self.optimizer = dense_optimizer(list(model.parameters()), cfg.dense_optimizer, cfg.dense_lr, self.device, cfg.skip_nonfinite)

    def step(self, dense_BI: torch.Tensor, ids_BF: torch.Tensor, labels_B: torch.Tensor) -> torch.Tensor:
        """Train on one batch; returns the mean loss."""
        with matmul_precision(self.cfg, self.device):
            rows_BFD = self._rows(ids_BF.long())
            with autocast(self.cfg, self.device):
                logits_B = self.model(dense_BI, rows_BFD)
            loss = ctr_loss(logits_B, labels_B)
            self.optimizer.zero_grad(set_to_none=True)
            self.table_ED.grad = None
            loss.backward()
        with torch.no_grad():
            grad_ED = self.table_ED.grad
            if self.acc_E is None:
                self.table_ED -= self.cfg.lr * grad_ED
            else:
                self.acc_E += grad_ED.square().mean(1)
                self.table_ED -= self.cfg.lr * grad_ED / (self.acc_E.sqrt() + self.cfg.adagrad_eps)[:, None]
        self.optimizer.step()
        return loss.detach()

    def _rows(self, ids_BL: torch.Tensor) -> torch.Tensor:
        """The model's input: each field's row, or its bag pooled by F.embedding_bag (rounded to bf16
        as the fast step's gather rounds them, with bf16_rows, before pooling)."""
        if self.bags is None:
            rows_BFD = self.table_ED[ids_BL]
            return rows_BFD.to(torch.bfloat16) if self.cfg.bf16_rows else rows_BFD
        # The whole table rounded once a step, not once a field: embedding_bag reads rows of its weight.
        weight_ED = self.table_ED.to(torch.bfloat16).float() if self.cfg.bf16_rows else self.table_ED
        fields, start = [], 0
        for size, pad in zip(self.bags.sizes, self.bags.padding):
            bag_BK = ids_BL[:, start: start + size]
            start += size
            fields.append(F.embedding_bag(bag_BK, weight_ED, mode=self.bags.mode, padding_idx=pad if pad >= 0 else None))
        pooled_BFD = torch.stack(fields, 1)
        return pooled_BFD.to(torch.bfloat16) if self.cfg.bf16_rows else pooled_BFD

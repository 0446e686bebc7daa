"""DLRM (Naumov et al. 2019, "Deep Learning Recommendation Model for
Personalization and Recommendation Systems"), dot interaction.

With F fields, I dense features and rows d wide:

    bottom = MLP(dense_BI)                          I -> 512 -> 256 -> 64 -> d, a ReLU after each layer
    T      = [bottom, emb_1, ..., emb_F]            (B, n, d), n = F + 1 vectors
    Z      = T T^T                                  (B, n, n) dot products
    pairs  = Z[i, j] for i < j                      n (n - 1) / 2 of them, no self-dots
    logit  = MLP([bottom, pairs])                   -> 512 -> 256 -> 1, ReLU between layers

the shape of DLRM's reference run on Criteo Kaggle (bottom 13-512-256-64-16,
top 367-512-256-1 at F = 26, d = 16); `DLRM_MLPERF` is MLPerf's (bottom
512-256-d, top 1024-1024-512-256-1, with d = 128). Without dense features
there is no bottom MLP: T holds the F rows and the top MLP reads the pairs.

Example, n = 3 vectors a, b, c: the top MLP reads [a, a·b, a·c, b·c]
(kernels/interaction.py: one Triton kernel each way on CUDA, a batched
matmul and a fixed gather elsewhere). The bottom MLP is the model's dense
part (models/base.py): the fast steps run it while the rows are read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hetgmp.kernels.interaction import aligned_count, pair_count, top_input
from hetgmp.models.base import CTRModel
from hetgmp.models.layers import aligned_mlp, dlrm_mlp


@dataclass(frozen=True)
class DLRMShape:
    """Hidden widths of the two MLPs (the bottom one ends in d, the top one in one logit)."""

    bottom: tuple[int, ...] = (512, 256, 64)
    top: tuple[int, ...] = (512, 256)


DLRM_KAGGLE = DLRMShape()
DLRM_MLPERF = DLRMShape(bottom=(512, 256), top=(1024, 1024, 512, 256))


class DLRM(CTRModel):
    """forward(dense_BI, emb_BFD) -> logits_B (no sigmoid) = head(dense_part(dense_BI), emb_BFD)."""

    provides_dense_part = True

    def __init__(self, num_fields: int, num_dense: int, embed_dim: int, shape: DLRMShape = DLRM_KAGGLE) -> None:
        super().__init__()
        self.shape = shape
        self.bottom = dlrm_mlp([num_dense, *shape.bottom, embed_dim], relu_last=True) if num_dense else None
        self.vectors, self.embed_dim = num_fields + (1 if num_dense else 0), embed_dim
        top_in = pair_count(self.vectors) + (embed_dim if num_dense else 0)
        self.top = dlrm_mlp([top_in, *shape.top, 1], relu_last=False)

    def forward(self, dense_BI: torch.Tensor, emb_BFD: torch.Tensor) -> torch.Tensor:
        return self.head(self.dense_part(dense_BI), emb_BFD)

    def dense_part(self, dense_BI: torch.Tensor) -> torch.Tensor | None:
        """The bottom MLP's d-vector (None without dense features)."""
        return None if self.bottom is None else aligned_mlp(self.bottom, dense_BI)

    def head(self, bottom_BD: torch.Tensor | None, emb_BFD: torch.Tensor) -> torch.Tensor:
        return aligned_mlp(self.top, top_input(bottom_BD, emb_BFD)).squeeze(1)

    def layer_width(self) -> int:
        """The MLPs' outputs, plus the plain interaction's padded vectors and their dots, the pairs
        and the top MLP's input (an allowance: the Triton interaction writes the last alone)."""
        padded = aligned_count(self.vectors)
        return super().layer_width() + padded * (padded + self.embed_dim) + pair_count(self.vectors) + self.top[0].in_features

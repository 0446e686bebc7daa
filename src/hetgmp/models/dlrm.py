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

Example, n = 3 vectors a, b, c: Z is 3 x 3 and pairs = [a·b, a·c, b·c], read
from Z's flattened positions [1, 2, 5] by one fixed gather (`upper_pairs`),
so the interaction is a bmm and an index_select of fixed shape. T is padded
with zero vectors to a multiple of 8 (27 -> 32 at F = 26): bf16 rows of 27
dot products (54 bytes) are not 16-byte aligned, and cuBLAS then takes older,
slower kernels for the bmm and its gradients; the zeros' dots are never read.
The bottom MLP is the model's dense part (models/base.py): the fast steps run
it while the rows are read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hetgmp.models.base import CTRModel
from hetgmp.models.layers import aligned_mlp, dlrm_mlp


@dataclass(frozen=True)
class DLRMShape:
    """Hidden widths of the two MLPs (the bottom one ends in d, the top one in one logit)."""

    bottom: tuple[int, ...] = (512, 256, 64)
    top: tuple[int, ...] = (512, 256)


DLRM_KAGGLE = DLRMShape()
DLRM_MLPERF = DLRMShape(bottom=(512, 256), top=(1024, 1024, 512, 256))


def upper_pairs(n: int, stride: int | None = None) -> torch.Tensor:
    """Flat indices i * stride + j of the pairs i < j < n of a stride x stride matrix (default
    stride n), row by row (int64)."""
    i, j = torch.triu_indices(n, n, offset=1)
    return i * (stride or n) + j


def aligned_count(n: int) -> int:
    """n rounded up to a multiple of 8 (bf16 rows of 16 bytes)."""
    return n + -n % 8


class DLRM(CTRModel):
    """forward(dense_BI, emb_BFD) -> logits_B (no sigmoid) = head(dense_part(dense_BI), emb_BFD)."""

    provides_dense_part = True

    def __init__(self, num_fields: int, num_dense: int, embed_dim: int, shape: DLRMShape = DLRM_KAGGLE) -> None:
        super().__init__()
        self.shape = shape
        self.bottom = dlrm_mlp([num_dense, *shape.bottom, embed_dim], relu_last=True) if num_dense else None
        self.vectors, self.embed_dim = num_fields + (1 if num_dense else 0), embed_dim
        self.padded_vectors = aligned_count(self.vectors)
        # Not in the state dict: it follows from the sizes, which the checkpoint records.
        self.register_buffer("pair_index", upper_pairs(self.vectors, self.padded_vectors), persistent=False)
        top_in = len(self.pair_index) + (embed_dim if num_dense else 0)
        self.top = dlrm_mlp([top_in, *shape.top, 1], relu_last=False)

    def forward(self, dense_BI: torch.Tensor, emb_BFD: torch.Tensor) -> torch.Tensor:
        return self.head(self.dense_part(dense_BI), emb_BFD)

    def dense_part(self, dense_BI: torch.Tensor) -> torch.Tensor | None:
        """The bottom MLP's d-vector (None without dense features)."""
        return None if self.bottom is None else aligned_mlp(self.bottom, dense_BI)

    def head(self, bottom_BD: torch.Tensor | None, emb_BFD: torch.Tensor) -> torch.Tensor:
        if bottom_BD is None:
            return aligned_mlp(self.top, self.interact([emb_BFD])).squeeze(1)
        pairs_BP = self.interact([bottom_BD[:, None], emb_BFD])
        return aligned_mlp(self.top, torch.cat([bottom_BD, pairs_BP], 1)).squeeze(1)

    def layer_width(self) -> int:
        """The MLPs' outputs, plus the padded vectors, their dots, the pairs and the top MLP's input
        (without dense features the last is a view: an allowance)."""
        pairs, padded = len(self.pair_index), self.padded_vectors
        return super().layer_width() + padded * (padded + self.embed_dim) + pairs + self.top[0].in_features

    def interact(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The dot products of the pairs i < j of the n vectors stacked from `parts` ((B, k, D) each):
        (B, n (n - 1) / 2)."""
        batch, pad = len(parts[0]), self.padded_vectors - self.vectors
        zeros = [parts[0].new_zeros(batch, pad, self.embed_dim)] if pad else []
        vectors_BND = torch.cat([*parts, *zeros], 1)
        dots_BNN = torch.bmm(vectors_BND, vectors_BND.transpose(1, 2))
        return dots_BNN.flatten(1).index_select(1, self.pair_index)

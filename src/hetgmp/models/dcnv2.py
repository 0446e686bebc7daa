"""DCN V2 (Wang et al. 2021, "DCN V2: Improved Deep & Cross Network"), stacked.

With F fields, I dense features, rows d wide and K = (F + 1) d, in MLPerf's
DLRM-DCNv2 shape (DCNV2_MLPERF):

    bottom = MLP(dense_BI)                      I -> 512 -> 256 -> d, a ReLU after each layer
    x0     = [flatten(emb_BFD), bottom]         (B, K)
    cross: x_{l+1} = x0 * (W_l x_l + b_l) + x_l l = 0, 1, 2; W_l = U_l V_l^T of rank 512
    logit  = MLP(x_3)                           K -> 1024 -> 1024 -> 512 -> 256 -> 1, ReLU between

The default shape (DCNV2_DEFAULT), which trained best in one epoch at d = 16
(benchmarks/quality_study.py), has one cross layer and a top MLP of
512 -> 256 -> 1. `cross_rank` 0 makes every W_l a full K x K matrix (the
paper's full-rank cross layer); a rank r < K stores U_l (K x r) and V_l
(K x r), 2 K r weights instead of K^2; a rank r >= K is full rank, and is
stored as the K x K matrix (at d = 16, K = 432: rank 512 is full rank, at
less than half the weights and work). Without dense features there is no
bottom MLP and K = F d.

Example, K = 2, x0 = x_l = [1, 2], W = I (full rank), b = [0, 1]:
W x_l + b = [1, 3], x_{l+1} = [1, 6] + [1, 2] = [2, 8].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hetgmp.models.base import CTRModel
from hetgmp.models.layers import aligned_mlp, dlrm_linear, dlrm_mlp


@dataclass(frozen=True)
class DCNv2Shape:
    """Hidden widths of the bottom and top MLPs, the number of cross layers and their rank (0: full)."""

    bottom: tuple[int, ...] = (512, 256)
    cross_layers: int = 3
    cross_rank: int = 512
    top: tuple[int, ...] = (1024, 1024, 512, 256)


DCNV2_MLPERF = DCNv2Shape()
# The shape that trained best in one epoch at d = 16 (benchmarks/quality_study.py; BENCHMARKS.md).
DCNV2_DEFAULT = DCNv2Shape(cross_layers=1, top=(512, 256))


class CrossLayer(nn.Module):
    """x0 * (W x + b) + x, W full (rank 0, or a rank of at least the width) or U V^T of rank `rank`."""

    def __init__(self, width: int, rank: int) -> None:
        super().__init__()
        rank = 0 if rank >= width else rank
        # V^T x first, then U (.) + b: the low-rank product never forms the K x K matrix.
        self.down = dlrm_linear(width, rank, bias=False) if rank else None
        self.up = dlrm_linear(rank or width, width)

    def forward(self, x0_BK: torch.Tensor, x_BK: torch.Tensor) -> torch.Tensor:
        projected = x_BK if self.down is None else self.down(x_BK)
        return torch.addcmul(x_BK, x0_BK, F.linear(projected, self.up.weight, self.up.bias))


class DCNv2(CTRModel):
    """forward(dense_BI, emb_BFD) -> logits_B (no sigmoid) = head(dense_part(dense_BI), emb_BFD); the
    bottom MLP is the dense part, which the fast steps run while the rows are read."""

    provides_dense_part = True

    def __init__(self, num_fields: int, num_dense: int, embed_dim: int, shape: DCNv2Shape = DCNV2_DEFAULT) -> None:
        super().__init__()
        self.shape = shape
        self.bottom = dlrm_mlp([num_dense, *shape.bottom, embed_dim], relu_last=True) if num_dense else None
        width = (num_fields + (1 if num_dense else 0)) * embed_dim
        self.cross = nn.ModuleList(CrossLayer(width, shape.cross_rank) for _ in range(shape.cross_layers))
        self.top = dlrm_mlp([width, *shape.top, 1], relu_last=False)

    def layer_width(self) -> int:
        """The linear layers' outputs, plus x0 and each cross layer's x_{l+1} (K each)."""
        width = self.top[0].in_features
        return super().layer_width() + width * (1 + len(self.cross))

    def forward(self, dense_BI: torch.Tensor, emb_BFD: torch.Tensor) -> torch.Tensor:
        return self.head(self.dense_part(dense_BI), emb_BFD)

    def dense_part(self, dense_BI: torch.Tensor) -> torch.Tensor | None:
        """The bottom MLP's d-vector (None without dense features)."""
        return None if self.bottom is None else aligned_mlp(self.bottom, dense_BI)

    def head(self, bottom_BD: torch.Tensor | None, emb_BFD: torch.Tensor) -> torch.Tensor:
        x0_BK = emb_BFD.flatten(1)
        if bottom_BD is not None:
            x0_BK = torch.cat([x0_BK, bottom_BD], 1)
        x_BK = x0_BK
        for layer in self.cross:
            x_BK = layer(x0_BK, x_BK)
        return self.top(x_BK).squeeze(1)

"""DCN V2 (Wang et al. 2021, "DCN V2: Improved Deep & Cross Network"), stacked,
in the shape of MLPerf's DLRM-DCNv2.

With F fields, I dense features, rows d wide and K = (F + 1) d:

    bottom = MLP(dense_BI)                      I -> 512 -> 256 -> d, a ReLU after each layer
    x0     = [flatten(emb_BFD), bottom]         (B, K)
    cross: x_{l+1} = x0 * (W_l x_l + b_l) + x_l l = 0, 1, 2; W_l = U_l V_l^T of rank 512
    logit  = MLP(x_3)                           K -> 1024 -> 1024 -> 512 -> 256 -> 1, ReLU between

`cross_rank` 0 makes every W_l a full K x K matrix (the paper's full-rank
cross layer); a rank r < K stores U_l (K x r) and V_l (K x r), 2 K r weights
instead of K^2. Without dense features there is no bottom MLP and K = F d.

Example, K = 2, x0 = x_l = [1, 2], W = I (full rank), b = [0, 1]:
W x_l + b = [1, 3], x_{l+1} = [1, 6] + [1, 2] = [2, 8].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hetgmp.models.base import CTRModel
from hetgmp.models.layers import dlrm_linear, dlrm_mlp


@dataclass(frozen=True)
class DCNv2Shape:
    """Hidden widths of the bottom and top MLPs, the number of cross layers and their rank (0: full)."""

    bottom: tuple[int, ...] = (512, 256)
    cross_layers: int = 3
    cross_rank: int = 512
    top: tuple[int, ...] = (1024, 1024, 512, 256)


DCNV2_MLPERF = DCNv2Shape()


class CrossLayer(nn.Module):
    """x0 * (W x + b) + x, W full (rank 0) or U V^T of rank `rank`."""

    def __init__(self, width: int, rank: int) -> None:
        super().__init__()
        # V^T x first, then U (.) + b: the low-rank product never forms the K x K matrix.
        self.down = dlrm_linear(width, rank, bias=False) if rank else None
        self.up = dlrm_linear(rank or width, width)

    def forward(self, x0_BK: torch.Tensor, x_BK: torch.Tensor) -> torch.Tensor:
        projected = x_BK if self.down is None else self.down(x_BK)
        return torch.addcmul(x_BK, x0_BK, F.linear(projected, self.up.weight, self.up.bias))


class DCNv2(CTRModel):
    """forward(dense_BI, emb_BFD) -> logits_B (no sigmoid)."""

    def __init__(self, num_fields: int, num_dense: int, embed_dim: int, shape: DCNv2Shape = DCNV2_MLPERF) -> None:
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
        x0_BK = emb_BFD.flatten(1)
        if self.bottom is not None:
            x0_BK = torch.cat([x0_BK, self.bottom(dense_BI)], 1)
        x_BK = x0_BK
        for layer in self.cross:
            x_BK = layer(x0_BK, x_BK)
        return self.top(x_BK).squeeze(1)

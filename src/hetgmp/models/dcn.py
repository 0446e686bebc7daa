"""Deep & Cross Network as HET-GMP trained it (SPEC §4, lr 0.003).

    x0 = [flatten(emb_BFD), dense_BI]                 (B, K), K = F*d + I
    cross: x1 = x0 * (x0 · w) + x0 + b                w, b in R^K; x0 · w is one scalar per sample
    deep:  x0 -> 256 -> ReLU -> 256 -> ReLU -> 256
    logit = linear([x1, deep])                        (K + 256) -> 1

One cross layer, as the SPEC states. Example with K = 2, x0 = [1, 2],
w = [0.5, 0], b = [0, 1]: x0 · w = 0.5, x1 = [0.5, 1] + [1, 2] + [0, 1] = [1.5, 4].
"""

from __future__ import annotations

import torch
from torch import nn

from hetgmp.models.layers import HIDDEN, INIT_STD, normal_linear, relu_tower


class DCN(nn.Module):
    """forward(dense_BI, emb_BFD) -> logits_B (no sigmoid)."""

    def __init__(self, num_fields: int, num_dense: int, embed_dim: int) -> None:
        super().__init__()
        width = num_fields * embed_dim + num_dense
        self.cross_w = nn.Parameter(torch.randn(width) * INIT_STD)
        self.cross_b = nn.Parameter(torch.randn(width) * INIT_STD)
        self.deep = relu_tower([width, HIDDEN, HIDDEN, HIDDEN])
        self.out = normal_linear(width + HIDDEN, 1)

    def forward(self, dense_BI: torch.Tensor, emb_BFD: torch.Tensor) -> torch.Tensor:
        x0_BK = torch.cat([emb_BFD.flatten(1), dense_BI], dim=1)
        cross_BK = x0_BK * (x0_BK @ self.cross_w).unsqueeze(1) + x0_BK + self.cross_b
        return self.out(torch.cat([cross_BK, self.deep(x0_BK)], dim=1)).squeeze(1)

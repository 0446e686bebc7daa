"""Deep & Cross Network as HET-GMP trained it (SPEC §4, lr 0.003).

    x0 = [flatten(emb_BFD), dense_BI]                 (B, K), K = F*d + I
    cross: x1 = x0 * (x0 · w) + x0 + b                w, b in R^K; x0 · w is one scalar per sample
    deep:  x0 -> 256 -> ReLU -> 256 -> ReLU -> 256
    logit = linear([x1, deep])                        (K + 256) -> 1

One cross layer, as the SPEC states. Example with K = 2, x0 = [1, 2],
w = [0.5, 0], b = [0, 1]: x0 · w = 0.5, x1 = [0.5, 1] + [1, 2] + [0, 1] = [1.5, 4].

Computed without forming x0 or x1: the output layer is linear, so with its
weight split as [u (K), v (256)],

    x1 · u = (x0 · w + 1) (x0 · u) + b · u

and the tower's first layer x0 W1, x0 · w and x0 · u are one matmul of the
embeddings with the stacked [W1, w, u] (plus one of the dense features with
their part). Same function, same parameters, same gradients; what goes away
are the elementwise passes over the [B, K] activations (at d = 128, K = 3341:
about ten passes of 109 MB a step, forward and backward), which bounded DCN's
step on a GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hetgmp.models.base import CTRModel
from hetgmp.models.layers import HIDDEN, INIT_STD, aligned_linear, normal_linear, relu_tower


class DCN(CTRModel):
    """forward(dense_BI, emb_BFD) -> logits_B (no sigmoid)."""

    def __init__(self, num_fields: int, num_dense: int, embed_dim: int) -> None:
        super().__init__()
        width = num_fields * embed_dim + num_dense
        self.cross_w = nn.Parameter(torch.randn(width) * INIT_STD)
        self.cross_b = nn.Parameter(torch.randn(width) * INIT_STD)
        self.deep = relu_tower([width, HIDDEN, HIDDEN, HIDDEN])
        self.out = normal_linear(width + HIDDEN, 1)

    def forward(self, dense_BI: torch.Tensor, emb_BFD: torch.Tensor) -> torch.Tensor:
        emb_BE = emb_BFD.flatten(1)
        e, width = emb_BE.shape[1], len(self.cross_w)
        u_K, v_H = self.out.weight[0, :width], self.out.weight[:, width:]
        hidden = self.deep[0].weight.shape[0]
        y_BM = F.linear(emb_BE, self._stacked(u_K, 0, e)) + aligned_linear(dense_BI, self._stacked(u_K, e, width))
        deep_BH, s_B, t_B = y_BM[:, :hidden], y_BM[:, hidden], y_BM[:, hidden + 1]
        return (s_B + 1) * t_B + self.cross_b @ u_K + F.linear(self.deep[1:](deep_BH), v_H).squeeze(1)

    def _stacked(self, u_K: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Columns start:stop of [W1; w; u] (M = 256 + 2 rows), a contiguous copy (a column
        slice of one stacked matrix has a row stride of K, which for K = 429 is not 16-byte
        aligned in bf16 and sent cuBLAS to slower kernels), with zero rows up to a multiple
        of 8 when compiled, so that the product's rows are aligned as well."""
        parts = [self.deep[0].weight[:, start:stop], self.cross_w[None, start:stop], u_K[None, start:stop]]
        pad = -(len(parts[0]) + 2) % 8
        if pad and torch.compiler.is_compiling():
            parts.append(parts[0].new_zeros(pad, stop - start))
        return torch.cat(parts)

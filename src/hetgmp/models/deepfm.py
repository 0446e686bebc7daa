"""DeepFM as HET-GMP trained it (SPEC §4, lr 0.001).

The table is d+1 wide: column 0 of a row is its first-order weight, columns
1..d its factor vector v. With emb_BFD of shape (B, F, d+1):

    first  = sum over fields of emb[:, f, 0]
    second = 0.5 * sum over k of ((sum_f v_fk)^2 - sum_f v_fk^2)   (= sum over pairs f<g of <v_f, v_g>)
    dnn    = flatten(v) (F*d) -> 256 -> ReLU -> 256 -> ReLU -> 1
    logit  = first + second + dnn

Example, one sample, F = 2, d = 1: rows [0.1, 2] and [0.3, 3] give
first 0.4 and second 0.5 * ((2 + 3)^2 - (4 + 9)) = 6 = 2 * 3.

Dense features are not used, as in the original DeepFM (its FM and DNN read
the embeddings only); they are accepted so every model has one signature.
"""

from __future__ import annotations

import torch

from hetgmp.models.base import CTRModel
from hetgmp.models.layers import HIDDEN, relu_tower


class DeepFM(CTRModel):
    """forward(dense_BI, emb_BFD) -> logits_B (no sigmoid); emb_BFD is d+1 wide."""

    def __init__(self, num_fields: int, num_dense: int, embed_dim: int) -> None:
        super().__init__()
        self.dnn = relu_tower([num_fields * embed_dim, HIDDEN, HIDDEN, 1])

    def forward(self, dense_BI: torch.Tensor, emb_BFD: torch.Tensor) -> torch.Tensor:
        first_B = emb_BFD[:, :, 0].sum(1)
        v_BFD = emb_BFD[:, :, 1:]
        second_B = 0.5 * (v_BFD.sum(1).square() - v_BFD.square().sum(1)).sum(1)
        return first_B + second_B + self.dnn(v_BFD.flatten(1)).squeeze(1)

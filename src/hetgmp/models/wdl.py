"""Wide & Deep as HET-GMP trained it (SPEC §4, lr 0.01).

The deep tower reads only the dense features; the embeddings reach the output
through one linear layer (the "wide" part), concatenated with the tower:

    dense_BI  -> 256 -> ReLU -> 256 -> ReLU -> 256 ─┐
    emb_BFD   -> flatten (F*d) ─────────────────────┴─ concat -> linear -> logit

With no dense features (Avazu) the tower would only ever see an empty input
and emit zeros, so it is left out and the model is the linear part alone.

The output layer is applied as two matmuls, one per side of the concatenation
(out(cat[a, b]) = a W_a + b W_b): the same function and parameters, without
writing the [B, F*d + 256] concatenation in forward or copying its gradient
slice in backward (at d = 128 that is 109 MB each way a step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hetgmp.models.base import CTRModel
from hetgmp.models.layers import HIDDEN, aligned_linear, normal_linear, relu_tower


class WDL(CTRModel):
    """forward(dense_BI, emb_BFD) -> logits_B (no sigmoid)."""

    provides_row_weights = True
    provides_dense_part = True

    def __init__(self, num_fields: int, num_dense: int, embed_dim: int) -> None:
        super().__init__()
        self.num_fields, self.embed_dim = num_fields, embed_dim
        self.deep = relu_tower([num_dense, HIDDEN, HIDDEN, HIDDEN]) if num_dense else None
        self.out = normal_linear(num_fields * embed_dim + (HIDDEN if num_dense else 0), 1)

    def forward(self, dense_BI: torch.Tensor, emb_BFD: torch.Tensor) -> torch.Tensor:
        return self.head(self.dense_part(dense_BI), emb_BFD)

    def dense_part(self, dense_BI: torch.Tensor) -> torch.Tensor | None:
        """The tower's output (B, 256), None without dense features: it reads no embedding, so a
        step may run it while the rows are still being sorted and gathered (FastStepConfig.overlap)."""
        if self.deep is None:
            return None
        return self.deep[1:](aligned_linear(dense_BI, self.deep[0].weight))

    def row_weights(self) -> torch.Tensor:
        """The output layer's weight on the flattened rows, as [F, d]: the rows reach the logit
        through it alone, so a row's gradient is dloss/dlogit times it (FastStepConfig.implicit_row_grad)."""
        return self.out.weight[0, : self.num_fields * self.embed_dim].view(self.num_fields, self.embed_dim)

    def head(self, deep_BH: torch.Tensor | None, emb_BFD: torch.Tensor) -> torch.Tensor:
        """The output layer on [embeddings, tower output]: logits_B."""
        wide_BK = emb_BFD.flatten(1)
        if deep_BH is None:
            return self.out(wide_BK).squeeze(1)
        k = wide_BK.shape[1]
        weight = self.out.weight
        if torch.compiler.is_compiling():
            # One fused reduction forward, one pointwise kernel backward: cuBLAS's kernels for a
            # single output column (and the K = 1 outer product of its input gradient) took
            # 0.04 ms more a step on an H100 at d = 128 (eagerly, the matmuls are faster).
            total = torch.promote_types(wide_BK.dtype, torch.float32)  # bf16 products, summed in fp32
            wide_B = (wide_BK * weight[0, :k].to(wide_BK.dtype)).to(total).sum(1)
            return wide_B + F.linear(deep_BH, weight[:, k:]).squeeze(1).to(total)
        return (F.linear(wide_BK, weight[:, :k]) + F.linear(deep_BH, weight[:, k:])).squeeze(1)

"""The sparse optimizers, on rows: they return the change, the caller applies it.

Returning (delta, accumulator delta) instead of updating in place lets one
function serve the owner (apply to the primary), a mirror (apply locally and
add to the pending delta that is later pushed) and the single-worker table.

    SGD:               delta = -lr * g
    row-wise Adagrad:  acc_delta = mean(g^2 over the row); acc' = acc + acc_delta
                       delta = -lr * g / (sqrt(acc') + eps)   (as FBGEMM's rowwise Adagrad)
"""

from __future__ import annotations

import torch

from hetgmp.embedding.config import EmbeddingConfig


def row_update(grad_UD: torch.Tensor, acc_U: torch.Tensor | None, config: EmbeddingConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimizer step for U rows with summed gradients `grad_UD` (and their accumulators)."""
    if not config.adagrad:
        return grad_UD * -config.lr, None
    acc_delta_U = grad_UD.pow(2).mean(dim=1)
    scale_U = -config.lr / ((acc_U + acc_delta_U).sqrt() + config.adagrad_eps)
    return grad_UD * scale_U.unsqueeze(1), acc_delta_U

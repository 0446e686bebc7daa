"""What every CTR model declares: the forward signature and the fast steps' optional hooks.

A model is a `CTRModel`: forward(dense_BI, emb_BFD) -> logits_B. Two hooks let
the fast steps reorder or shorten a step without changing its arithmetic; a
model states on its class whether it has them, so a step asks the class
(`has_row_weights(model)`), not the object's attributes:

    provides_row_weights   row_weights() -> (F, d): the rows reach the logit through
                           this one linear layer alone (FastStepConfig.implicit_row_grad)
    provides_dense_part    dense_part(dense_BI) and head(dense_out, emb_BFD), with
                           forward == head(dense_part(dense), emb), the first reading
                           no embedding row (FastStepConfig.overlap)

Example: WDL declares both; DCN neither, so has_row_weights(DCN(...)) is False.

`layer_width()` sizes the memory formulas' model term (embedding/memory.py):
the floats per sample its layers write, by default the output widths of its
linear layers; a model that writes more (DLRM's dot products, DCNv2's cross
layers) adds them.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


class CTRModel(nn.Module):
    """Base class of the models: the hooks they declare (see module doc)."""

    provides_row_weights: ClassVar[bool] = False
    provides_dense_part: ClassVar[bool] = False

    def forward(self, dense_BI: torch.Tensor, emb_BFD: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def layer_width(self) -> int:
        """Floats per sample the forward writes beyond its input (each also gets a gradient)."""
        return sum(m.out_features for m in self.modules() if isinstance(m, nn.Linear))


def has_row_weights(model: nn.Module) -> bool:
    """Whether the model's class declares row_weights() (implicit_row_grad may run)."""
    return isinstance(model, CTRModel) and type(model).provides_row_weights


def has_dense_part(model: nn.Module) -> bool:
    """Whether the model's class declares dense_part() and head() (the overlapped forward may run)."""
    return isinstance(model, CTRModel) and type(model).provides_dense_part

"""Layer builders shared by the CTR models: bias-free linear layers drawn from
N(0, 0.01), as in the original, and the ReLU towers built from them; and the
biased layers of the DLRM family (DLRM, DCNv2), initialised as DLRM's
reference code does."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# The original initialised every dense weight (and DCN's cross bias) this way.
INIT_STD = 0.01
# Width of every hidden layer in the original models.
HIDDEN = 256


def normal_linear(in_features: int, out_features: int) -> nn.Linear:
    """A bias-free `nn.Linear` with weights drawn from N(0, INIT_STD)."""
    layer = nn.Linear(in_features, out_features, bias=False)
    nn.init.normal_(layer.weight, mean=0.0, std=INIT_STD)
    return layer


def relu_tower(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers through `sizes` with a ReLU between them, none after the last.

    Example: relu_tower([13, 256, 256, 256]) is
    Linear(13, 256) -> ReLU -> Linear(256, 256) -> ReLU -> Linear(256, 256).
    """
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(normal_linear(n_in, n_out))
    return nn.Sequential(*layers)


def dlrm_linear(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    """An `nn.Linear` initialised as DLRM's reference: weights from N(0, sqrt(2 / (in + out))),
    the bias from N(0, sqrt(1 / out))."""
    layer = nn.Linear(in_features, out_features, bias=bias)
    nn.init.normal_(layer.weight, mean=0.0, std=(2.0 / (in_features + out_features)) ** 0.5)
    if bias:
        nn.init.normal_(layer.bias, mean=0.0, std=(1.0 / out_features) ** 0.5)
    return layer


def dlrm_mlp(sizes: Sequence[int], relu_last: bool) -> nn.Sequential:
    """`dlrm_linear` layers through `sizes`, a ReLU after each but the last unless `relu_last`
    (DLRM's bottom MLP ends in a ReLU, its top MLP in the logit).

    Example: dlrm_mlp([13, 512, 16], relu_last=True) is
    Linear(13, 512) -> ReLU -> Linear(512, 16) -> ReLU.
    """
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(dlrm_linear(n_in, n_out))
        if relu_last or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def aligned_linear(x_BK: torch.Tensor, weight_MK: torch.Tensor, bias_M: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias), with K padded by zeros to a multiple of 8 when compiled.

    bf16 rows of K = 13 dense features (26 bytes) are not 16-byte aligned, and
    cuBLAS then falls back to older, slower kernels for the matmul and both of
    its gradients; the zero columns change no sum. Only under torch.compile,
    which folds the padding into the cast it writes anyway (eagerly, the two
    extra copies would cost more than they save). An x wider than the weight
    arrives padded already (zero columns from a fused kernel, as DLRM's
    interaction): the weight gets zero columns to match."""
    extra = x_BK.shape[-1] - weight_MK.shape[-1]
    if extra > 0:
        return F.linear(x_BK, F.pad(weight_MK, (0, extra)), bias_M)
    pad = -x_BK.shape[-1] % 8
    if not pad or not torch.compiler.is_compiling():
        return F.linear(x_BK, weight_MK, bias_M)
    return F.linear(F.pad(x_BK, (0, pad)), F.pad(weight_MK, (0, pad)), bias_M)


def aligned_mlp(mlp: nn.Sequential, x_BK: torch.Tensor) -> torch.Tensor:
    """mlp(x), its first layer through aligned_linear (a `dlrm_mlp` on 13 dense features, or on
    DLRM's 367 interaction outputs)."""
    first = mlp[0]
    return mlp[1:](aligned_linear(x_BK, first.weight, first.bias))

"""CTR models (SPEC §4): single-device modules that receive the embeddings.

Every model is a `CTRModel` with forward(dense_BI, emb_BFD) -> logits_B: dense
features (B, I), the batch's embedding rows (B, F, table_width), and one
logit per sample (no sigmoid; train with BCE-with-logits). The embedding
runtime owns the tables. The fast steps' optional hooks are declared on the
class (models/base.py: has_row_weights, has_dense_part).

    model = build_model("dfm", num_fields=26, num_dense=13, embed_dim=16)
    table_width("dfm", 16) == 17   # DeepFM's rows carry a first-order weight
    build_model("dcnv2", 26, 13, 128, shape=DCNv2Shape(cross_rank=0))  # full-rank cross layers

wdl, dcn and dfm are HET-GMP's models; dlrm and dcnv2 the DLRM family's, whose
layer sizes a run chooses (models/shapes.py: a default and MLPerf's preset).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from hetgmp.errors import HetGMPError
from hetgmp.models.bags import POOL_MODES, Bags, pool_bags
from hetgmp.models.base import CTRModel, has_dense_part, has_row_weights
from hetgmp.models.dcn import DCN
from hetgmp.models.dcnv2 import DCNV2_DEFAULT, DCNV2_MLPERF, DCNv2, DCNv2Shape
from hetgmp.models.deepfm import DeepFM
from hetgmp.models.dlrm import DLRM, DLRM_KAGGLE, DLRM_MLPERF, DLRMShape
from hetgmp.models.shapes import (PRESETS, SHAPES, check_shape, describe_shape, model_shape, parse_widths, shape_from_flags,
                                  shape_from_record, shape_of, shape_record)
from hetgmp.models.wdl import WDL

MODELS: dict[str, type[CTRModel]] = {"wdl": WDL, "dcn": DCN, "dfm": DeepFM, "dlrm": DLRM, "dcnv2": DCNv2}
MODEL_NAMES = tuple(MODELS)
# The learning rates for plain SGD: the original script's for wdl, dcn and dfm; DLRM's reference
# Criteo Kaggle run for dlrm; dcnv2 has no published SGD rate (MLPerf trains it with Adagrad), and
# takes DLRM's.
ORIGINAL_LR = {"wdl": 0.01, "dcn": 0.003, "dfm": 0.001, "dlrm": 0.1, "dcnv2": 0.1}


def _check_name(name: str) -> None:
    if name not in MODELS:
        raise HetGMPError(f"unknown model {name!r}: choose one of {', '.join(MODEL_NAMES)} (--model)")


def table_width(name: str, embed_dim: int) -> int:
    """Columns of an embedding row: embed_dim, plus DeepFM's first-order weight."""
    _check_name(name)
    return embed_dim + 1 if name == "dfm" else embed_dim


def build_model(name: str, num_fields: int, num_dense: int, embed_dim: int, shape: Any = None) -> CTRModel:
    """The named model (CPU, float32): HET-GMP's drawn from N(0, 0.01), the DLRM family's as DLRM's
    reference initialises them. `shape` (dlrm, dcnv2 only) replaces the default layer sizes."""
    _check_name(name)
    sizes = {"num_fields": num_fields, "num_dense": num_dense, "embed_dim": embed_dim}
    bad = {k: v for k, v in sizes.items() if v < (0 if k == "num_dense" else 1)}
    if bad:
        raise HetGMPError(
            f"cannot build {name}: {bad} out of range (num_fields and embed_dim must be >= 1, num_dense >= 0); "
            "check the dataset's meta.json and --embed-dim"
        )
    if shape is None:
        return MODELS[name](**sizes)
    if not isinstance(shape, SHAPES.get(name, ())):
        wanted = SHAPES[name].__name__ if name in SHAPES else "none (its layer sizes are fixed)"
        raise HetGMPError(f"cannot build {name} with shape {shape!r}: it takes {wanted}")
    check_shape(name, shape)
    return MODELS[name](**sizes, shape=shape)


@dataclass(frozen=True)
class ModelSize:
    """What the memory formulas need of a model (embedding/memory.py batch_bytes)."""

    parameters: int
    layer_width: int  # CTRModel.layer_width(): floats per sample its layers write


def model_size(name: str, num_fields: int, num_dense: int, embed_dim: int, shape: Any = None) -> ModelSize:
    """The named model's real parameter count and layer width, built on the meta device (no memory),
    so that memory can be checked before the model is built.

    Example: model_size("dcnv2", 26, 13, 128, DCNV2_MLPERF).parameters == 16_044_545 (MLPerf's DLRM-DCNv2)."""
    with torch.device("meta"):
        model = build_model(name, num_fields, num_dense, embed_dim, shape)
    return ModelSize(sum(p.numel() for p in model.parameters()), model.layer_width())


__all__ = [
    "MODEL_NAMES", "ORIGINAL_LR", "POOL_MODES", "PRESETS", "SHAPES", "ModelSize", "build_model", "model_size", "table_width", "pool_bags", "Bags",
    "describe_shape", "model_shape", "parse_widths", "shape_from_flags", "shape_from_record", "shape_of", "shape_record",
    "CTRModel", "has_row_weights", "has_dense_part",
    "WDL", "DCN", "DeepFM", "DLRM", "DLRMShape", "DLRM_KAGGLE", "DLRM_MLPERF", "DCNv2", "DCNv2Shape", "DCNV2_DEFAULT", "DCNV2_MLPERF",
]

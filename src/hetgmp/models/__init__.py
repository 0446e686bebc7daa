"""CTR models (SPEC §4): single-device modules that receive the embeddings.

Every model has forward(dense_BI, emb_BFD) -> logits_B: dense features (B, I),
the batch's embedding rows (B, F, table_width), and one logit per sample (no
sigmoid; train with BCE-with-logits). The embedding runtime owns the tables.

    model = build_model("dfm", num_fields=26, num_dense=13, embed_dim=16)
    table_width("dfm", 16) == 17   # DeepFM's rows carry a first-order weight
"""

from __future__ import annotations

from torch import nn

from hetgmp.errors import HetGMPError
from hetgmp.models.dcn import DCN
from hetgmp.models.deepfm import DeepFM
from hetgmp.models.wdl import WDL

MODELS: dict[str, type[nn.Module]] = {"wdl": WDL, "dcn": DCN, "dfm": DeepFM}
MODEL_NAMES = tuple(MODELS)
# The learning rates the original script used with plain SGD.
ORIGINAL_LR = {"wdl": 0.01, "dcn": 0.003, "dfm": 0.001}


def _check_name(name: str) -> None:
    if name not in MODELS:
        raise HetGMPError(f"unknown model {name!r}: choose one of {', '.join(MODEL_NAMES)} (--model)")


def table_width(name: str, embed_dim: int) -> int:
    """Columns of an embedding row: embed_dim, plus DeepFM's first-order weight."""
    _check_name(name)
    return embed_dim + 1 if name == "dfm" else embed_dim


def build_model(name: str, num_fields: int, num_dense: int, embed_dim: int) -> nn.Module:
    """The named model, its weights drawn from N(0, 0.01) (CPU, float32)."""
    _check_name(name)
    sizes = {"num_fields": num_fields, "num_dense": num_dense, "embed_dim": embed_dim}
    bad = {k: v for k, v in sizes.items() if v < (0 if k == "num_dense" else 1)}
    if bad:
        raise HetGMPError(
            f"cannot build {name}: {bad} out of range (num_fields and embed_dim must be >= 1, num_dense >= 0); "
            "check the dataset's meta.json and --embed-dim"
        )
    return MODELS[name](**sizes)


__all__ = ["MODEL_NAMES", "ORIGINAL_LR", "build_model", "table_width", "WDL", "DCN", "DeepFM"]

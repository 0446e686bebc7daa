"""The layer sizes of the DLRM family as a run chooses them: a preset, then single sizes.

dlrm and dcnv2 take a shape (DLRMShape, DCNv2Shape); wdl, dcn and dfm have
fixed sizes (HET-GMP's). A run starts from a preset (`--model-shape`: default
or mlperf) and may change single sizes (`--bottom-mlp`, `--top-mlp`,
`--cross-layers`, `--cross-rank`):

    model_shape("dcnv2")                                     # None: the model's default shape
    model_shape("dcnv2", preset="mlperf")                    # DCNV2_MLPERF
    model_shape("dlrm", preset="mlperf", top=(512, 256))     # MLPerf's bottom MLP, a smaller top
    shape_record(shape_of("dlrm", None))                     # what a checkpoint records (JSON)
    describe_shape(DLRM_KAGGLE) == "bottom 512-256-64-d, top 512-256-1"
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hetgmp.errors import HetGMPError
from hetgmp.models.dcnv2 import DCNV2_DEFAULT, DCNV2_MLPERF
from hetgmp.models.dlrm import DLRM_KAGGLE, DLRM_MLPERF

# Each preset of --model-shape (hetgmp.choices.SHAPE_PRESETS), per model that takes a shape.
PRESETS: dict[str, dict[str, Any]] = {
    "dlrm": {"default": DLRM_KAGGLE, "mlperf": DLRM_MLPERF},
    "dcnv2": {"default": DCNV2_DEFAULT, "mlperf": DCNV2_MLPERF},
}
SHAPES: dict[str, type] = {name: type(presets["default"]) for name, presets in PRESETS.items()}
# The flag that sets each size.
FLAGS = {"preset": "--model-shape", "bottom": "--bottom-mlp", "top": "--top-mlp", "cross_layers": "--cross-layers",
         "cross_rank": "--cross-rank"}


def model_shape(name: str, preset: str | None = None, **sizes: Any) -> Any:
    """The `shape=` of build_model for a run's options: `preset` ("default" or "mlperf") with `sizes`
    (bottom, top, cross_layers, cross_rank; None: the preset's) replaced; None when nothing is given."""
    given = {key: value for key, value in sizes.items() if value is not None}
    if preset is None and not given:
        return None
    if name not in PRESETS:
        named = [FLAGS[key] for key in (["preset"] if preset else []) + list(given)]
        flags, verb = " and ".join(named), "set" if len(named) > 1 else "sets"
        raise HetGMPError(f"{flags} {verb} the layer sizes of dlrm and dcnv2, and the model is {name}, whose sizes are fixed: drop {flags}")
    base = PRESETS[name][preset or "default"]
    foreign = [key for key in given if not hasattr(base, key)]
    if foreign:
        raise HetGMPError(f"{FLAGS[foreign[0]]} sets dcnv2's cross layers, and the model is {name}: drop {FLAGS[foreign[0]]}")
    shape = dataclasses.replace(base, **given)
    check_shape(name, shape)
    return shape


def shape_from_flags(name: str, preset: str | None, bottom_mlp: str | None = None, top_mlp: str | None = None,
                     cross_layers: int | None = None, cross_rank: int | None = None) -> Any:
    """model_shape from the flags' values as given (the MLPs' widths as "512,256" text)."""
    widths = {key: None if text is None else parse_widths(text, FLAGS[key])
              for key, text in (("bottom", bottom_mlp), ("top", top_mlp))}
    return model_shape(name, preset, **widths, cross_layers=cross_layers, cross_rank=cross_rank)


def shape_of(name: str, shape: Any) -> Any:
    """The shape a model is built in: `shape`, or its default (None for models without one)."""
    return shape if shape is not None or name not in PRESETS else PRESETS[name]["default"]


def describe_shape(shape: Any) -> str:
    """The layer sizes in words, e.g. "bottom 512-256-d, 1 cross layer of rank 512, top 512-256-1"."""
    parts = [f"bottom {'-'.join(map(str, (*shape.bottom, 'd')))}"]
    if hasattr(shape, "cross_layers"):
        rank = "full rank" if shape.cross_rank == 0 else f"rank {shape.cross_rank}"
        parts.append(f"{shape.cross_layers} cross layer{'s' if shape.cross_layers != 1 else ''} of {rank}")
    return ", ".join([*parts, f"top {'-'.join(map(str, (*shape.top, 1)))}"])


def check_shape(name: str, shape: Any) -> None:
    widths = [*shape.bottom, *shape.top]
    if any(w < 1 for w in widths) or getattr(shape, "cross_rank", 0) < 0 or getattr(shape, "cross_layers", 0) < 0:
        raise HetGMPError(f"cannot build {name} with {shape}: layer widths must be >= 1, cross_rank and cross_layers >= 0 "
                          f"(--bottom-mlp, --top-mlp, --cross-layers, --cross-rank)")


def parse_widths(text: str, flag: str) -> tuple[int, ...]:
    """A flag's hidden layer widths, "512,256" -> (512, 256); "" is no hidden layer."""
    try:
        widths = tuple(int(part) for part in text.split(",")) if text.strip() else ()
    except ValueError:
        raise HetGMPError(f"{flag} {text!r}: expected layer widths separated by commas, e.g. 512,256") from None
    if any(w < 1 for w in widths):
        raise HetGMPError(f"{flag} {text!r}: every layer width must be >= 1")
    return widths


def shape_record(shape: Any) -> dict[str, Any] | None:
    """The shape as meta.json records it (None: a model without one)."""
    return None if shape is None else {key: list(v) if isinstance(v, tuple) else v for key, v in dataclasses.asdict(shape).items()}


def shape_from_record(name: str, record: dict[str, Any] | None) -> Any:
    """The shape a checkpoint's `shape_record` describes."""
    if record is None:
        return None
    values = {key: tuple(v) if isinstance(v, list) else v for key, v in record.items()}
    return SHAPES[name](**values)

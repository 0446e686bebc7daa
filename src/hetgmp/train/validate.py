"""Value checks on a worker's rows before the first step: ids inside their field, labels 0/1.

Shapes and dtypes are checked when the arrays are opened
(`hetgmp.data.arrays.load_dataset`); the values are checked here, once, on
the rows this worker actually holds in memory, so that a dataset whose ids
disagree with meta.json, or whose labels are not clicks, stops the run with a
message instead of training a silently wrong model.

What is accepted (and why):
  - sparse ids: any integer dtype; column f must hold ids of field f, i.e.
    offsets[f] <= id < offsets[f] + fields[f] (multi-hot: the bag_sizes[f]
    columns of field f's bag, field by field). Example with meta.json fields
    [3, 2]: column 0 holds 0..2 and column 1 holds 3..4; a 2 in column 1 means
    the ids were stored without their field offset.
  - labels: any integer or float dtype whose values are exactly 0 or 1 (the
    original stored float64 0.0/1.0; int64 0/1 is the same data). 0.5, -1 or 2
    are refused: BCE would train on them without complaint.
  - dense features: any float dtype. NaN/inf values are not refused here: they
    are a numerical fault of the run (see RELIABILITY.md), reported with the
    step they first poison.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hetgmp.data.arrays import DatasetMeta, array_name
from hetgmp.errors import HetGMPError

_FIX = "re-run `hetgmp prepare` (or `hetgmp synth`) to rebuild the dataset"


def check_rows(directory: Path, split: str, meta: DatasetMeta, ids_NF: torch.Tensor, labels_N: torch.Tensor) -> None:
    """Raise HetGMPError naming the file, the expected range and the values found."""
    if len(labels_N) == 0:
        return
    lows, highs = ids_NF.amin(0).tolist(), ids_NF.amax(0).tolist()
    field_of_column = [f for f, k in enumerate(meta.bag_sizes) for _ in range(k)]  # multi-hot: a field's bag, column by column
    for c, (f, lo, hi) in enumerate(zip(field_of_column, lows, highs)):
        first, size = meta.offsets[f], meta.fields[f]
        if lo < first or hi >= first + size:
            raise HetGMPError(
                f"{directory / array_name(split, 'sparse')}: column {c} must hold the ids of field {f}, "
                f"{first}..{first + size - 1} (meta.json fields/offsets), but holds {lo}..{hi}: the ids and "
                f"meta.json disagree (ids are global: field offset added); {_FIX}"
            )
    bad = (labels_N != 0) & (labels_N != 1)
    if bool(bad.any()):
        values = sorted({float(v) for v in labels_N[bad][:5].tolist()})
        raise HetGMPError(
            f"{directory / array_name(split, 'labels')}: labels must be 0 or 1, found {int(bad.sum())} other "
            f"value(s), e.g. {values}: store clicks as 0/1 (any int or float dtype); {_FIX}"
        )

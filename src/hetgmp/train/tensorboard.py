"""`hetgmp train --tensorboard DIR`: the --metrics records as TensorBoard scalars.

Every number of a TRAIN or EVAL record becomes a scalar named by its phase,
at the record's step: train/loss, train/samples_per_s, train/rows_fetched,
train/rows_pushed, ..., eval/auc, eval/logloss, eval/accuracy. Counters that
only place a record (step, epoch, samples, time, world size, test rows) are
left out. View with `tensorboard --logdir DIR`.

TensorBoard is optional (`pip install 'hetgmp[tensorboard]'`); the flag is
refused with the install line when it is missing, before any worker starts.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

from hetgmp.errors import HetGMPError

PLACING_KEYS = ("step", "epoch", "samples", "time_s", "world_size", "test_rows")


def require_tensorboard() -> None:
    if importlib.util.find_spec("tensorboard") is None:
        raise HetGMPError("--tensorboard needs the tensorboard package, which is not installed: "
                          "pip install 'hetgmp[tensorboard]' (or pip install tensorboard), or drop --tensorboard")


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """{"phase/name": value} of a record's finite numbers, e.g. {"train/loss": 0.47, ...}."""
    phase = record.get("phase", "train")
    return {f"{phase}/{key}": float(value) for key, value in record.items()
            if key not in PLACING_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


class TensorBoardScalars:
    """Appends records to an event file in `directory` (a resumed run adds another file beside it)."""

    def __init__(self, directory: str) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=directory)

    def add(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self._writer.add_scalar(tag, value, global_step=int(record["step"]))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

"""What a training run reports: TRAIN/EVAL lines, a progress bar, a log file, a JSONL metrics file, TensorBoard scalars.

Only rank 0 reports; every other rank gets a silent RunLog. Lines look like

    TRAIN step 100 epoch 0 loss 0.4700 acc 0.7800 samples/s 6.00e+05/worker 1.20e+06 total rows/step fetched 812.0 pushed 640.0
    EVAL  step 100 epoch 0 auc 0.790000 logloss 0.460000 acc 0.7800 rows 100000

and each becomes one JSON object in the metrics file, e.g.

    {"phase": "train", "step": 100, "epoch": 0, "samples": 819200, "loss": 0.47, "accuracy": 0.78,
     "samples_per_s": 1.2e6, "samples_per_s_per_worker": 6.0e5, "world_size": 2, "time_s": 12.3,
     "rows_fetched": 812.0, "rows_pushed": 640.0, "mirror_hits": 300.0, "local_hits": 900.0, ...}
    {"phase": "eval", "step": 100, "epoch": 0, "samples": 819200, "auc": 0.79, "logloss": 0.46,
     "accuracy": 0.78, "test_rows": 100000, "time_s": 13.0}

Both files are appended to and flushed line by line, so a resumed run
continues them and a killed run leaves every line written so far.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from hetgmp.train.tensorboard import TensorBoardScalars


class RunLog:
    """Rank 0's reporter; `enabled=False` makes every method a no-op."""

    def __init__(self, enabled: bool, log_path: str | None, metrics_path: str | None, total_steps: int, start_step: int, progress: bool | None,
                 tensorboard: str | None = None):
        self.enabled = enabled
        self._files: list[TextIO] = []
        self._log = self._open(log_path) if enabled else None
        self._metrics = self._open(metrics_path) if enabled else None
        self._board = TensorBoardScalars(tensorboard) if enabled and tensorboard else None
        self._bar = None
        if enabled and (progress if progress is not None else sys.stderr.isatty()):
            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", file=sys.stderr, dynamic_ncols=True, leave=False)

    def _open(self, path: str | None) -> TextIO | None:
        if not path:
            return None
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a", buffering=1)
        self._files.append(f)
        return f

    def info(self, line: str) -> None:
        """A free-form line to stdout and the log file."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)
        if self._log:
            self._log.write(line + "\n")

    def note(self, line: str) -> None:
        """A line for the log file only."""
        if self.enabled and self._log:
            self._log.write(line + "\n")

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def train(self, record: dict[str, Any]) -> None:
        r = record
        self.info(
            f"TRAIN step {r['step']} epoch {r['epoch']} loss {r['loss']:.4f} acc {r['accuracy']:.4f} "
            f"samples/s {r['samples_per_s_per_worker']:.3g}/worker {r['samples_per_s']:.3g} total "
            f"rows/step fetched {r.get('rows_fetched', 0.0):.1f} pushed {r.get('rows_pushed', 0.0):.1f}"
            + (f" mirrors read fresh {r['mirror_hits']:.1f} refreshed {r['mirror_refreshes']:.1f}" if r.get("mirror_hits", 0) + r.get("mirror_refreshes", 0) else "")
            + (f" skipped {r['skipped_batches']} non-finite batches" if r.get("skipped_batches") else "")
        )
        self._write_metrics({"phase": "train", **record})

    def eval(self, record: dict[str, Any]) -> None:
        r = record
        self.info(
            f"EVAL  step {r['step']} epoch {r['epoch']} auc {r['auc']:.6f} logloss {r['logloss']:.6f} "
            f"acc {r['accuracy']:.4f} rows {r['test_rows']}"
        )
        self._write_metrics({"phase": "eval", **record})

    def _write_metrics(self, record: dict[str, Any]) -> None:
        if self._metrics:
            self._metrics.write(json.dumps(record) + "\n")
        if self._board:
            self._board.add(record)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        for f in self._files:
            f.close()
        self._files = []
        if self._board:
            self._board.close()
            self._board = None

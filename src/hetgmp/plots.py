"""Read a run's metrics file and draw it: loss, AUC and throughput.

The metrics file is JSON Lines written by `hetgmp train --metrics`, one
object per line, e.g.

    {"phase": "train", "step": 100, "samples": 819200, "loss": 0.47, "samples_per_s": 1.2e6,
     "samples_per_s_per_worker": 6.0e5, "world_size": 2, ...}
    {"phase": "eval", "step": 100, "samples": 819200, "auc": 0.79, "logloss": 0.46, ...}

`samples` counts all workers. Lines of other phases are skipped, so the
file may grow new kinds of lines. A resumed run appends lines whose steps
restart below the last one written; the later lines win, e.g. train steps
[100, 200, 300, 200, 300, 400] read as [100, 200, 300, 400] with the last
two runs' values.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hetgmp.atomic import atomic_file
from hetgmp.errors import HetGMPError

METRICS_FILE = "metrics.jsonl"
REQUIRED = {"train": ("step", "samples", "loss"), "eval": ("step", "samples", "auc")}


@dataclass
class Metrics:
    """A run's train and eval records, in step order, resumed stretches merged."""

    path: Path
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]


def metrics_path(run: str | Path) -> Path:
    """The metrics file of a run: a file path as given (any name), or in a directory its
    metrics.jsonl, else its only .jsonl file (`hetgmp train --metrics DIR/NAME.jsonl`)."""
    run = Path(run)
    if run.is_file():
        return run
    if not run.is_dir():
        raise HetGMPError(f"{run} does not exist: pass a run directory or the file written by `hetgmp train --metrics FILE`")
    if (run / METRICS_FILE).is_file():
        return run / METRICS_FILE
    candidates = sorted(p for p in run.glob("*.jsonl") if p.is_file())
    if len(candidates) == 1:
        return candidates[0]
    found = f"holds several .jsonl files ({', '.join(p.name for p in candidates)})" if candidates else f"holds no {METRICS_FILE} nor any other .jsonl file"
    raise HetGMPError(f"{run} {found}: pass the metrics file itself, the one written by `hetgmp train --metrics FILE`")


def _parse_line(path: Path, number: int, text: str) -> dict[str, Any] | None:
    """One line as a record, None for a line of another phase."""
    where = f"{path}, line {number}"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise HetGMPError(f"{where} is not valid JSON ({e.msg}): {text[:80]!r}; the file is damaged, re-run training") from e
    if not isinstance(record, dict) or "phase" not in record:
        raise HetGMPError(f"{where}: every line must be a JSON object with a \"phase\", found {text[:80]!r}")
    required = REQUIRED.get(record["phase"])
    if required is None:
        return None
    for key in required:
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HetGMPError(
                f"{where}: {record['phase']} lines need a number under {key!r}, found {value!r}; "
                "the file was not written by `hetgmp train --metrics`"
            )
    return record


def _latest_run_wins(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kept: list[dict[str, Any]] = []
    for record in records:
        while kept and kept[-1]["step"] >= record["step"]:
            kept.pop()  # a resumed run re-did this step
        kept.append(record)
    return kept


def read_metrics(run: str | Path) -> Metrics:
    """Parse and check a metrics file; errors name the file and the line."""
    path = metrics_path(run)
    by_phase: dict[str, list[dict[str, Any]]] = {"train": [], "eval": []}
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                record = _parse_line(path, number, line)
                if record is not None:
                    by_phase[record["phase"]].append(record)
    if not by_phase["train"] and not by_phase["eval"]:
        raise HetGMPError(f"{path} has no train or eval lines: the run wrote no metrics yet (see its log), or this is another file")
    return Metrics(path, _latest_run_wins(by_phase["train"]), _latest_run_wins(by_phase["eval"]))


def _column(records: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r.get(key, math.nan)) for r in records]


def _panel(ax: Any, records: list[dict[str, Any]], x: str, y: str, title: str, empty: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step" if x == "step" else "samples (all workers)")
    ax.grid(True, alpha=0.3)
    ys = _column(records, y)
    if not any(math.isfinite(v) for v in ys):
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, color="gray")
        return
    xs = _column(records, x)
    ax.plot(xs, ys, marker="." if len(records) < 50 else None, linewidth=1.2)
    if y == "auc":  # the number a reader looks for, readable even from one point
        ax.annotate(f"{ys[-1]:.4f}", (xs[-1], ys[-1]), textcoords="offset points", xytext=(-6, -14), ha="right", fontsize=9)
    if y.startswith("samples_per_s"):
        ax.set_ylim(bottom=0)  # from zero, so noise does not look like a collapse


def plot_report(metrics: Metrics, output: str | Path) -> Path:
    """Draw a 3x2 figure (loss, AUC, samples/s) and write it atomically as PNG."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot global state

    fig = Figure(figsize=(11, 10), layout="constrained")
    axes = fig.subplots(3, 2)
    no_eval = "no eval lines (train with --val)"
    panels = [
        (metrics.train, "step", "loss", "train loss", "no train lines"),
        (metrics.train, "samples", "loss", "train loss", "no train lines"),
        (metrics.eval, "step", "auc", "validation AUC", no_eval),
        (metrics.eval, "samples", "auc", "validation AUC", no_eval),
        (metrics.train, "step", "samples_per_s", "samples/s, all workers", "no throughput recorded"),
        (metrics.train, "step", "samples_per_s_per_worker", "samples/s per worker", "no throughput recorded"),
    ]
    for ax, args in zip(axes.flat, panels):
        _panel(ax, *args)
    fig.suptitle(str(metrics.path), fontsize=10)
    output = Path(output)
    with atomic_file(output) as tmp:
        fig.savefig(tmp, dpi=100)
    return output


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def summary(metrics: Metrics) -> str:
    """A few lines: best AUC, final logloss and loss, mean samples/s per worker.

    The first train line is left out of the throughput mean when there are
    others: it carries start-up (data loading, warm-up, compilation).
    """
    train, evals = metrics.train, metrics.eval
    lines = [f"{metrics.path}: {len(train)} train lines, {len(evals)} eval lines"]
    if evals:
        best = max(evals, key=lambda r: r["auc"] if math.isfinite(r["auc"]) else -math.inf)
        last = evals[-1]
        lines.append(f"best AUC {best['auc']:.6f} at step {best['step']} ({best['samples']:,} samples)")
        lines.append(f"final eval at step {last['step']}: AUC {last['auc']:.6f}, logloss {float(last.get('logloss', math.nan)):.6f}")
    else:
        lines.append("no eval lines: train with --val for AUC and logloss")
    if train:
        steady = train[1:] if len(train) > 1 else train
        workers = train[-1].get("world_size", "?")
        lines.append(f"final train loss {train[-1]['loss']:.6f} at step {train[-1]['step']}")
        lines.append(
            f"mean samples/s per worker {_mean(_column(steady, 'samples_per_s_per_worker')):.4g} "
            f"(all workers {_mean(_column(steady, 'samples_per_s')):.4g}, world size {workers}, over {len(steady)} train lines)"
        )
    return "\n".join(lines)


def default_output(metrics_file: Path) -> Path:
    """report.png beside metrics.jsonl; NAME_report.png beside any other NAME.jsonl."""
    name = "report.png" if metrics_file.name == METRICS_FILE else f"{metrics_file.stem}_report.png"
    return metrics_file.with_name(name)

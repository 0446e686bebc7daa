"""Quality study: which optimizer settings train a model best in one epoch, how
close that comes to a standard Wide & Deep, and what bounded staleness costs.

On `hetgmp synth` data (1M rows by default, 10% validation), WDL (or --model)
with d = 16:

1. grid: `hetgmp train` for one epoch under each setting of SETTINGS (dense
   optimizer and rate, table optimizer and rate, batch size), each reporting
   the exact validation AUC of its final evaluation;
2. reference: the standard Wide & Deep of `tests/reference_wdl.py` (Adam 1e-3,
   batch 4096, dense-gradient nn.Embedding), one epoch, sklearn's AUC;
3. staleness: 2 workers (`--nproc 2`) on a 2-part plan (`hetgmp partition`),
   1% mirrors, bound 100 against bound 0, same samples, same settings.

Every run keeps its directory under --work (metrics.jsonl, train.log,
result.json); a run whose result.json exists is not repeated, so the study can
be stopped and resumed, or widened a few settings at a time:

    python benchmarks/quality_study.py --work /tmp/qs --settings default adam-3e-3
    python benchmarks/quality_study.py --work /tmp/qs --skip-grid --staleness
    python benchmarks/quality_study.py --work /tmp/qs --model dcnv2 --device cuda --skip-reference

Runs of another model than WDL keep their directories as MODEL-SETTING.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Setting:
    """One point of the grid: the optimizer flags of `hetgmp train`."""

    name: str
    optimizer: str | None  # None: the trainer's default (so are the rates)
    lr: float | None
    sparse_optimizer: str | None
    sparse_lr: float | None
    batch_size: int = 4096
    extra: tuple[str, ...] = ()  # model-specific flags, e.g. ("--cross-rank", "0")

    def flags(self) -> list[str]:
        given = {"--optimizer": self.optimizer, "--lr": self.lr, "--sparse-optimizer": self.sparse_optimizer,
                 "--sparse-lr": self.sparse_lr, "--batch-size": self.batch_size}
        return [part for flag, value in given.items() if value is not None for part in (flag, str(value))] + list(self.extra)


def _s(name: str, optimizer: str, lr: float, sparse: str, sparse_lr: float, batch: int = 4096, extra: tuple[str, ...] = ()) -> Setting:
    return Setting(name, optimizer, lr, sparse, sparse_lr, batch, extra)


# In the order they are worth running: the trainer's defaults, the original's
# SGD, then one knob at a time around the defaults (a full factorial grid is
# 3 x 3 x 2 x 3 x 2 = 108 one-epoch runs, out of reach on two cores).
SETTINGS = [
    _s("model-defaults", None, None, None, None),  # `hetgmp train`'s own defaults for the model
    _s("default", "adam", 1e-3, "rowwise_adagrad", 0.05),
    _s("original-sgd", "sgd", 0.01, "sgd", 0.01),
    _s("sparse-rwa-0.1", "adam", 1e-3, "rowwise_adagrad", 0.1),
    _s("sparse-rwa-0.2", "adam", 1e-3, "rowwise_adagrad", 0.2),
    _s("sparse-rwa-0.02", "adam", 1e-3, "rowwise_adagrad", 0.02),
    _s("sparse-sgd-1", "adam", 1e-3, "sgd", 1.0),
    _s("sparse-sgd-10", "adam", 1e-3, "sgd", 10.0),
    _s("adam-3e-3", "adam", 3e-3, "rowwise_adagrad", 0.05),
    _s("adam-3e-4", "adam", 3e-4, "rowwise_adagrad", 0.05),
    _s("adam-3e-3-rwa-0.1", "adam", 3e-3, "rowwise_adagrad", 0.1),
    _s("adagrad-0.01-rwa-0.1", "adagrad", 0.01, "rowwise_adagrad", 0.1),
    _s("adagrad-0.01", "adagrad", 0.01, "rowwise_adagrad", 0.05),
    _s("adagrad-0.05", "adagrad", 0.05, "rowwise_adagrad", 0.05),
    _s("sgd-0.1", "sgd", 0.1, "rowwise_adagrad", 0.05),
    _s("sgd-0.01", "sgd", 0.01, "rowwise_adagrad", 0.05),
    _s("default-b8192", "adam", 1e-3, "rowwise_adagrad", 0.05, 8192),
    _s("sparse-rwa-0.1-b8192", "adam", 1e-3, "rowwise_adagrad", 0.1, 8192),
    # The DLRM family's: rates around the defaults, and DCNv2's full-rank cross layers.
    _s("adam-3e-4-rwa-0.1", "adam", 3e-4, "rowwise_adagrad", 0.1),
    _s("adam-3e-4-rwa-0.2", "adam", 3e-4, "rowwise_adagrad", 0.2),
    _s("adam-1e-4-rwa-0.1", "adam", 1e-4, "rowwise_adagrad", 0.1),
    _s("adam-1e-3-rwa-0.2", "adam", 1e-3, "rowwise_adagrad", 0.2),
    _s("adam-3e-3-rwa-0.2", "adam", 3e-3, "rowwise_adagrad", 0.2),
    _s("full-rank", "adam", 1e-3, "rowwise_adagrad", 0.1, extra=("--cross-rank", "0")),
    _s("full-rank-adam-3e-4", "adam", 3e-4, "rowwise_adagrad", 0.1, extra=("--cross-rank", "0")),
    _s("rank-64", "adam", 1e-3, "rowwise_adagrad", 0.1, extra=("--cross-rank", "64")),
    _s("adam-1e-3-rwa-0.02", "adam", 1e-3, "rowwise_adagrad", 0.02),
    _s("adam-1e-3-rwa-0.03", "adam", 1e-3, "rowwise_adagrad", 0.03),
    _s("adam-3e-4-rwa-0.05", "adam", 3e-4, "rowwise_adagrad", 0.05),
    _s("adam-1e-4-rwa-0.05", "adam", 1e-4, "rowwise_adagrad", 0.05),
    _s("adam-1e-3-rwa-0.01", "adam", 1e-3, "rowwise_adagrad", 0.01),
    _s("adam-3e-4-rwa-0.02", "adam", 3e-4, "rowwise_adagrad", 0.02),
    _s("adam-1e-4-rwa-0.02", "adam", 1e-4, "rowwise_adagrad", 0.02),
    _s("adam-3e-4-rwa-0.01", "adam", 3e-4, "rowwise_adagrad", 0.01),
    _s("full-rank-adam-3e-4-rwa-0.02", "adam", 3e-4, "rowwise_adagrad", 0.02, extra=("--cross-rank", "0")),
    _s("full-rank-rwa-0.05", "adam", 1e-3, "rowwise_adagrad", 0.05, extra=("--cross-rank", "0")),
    _s("full-rank-adam-3e-4-rwa-0.05", "adam", 3e-4, "rowwise_adagrad", 0.05, extra=("--cross-rank", "0")),
    # DCNv2's layer sizes at d = 16 (K = 432): smaller top towers, full-rank or rank-64 cross layers.
    _s("top-512-256-full", "adam", 3e-4, "rowwise_adagrad", 0.02, extra=("--top-mlp", "512,256", "--cross-rank", "0")),
    _s("top-512-256-rank-64", "adam", 3e-4, "rowwise_adagrad", 0.02, extra=("--top-mlp", "512,256", "--cross-rank", "64")),
    _s("top-512-256-2x-full", "adam", 3e-4, "rowwise_adagrad", 0.02,
       extra=("--top-mlp", "512,256", "--cross-layers", "2", "--cross-rank", "0")),
    _s("top-512-256-full-adam-1e-3", "adam", 1e-3, "rowwise_adagrad", 0.02, extra=("--top-mlp", "512,256", "--cross-rank", "0")),
    _s("rank-64-adam-3e-4-rwa-0.02", "adam", 3e-4, "rowwise_adagrad", 0.02, extra=("--cross-rank", "64")),
    _s("top-256-128-full", "adam", 3e-4, "rowwise_adagrad", 0.02, extra=("--top-mlp", "256,128", "--cross-rank", "0")),
    *(_s(f"top-512-256-{layers}x-{rank}{suffix}", "adam", lr, "rowwise_adagrad", sparse_lr,
         extra=("--top-mlp", "512,256", "--cross-layers", str(layers), "--cross-rank", "0" if rank == "full" else rank.split("-")[1]))
      for layers, rank, lr, sparse_lr, suffix in [
          (2, "full", 3e-4, 0.03, "-rwa-0.03"), (2, "full", 3e-4, 0.01, "-rwa-0.01"), (1, "full", 3e-4, 0.02, ""),
          (2, "rank-64", 3e-4, 0.02, ""), (2, "full", 1e-4, 0.02, "-adam-1e-4"), (1, "full", 1e-4, 0.02, "-adam-1e-4"),
          (1, "full", 3e-4, 0.01, "-rwa-0.01"), (2, "full", 1e-4, 0.01, "-adam-1e-4-rwa-0.01"), (1, "full", 1e-4, 0.01, "-adam-1e-4-rwa-0.01")]),
]


def hetgmp(*args: str, log: Path | None = None) -> None:
    """Run one `hetgmp` subcommand, its output into `log`; fail loudly."""
    cmd = [sys.executable, "-m", "hetgmp.cli", *args]
    with open(log or Path("/dev/null"), "w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    if done.returncode:
        tail = log.read_text()[-2000:] if log else ""
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{tail}")


def train(data: Path, run_dir: Path, flags: list[str], model: str = "wdl", device: str = "cpu") -> dict:
    """One epoch of `model` d=16 with --val; the final eval record plus wall time (cached)."""
    result_file = run_dir / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    from hetgmp.plots import read_metrics

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    start = time.perf_counter()
    hetgmp(
        "train", "--data", str(data), "--model", model, "--embed-dim", "16", "--epochs", "1", "--val",
        "--metrics", str(run_dir / "metrics.jsonl"), "--log-every", "20", "--device", device, "--no-progress", *flags,
        log=run_dir / "train.log",
    )
    final = read_metrics(run_dir).eval[-1]
    result = {"auc": final["auc"], "logloss": final["logloss"], "step": final["step"],
              "samples": final["samples"], "seconds": round(time.perf_counter() - start, 1), "flags": flags}
    result_file.write_text(json.dumps(result) + "\n")
    return result


def reference(data: Path, work: Path, seed: int, batch_size: int = 4096) -> dict:
    """The standard Wide & Deep's one-epoch AUC (cached in work/reference-b4096[-seedN].json)."""
    cache = work / f"reference-b{batch_size}{_suffix(seed)}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    sys.path.insert(0, str(REPO / "tests"))
    from reference_wdl import train_reference_wdl

    start = time.perf_counter()
    auc = train_reference_wdl(data, epochs=1, batch_size=batch_size, seed=seed)
    result = {"auc": auc, "batch_size": batch_size, "seconds": round(time.perf_counter() - start, 1)}
    cache.write_text(json.dumps(result) + "\n")
    return result


def _suffix(seed: int) -> str:
    return f"-seed{seed}" if seed else ""


def staleness(data: Path, work: Path, setting: Setting, bounds: list[int]) -> dict[int, dict]:
    """The given bounds (0 and 100) on 2 workers with a 2-part plan and 1% mirrors."""
    plan = work / "plan-2.npz"
    if not plan.is_file():
        hetgmp("partition", str(data), "--parts", "2", "--output", str(plan),
               "--batch-size", str(setting.batch_size), log=work / "partition.log")
    flags = [*setting.flags(), "--nproc", "2", "--partition", str(plan), "--store-rate", "0.01"]
    return {bound: train(data, work / f"2w-bound{bound}-{setting.name}", [*flags, "--bound", str(bound)]) for bound in bounds}


def table(rows: list[tuple[str, dict, Setting | None]]) -> str:
    lines = ["| run | dense opt | lr | table opt | table lr | batch | AUC | logloss | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r, s in rows:
        opts = (s.optimizer, s.lr, s.sparse_optimizer, s.sparse_lr, s.batch_size) if s else ("adam", 1e-3, "adam (dense grad)", 1e-3, r.get("batch_size", ""))
        lines.append(f"| {name} | " + " | ".join("default" if v is None else str(v) for v in opts) + f" | {r['auc']:.4f} | {r.get('logloss', float('nan')):.4f} | {r['seconds']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="dataset dir (default: WORK/synth1m, generated if missing)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the generated dataset")
    parser.add_argument("--work", type=Path, required=True, help="directory for runs and cached results")
    parser.add_argument("--settings", nargs="*", default=None, help=f"grid settings to run (default all): {[s.name for s in SETTINGS]}")
    parser.add_argument("--skip-grid", action="store_true")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--staleness", default=None, metavar="SETTING", help="run the 2-worker bound 0 / bound 100 pair with this setting")
    parser.add_argument("--bounds", type=int, nargs="+", default=[0, 100], help="staleness bounds to compare")
    parser.add_argument("--seed", type=int, default=0, help="seed of every grid and reference run (runs of seed N > 0 go to NAME-seedN)")
    parser.add_argument("--model", default="wdl", help="the model of the grid and staleness runs")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the grid and staleness runs train")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    data = args.data or args.work / "synth1m"
    if not data.exists():
        from hetgmp.data.synthetic import generate_synthetic

        generate_synthetic(data, args.rows, seed=0)
    by_name = {s.name: s for s in SETTINGS}
    rows: list[tuple[str, dict, Setting | None]] = []
    if not args.skip_reference:
        rows.append(("reference Wide&Deep", reference(data, args.work, args.seed), None))
    if not args.skip_grid:
        for name in args.settings or list(by_name):
            run_dir = args.work / f"{'' if args.model == 'wdl' else args.model + '-'}{name}{_suffix(args.seed)}"
            flags = [*by_name[name].flags(), "--seed", str(args.seed)]
            rows.append((f"{args.model} {name}", train(data, run_dir, flags, args.model, args.device), by_name[name]))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    if args.staleness:
        setting = by_name[args.staleness]
        for bound, r in staleness(data, args.work, setting, args.bounds).items():
            rows.append((f"2 workers, plan, 1% mirrors, bound {bound}", r, setting))
    print(table(rows))


if __name__ == "__main__":
    main()

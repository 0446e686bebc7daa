"""Time `hetgmp prepare criteo` on generated raw text; project full Criteo.

Generates a Criteo-like train.txt (benchmarks/criteo_text.py, cached in
--workdir), gzips it, and runs `hetgmp prepare criteo` on each form in a
child process, reading the child's own rusage (os.wait4): wall seconds,
CPU seconds, rows/s, peak RSS. Projects the time for full Criteo
(45,840,617 rows) from rows/s. With --rss-scaling it also runs half the rows,
so the RSS growth per row can be read off the two runs and extrapolated.
The load average is printed: on a shared machine, wall time is only as
good as the share of the cores the run got (CPU seconds are steadier).

Example: python benchmarks/bench_prepare.py --rows 2000000
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from criteo_text import write_criteo_text  # noqa: E402

CRITEO_ROWS = 45_840_617


def _text(workdir: Path, rows: int) -> Path:
    path = workdir / f"criteo-{rows}.txt"
    if not path.exists():
        started = time.perf_counter()
        write_criteo_text(path.with_suffix(".partial"), rows)
        path.with_suffix(".partial").rename(path)
        print(f"generated {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return path


def _gzipped(text: Path) -> Path:
    path = text.with_name(text.name + ".gz")
    if not path.exists():
        with open(text, "rb") as src, open(path.with_suffix(".partial"), "wb") as dst:
            subprocess.run(["gzip", "-c", "-1"], stdin=src, stdout=dst, check=True)
        path.with_suffix(".partial").rename(path)
    return path


def _tar_gzipped(text: Path) -> Path:
    """dac.tar.gz's layout: train.txt inside a gzipped tar."""
    path = text.with_name(text.stem + ".tar.gz")
    if not path.exists():
        stage = text.with_name(text.stem + "-tar")
        stage.mkdir(exist_ok=True)
        member = stage / "train.txt"
        if not member.exists():
            member.symlink_to(text.resolve())
        with open(path.with_suffix(".partial"), "wb") as dst:
            tar = subprocess.Popen(["tar", "-C", str(stage), "-chf", "-", "train.txt"], stdout=subprocess.PIPE)
            subprocess.run(["gzip", "-c", "-1"], stdin=tar.stdout, stdout=dst, check=True)
            if tar.wait() != 0:
                raise SystemExit("tar failed")
        path.with_suffix(".partial").rename(path)
    return path


def run_prepare(source: Path, output: Path, rows: int) -> dict[str, float]:
    """One `hetgmp prepare criteo` in a child; its wall time, CPU time and peak RSS."""
    cmd = [sys.executable, "-m", "hetgmp.cli", "prepare", "criteo", "--input", str(source), "--output", str(output), "--force", "--no-progress"]
    return time_child(cmd, source, rows)


def time_child(cmd: list[str], source: Path, rows: int) -> dict[str, float]:
    """Run `cmd` in a child process; its wall time, CPU time, rows/s and peak RSS (from os.wait4)."""
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    child = subprocess.Popen(cmd)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed")
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "rows": rows,
        "bytes": source.stat().st_size,
        "wall_s": wall,
        "cpu_s": cpu,
        "rows_per_s": rows / wall,
        "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9,  # ru_maxrss is in KiB on Linux
        "load": (load_before + os.getloadavg()[0]) / 2,
    }


def _row(form: str, r: dict[str, float]) -> str:
    full_min = CRITEO_ROWS / r["rows_per_s"] / 60
    full_cpu_min = r["cpu_s"] / r["rows"] * CRITEO_ROWS / 60
    return (
        f"| {form} | {r['rows']:,} | {r['bytes'] / 1e9:.2f} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['rows_per_s']:,.0f} "
        f"| {r['peak_rss_gb']:.2f} | {full_min:.1f} | {full_cpu_min:.1f} | {r['load']:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of generated text (at least 2M for the reported figures)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/hetgmp-bench-prepare"), help="where the text and outputs go (text is reused)")
    parser.add_argument("--forms", default="txt,gz", help="comma list of input forms to time: txt, gz, tar.gz")
    parser.add_argument("--rss-scaling", action="store_true", help="also time half the rows (plain text) to show how RSS grows with rows")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    text = _text(args.workdir, args.rows)
    runs = []
    if args.rss_scaling:
        runs.append(("txt (half)", _text(args.workdir, args.rows // 2), args.rows // 2))
    for form in args.forms.split(","):
        source = {"txt": lambda: text, "gz": lambda: _gzipped(text), "tar.gz": lambda: _tar_gzipped(text)}[form]()
        runs.append((form, source, args.rows))
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, python {platform.python_version()}")
    print("| input | rows | GB | wall s | CPU s | rows/s | peak RSS GB | full Criteo min (wall) | full Criteo min (CPU / 1 core) | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for form, source, rows in runs:
        out = args.workdir / f"out-{form.split()[0].replace('.', '-')}"
        results.append(run_prepare(source, out, rows))
        print(_row(form, results[-1]), flush=True)
        shutil.rmtree(out)
    if args.rss_scaling:
        half, full = results[0], results[1]
        slope = (full["peak_rss_gb"] - half["peak_rss_gb"]) / (full["rows"] - half["rows"])
        projected = full["peak_rss_gb"] + slope * (CRITEO_ROWS - full["rows"])
        print(f"peak RSS grows {slope * 1e6 * 1e3:.1f} MB per million rows; linear projection for full Criteo: {projected:.2f} GB")


if __name__ == "__main__":
    main()

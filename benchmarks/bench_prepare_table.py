"""Time `hetgmp prepare table` on a generated Parquet file (rows/s, peak RSS).

The file (cached in --workdir) has the shape of a company's click log:

    click    int8, 0/1
    price, age, dwell, score, clicks_7d    float64 dense, 10% missing
    user     string, ~1M distinct (Zipf-like), 5% missing
    item     int64, ~200k distinct
    city     string, 2,000 distinct;  device  int32, 12 distinct;  hour  int32, 24
    ad, campaign  string, 50k and 3k distinct
    tags     list<string>, 0-8 tags of 5,000, 5% missing

Each run is a child process timed with os.wait4 (bench_prepare.time_child):
one-hot (tags left out), with the tags as a multi-hot bag of 8, and with
--min-count 5 on top. Example: python benchmarks/bench_prepare_table.py --rows 4000000
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prepare import time_child  # noqa: E402

CHUNK = 500_000
DENSE = ("price", "age", "dwell", "score", "clicks_7d")
SPARSE = ("user", "item", "city", "device", "hour", "ad", "campaign")


def _ids(rng: np.random.Generator, n: int, distinct: int) -> np.ndarray:
    """Zipf-like ids in [0, distinct): a few hot values, a long tail."""
    return (rng.pareto(0.6, n) * distinct / 50).astype(np.int64) % distinct


def _names(prefix: str, ids: np.ndarray, missing: np.ndarray | None = None) -> pa.Array:
    text = pc.binary_join_element_wise(prefix, pc.cast(pa.array(ids), pa.string()), "")
    return text if missing is None else pc.if_else(pa.array(missing), pa.scalar(None, pa.string()), text)


def _chunk(rng: np.random.Generator, n: int) -> pa.Table:
    columns = {"click": pa.array((rng.random(n) < 0.25).astype(np.int8))}
    for name in DENSE:
        values = rng.lognormal(2, 1.5, n)
        columns[name] = pa.array(values, mask=rng.random(n) < 0.1)
    columns["user"] = _names("u", _ids(rng, n, 1_000_000), rng.random(n) < 0.05)
    columns["item"] = pa.array(_ids(rng, n, 200_000) * 7919)
    columns["city"] = _names("city-", _ids(rng, n, 2_000))
    columns["device"] = pa.array(rng.integers(0, 12, n).astype(np.int32))
    columns["hour"] = pa.array(rng.integers(0, 24, n).astype(np.int32))
    columns["ad"] = _names("ad", _ids(rng, n, 50_000))
    columns["campaign"] = _names("c", _ids(rng, n, 3_000))
    lengths = rng.integers(0, 9, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    tags = pa.ListArray.from_arrays(pa.array(offsets), _names("t", _ids(rng, int(offsets[-1]), 5_000)), mask=pa.array(rng.random(n) < 0.05))
    columns["tags"] = tags
    return pa.table(columns)


def make_parquet(path: Path, rows: int, seed: int = 0) -> Path:
    if path.exists():
        return path
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    partial = path.with_suffix(".partial")
    writer = None
    for start in range(0, rows, CHUNK):
        table = _chunk(rng, min(CHUNK, rows - start))
        writer = writer or pq.ParquetWriter(partial, table.schema)
        writer.write_table(table, row_group_size=250_000)
    writer.close()
    partial.rename(path)
    print(f"generated {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return path


VARIANTS = {
    "one-hot": [],
    "bags": ["--multi-hot", "tags", "--bag-size", "tags=8"],
    "bags-min-count": ["--multi-hot", "tags", "--bag-size", "tags=8", "--min-count", "5"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/hetgmp-bench-prepare-table"))
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of: {', '.join(VARIANTS)}")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    source = make_parquet(args.workdir / f"clicks-{args.rows}.parquet", args.rows)
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"python {platform.python_version()}, pyarrow {pa.__version__}")
    print("| variant | flags | rows | MB | wall s | CPU s | rows/s (wall) | peak RSS GB | load avg |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.variants.split(","):
        out = args.workdir / "out"
        cmd = [sys.executable, "-m", "hetgmp.cli", "prepare", "table", "--input", str(source), "--label", "click",
               "--dense", ",".join(DENSE), "--sparse", ",".join(SPARSE), *VARIANTS[name], "--output", str(out), "--force", "--no-progress"]
        r = time_child(cmd, source, args.rows)
        print(f"| {name} | {' '.join(VARIANTS[name]) or '-'} | {r['rows']:,} | {r['bytes'] / 1e6:.0f} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['rows_per_s']:,.0f} "
              f"| {r['peak_rss_gb']:.2f} | {r['load']:.1f} |", flush=True)
        shutil.rmtree(out)


if __name__ == "__main__":
    main()

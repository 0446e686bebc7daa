"""Write raw Criteo-like text (train.txt's format) for benchmarking `prepare`.

Rows: label, I1..I13, C1..C26, tab-separated, no header, like Criteo
Kaggle's train.txt, with its quirks: empty integers (missing rates per
column from the real file, e.g. I12 ~77% empty), negative integers (I2 takes
-1..-3), empty categoricals, 8-hex-digit categorical values. Each field
draws from a vocabulary of Criteo Kaggle's own size (C3 10.1M values, ...)
with a heavy head (id = floor(size * u**POWER)), so the distinct values seen
grow with the rows as in the real file. About 240 bytes a row, as the real
file (11.1 GB / 45.84M rows).

Example: `python benchmarks/criteo_text.py --rows 2000000 --output train.txt`
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from hetgmp.data.vocab import hex_strings

CRITEO_FIELD_SIZES = [
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
]  # fmt: skip
# Share of empty values per column in the real train.txt (rounded).
INT_MISSING = [0.45, 0.0, 0.21, 0.22, 0.03, 0.22, 0.04, 0.0, 0.04, 0.45, 0.04, 0.77, 0.22]
CAT_MISSING = [0.0] * 2 + [0.03, 0.03] + [0.0, 0.12] + [0.0] * 5 + [0.03, 0.0, 0.0, 0.0, 0.03] + [0.0] * 2 + [0.44, 0.44, 0.03, 0.76, 0.0, 0.03, 0.44, 0.03]
POWER = 4.0
CLICK_RATE = 0.256


def _value_of(field: int, ids: np.ndarray) -> np.ndarray:
    """Popularity rank -> a 32-bit value: an odd multiplier mod 2**32 is a bijection, so ids stay distinct."""
    with np.errstate(over="ignore"):
        return (ids.astype(np.uint64) * np.uint64(2654435761) + np.uint64(field * 97531)) % np.uint64(2**32)


def _hex(values: np.ndarray) -> pa.Array:
    """32-bit values as 8 lowercase hex digits (the key of value v is v + 1, see vocab.py)."""
    return pa.array(hex_strings(values.astype(np.int64) + 1)).cast(pa.string())


def _with_missing(rng: np.random.Generator, values: pa.Array, rate: float) -> pa.Array:
    if rate == 0:
        return values
    return pc.if_else(pa.array(rng.random(len(values)) < rate), pa.scalar(None, values.type), values)


def _int_column(rng: np.random.Generator, j: int, rows: int) -> pa.Array:
    values = np.floor(np.exp(rng.normal(1.5, 1.8, rows))).astype(np.int64)
    if j == 1:  # I2 holds small negatives in the real file
        values -= rng.choice([0, 1, 2, 3], size=rows, p=[0.85, 0.1, 0.03, 0.02])
    return _with_missing(rng, pc.cast(pa.array(values), pa.string()), INT_MISSING[j])


def generate_chunk(rng: np.random.Generator, rows: int) -> pa.Table:
    columns = {"label": pc.cast(pa.array((rng.random(rows) < CLICK_RATE).astype(np.int8)), pa.string())}
    for j in range(13):
        columns[f"I{j + 1}"] = _int_column(rng, j, rows)
    for f, size in enumerate(CRITEO_FIELD_SIZES):
        ids = np.floor(size * rng.random(rows) ** POWER).astype(np.int64)
        columns[f"C{f + 1}"] = _with_missing(rng, _hex(_value_of(f, ids)), CAT_MISSING[f])
    return pa.table(columns)


def write_criteo_text(path: Path, rows: int, seed: int = 0, chunk: int = 500_000) -> None:
    """Write `rows` Criteo-like rows to `path` (plain text, LF line ends)."""
    rng = np.random.default_rng(seed)
    options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    with pa.OSFile(str(path), "wb") as sink:
        for start in range(0, rows, chunk):
            pacsv.write_csv(generate_chunk(rng, min(chunk, rows - start)), sink, write_options=options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_criteo_text(args.output, args.rows, args.seed)


if __name__ == "__main__":
    main()

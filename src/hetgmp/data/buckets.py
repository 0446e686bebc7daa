"""The seeded shuffle, done out of core with buckets.

Pass 1 sends row r (its index among the kept rows) to bucket
h(seed, r) mod BUCKETS, h being a 64-bit mixing hash, appending a
fixed-size record to that bucket's file. Pass 2 reads one bucket at a time,
permutes it with a generator seeded by (seed, bucket), and appends it to the
output. Random buckets and then a uniform shuffle inside each give a uniform
random permutation (it is sorting by random keys, the bucket being the top
bits), and only one bucket is ever in memory.

A record, for I dense features and F categorical fields:

    label  int8
    dense  float32[I]   already transformed
    keys   int64[F]     categorical keys (see vocab.py)

The order depends only on the seed and the kept rows, not on batch sizes.
Example: with BUCKETS = 64, 45.8M Criteo rows make 64 files of about 716k
records (187 MB each), so pass 2 holds about 0.2 GB of records at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np

BUCKETS = 64
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def record_dtype(num_dense: int, num_fields: int) -> np.dtype:
    return np.dtype([("label", np.int8), ("dense", np.float32, (num_dense,)), ("keys", np.int64, (num_fields,))])


def seed_word(seed: int) -> np.uint64:
    return np.random.SeedSequence(seed).generate_state(1, np.uint64)[0]


def bucket_of(rows: np.ndarray, seed: int) -> np.ndarray:
    """Bucket of each row index (splitmix64 finaliser of row + a word from the seed)."""
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) + seed_word(seed)
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z ^= z >> np.uint64(31)
    return (z % np.uint64(BUCKETS)).astype(np.uint8)


def bucket_permutation(seed: int, bucket: int, size: int) -> np.ndarray:
    return np.random.default_rng([seed, bucket]).permutation(size)


class BucketFiles:
    """Append-only record files, one per bucket, under `directory`."""

    def __init__(self, directory: Path, dtype: np.dtype) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.dtype = dtype
        self.counts = np.zeros(BUCKETS, np.int64)
        self._files: list[BinaryIO] = [open(self.path(b), "wb") for b in range(BUCKETS)]

    def path(self, bucket: int) -> Path:
        return self.directory / f"bucket-{bucket:02d}.bin"

    def append(self, records: np.ndarray, buckets: np.ndarray) -> None:
        order = np.argsort(buckets, kind="stable")
        counts = np.bincount(buckets, minlength=BUCKETS)
        ordered = records[order]
        ends = np.cumsum(counts)
        for b in np.flatnonzero(counts):
            self._files[b].write(ordered[ends[b] - counts[b] : ends[b]].tobytes())
        self.counts += counts

    def close(self) -> None:
        for f in self._files:
            f.close()

    def read(self, bucket: int) -> np.ndarray:
        """One bucket's records (after `close`), its file kept."""
        return np.fromfile(self.path(bucket), self.dtype)

    def take(self, bucket: int) -> np.ndarray:
        """Read one bucket's records and delete its file (the disk it held is freed as we go)."""
        records = self.read(bucket)
        self.path(bucket).unlink()
        return records

"""The sample/row bigraph: the train ids, checked, and the count matrix c.

The graph is `train_sparse_feats.npy` itself, memory-mapped: row i of the
(N, F) id array lists the F rows sample i reads, so the sample side needs no
separate CSR. The row side is kept only as counts: c[e, p] = number of
(sample, field) pairs of part p that read id e (a sample listing an id twice
counts twice). The refinement never needs the list of samples of an id, only
these counts, so the 1.2e9-edge reverse CSR (4.8 GB) is never built.

Layout of c: int32 (E, P), one id per row, so the P counts a move compares
sit in one cache line. Example, P=2, ids [[0, 1], [0, 2], [1, 2]], parts
[0, 0, 1], E=4: c = [[2, 0], [1, 1], [1, 1], [0, 0]] (id 3 unseen).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

from hetgmp.data.arrays import META_FILE, array_name, load_array, read_meta
from hetgmp.errors import HetGMPError


@dataclass
class Bigraph:
    """Train ids (N, F) of a dataset, memory-mapped, with the vocabulary size.

    `num_ids_source` says where num_ids came from: "meta.json" or
    "max id + 1" for a bare folder holding only train_sparse_feats.npy.
    """

    ids: np.ndarray
    num_ids: int
    path: Path
    num_ids_source: str
    fingerprint: dict

    @property
    def num_samples(self) -> int:
        return int(self.ids.shape[0])


def id_range(ids: np.ndarray) -> tuple[int, int]:
    """(min, max) over a 2-D id array, in parallel over row blocks."""
    lo, hi = _id_range(ids, numba.get_num_threads() * 4)
    return int(lo), int(hi)


# Kernels take the thread count as an argument: calling numba.get_num_threads()
# inside a compiled function would stop numba from caching it on disk.
@njit(parallel=True, cache=True)
def _id_range(ids, chunks):  # pragma: no cover - compiled
    n = ids.shape[0]
    lows = np.full(chunks, np.iinfo(np.int64).max, dtype=np.int64)
    highs = np.full(chunks, np.iinfo(np.int64).min, dtype=np.int64)
    for t in prange(chunks):
        lo, hi = lows[t], highs[t]
        for i in range(n * t // chunks, n * (t + 1) // chunks):
            for f in range(ids.shape[1]):
                v = np.int64(ids[i, f])
                lo = min(lo, v)
                hi = max(hi, v)
        lows[t], highs[t] = lo, hi
    return lows.min(), highs.max()


def count_matrix(ids: np.ndarray, part: np.ndarray, num_ids: int, parts: int) -> np.ndarray:
    """c[e, p] (int32, (E, P)). Each thread owns a slice of ids and scans every
    edge, so no two threads write one counter (and no atomics are needed)."""
    return _count_matrix(ids, part, num_ids, parts, numba.get_num_threads())


@njit(parallel=True, cache=True)
def _count_matrix(ids, part, num_ids, parts, threads):  # pragma: no cover - compiled
    counts = np.zeros((num_ids, parts), dtype=np.int32)
    for t in prange(threads):
        lo = num_ids * t // threads
        hi = num_ids * (t + 1) // threads
        for i in range(ids.shape[0]):
            p = part[i]
            for f in range(ids.shape[1]):
                e = ids[i, f]
                if lo <= e < hi:
                    counts[e, p] += 1
    return counts


def fingerprint_ids(ids: np.ndarray, num_ids: int) -> dict:
    """A cheap identity for the train ids: shape, vocabulary and a hash of 4096 spread rows."""
    rows = np.unique(np.linspace(0, len(ids) - 1, min(len(ids), 4096)).astype(np.int64))
    digest = hashlib.sha256(np.ascontiguousarray(ids[rows]).astype(np.int64).tobytes()).hexdigest()[:16]
    return {"num_ids": int(num_ids), "train_rows": int(ids.shape[0]), "fields": int(ids.shape[1]), "sample_sha256": digest}


def _locate(ids: np.ndarray, bad: np.ndarray) -> tuple[int, int]:
    """(row, column) of the first True of a boolean mask over ids, scanning in blocks."""
    step = 1 << 20
    for start in range(0, len(ids), step):
        block = bad(np.asarray(ids[start : start + step]))
        if block.any():
            r, c = np.argwhere(block)[0]
            return start + int(r), int(c)
    return -1, -1


def _check_ids(ids: np.ndarray, path: Path, num_ids: int | None) -> int:
    """Validate dtype, shape and range; return num_ids (max id + 1 when not given)."""
    if not np.issubdtype(ids.dtype, np.integer):
        raise HetGMPError(f"{path}: ids must be integers, found dtype {ids.dtype}: re-run `hetgmp prepare` (ids are label-encoded integers)")
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise HetGMPError(f"{path}: expected a non-empty (samples, fields) array, found shape {ids.shape}: re-run `hetgmp prepare`")
    lo, hi = id_range(np.asarray(ids))
    if lo < 0:
        r, c = _locate(ids, lambda b: b < 0)
        raise HetGMPError(f"{path}: ids must be >= 0, found {ids[r, c]} at row {r}, column {c}: re-run `hetgmp prepare` (missing values get their own id)")
    if num_ids is not None and hi >= num_ids:
        r, c = _locate(ids, lambda b: b >= num_ids)
        raise HetGMPError(
            f"{path}: id {ids[r, c]} at row {r}, column {c} is outside the vocabulary of {num_ids} ids (meta.json num_ids): "
            "the arrays and meta.json disagree; re-run `hetgmp prepare` or `hetgmp synth`"
        )
    return int(hi) + 1 if num_ids is None else num_ids


def load_bigraph(directory: str | Path) -> Bigraph:
    """Open DIR/train_sparse_feats.npy (memory-mapped) and check every id.

    With DIR/meta.json, num_ids comes from it and ids must lie in [0, num_ids);
    without it, num_ids = max id + 1.
    """
    directory = Path(directory)
    path = directory / array_name("train", "sparse")
    if not directory.is_dir():
        raise HetGMPError(f"{directory} is not a directory: pass a dataset folder made by `hetgmp prepare` or `hetgmp synth`")
    ids = load_array(path)
    num_ids, source = None, "max id + 1"
    if (directory / META_FILE).is_file():
        meta = read_meta(directory)
        num_ids, source = meta.num_ids, META_FILE
        if ids.ndim == 2 and ids.shape[0] != meta.train_rows:
            raise HetGMPError(f"{path} has {ids.shape[0]} rows but meta.json says train_rows {meta.train_rows}: re-run `hetgmp prepare`")
    num_ids = _check_ids(ids, path, num_ids)
    return Bigraph(np.asarray(ids), num_ids, directory, source, fingerprint_ids(ids, num_ids))


def describe(graph: Bigraph) -> str:
    """One line for the printout: sizes and where the vocabulary size came from."""
    n, f = graph.ids.shape
    return f"{graph.path}: {n:,} samples x {f} fields, {graph.num_ids:,} ids (num_ids from {graph.num_ids_source})"


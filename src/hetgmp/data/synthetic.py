"""`hetgmp synth`: a Criteo-shaped dataset with planted communities and labels.

The world rows are drawn from (fields, popularity, group pools, the planted
logistic model) is described in `synth_world`. This module writes rows in
chunks, in two passes, into the dataset directory format of `arrays.py`:

1. Draw: chunk c (rows [c·chunk_rows, ...)) comes from
   `default_rng([seed, 0, c])`. Its raw global ids (field f's raw id r is
   raw_offsets[f] + r, caps summed as offsets) go straight into the sparse
   .npy files; a bitmap over the raw global space marks every id used, and
   the logits stay in memory (4 bytes a row).
2. Encode: the bias that makes the mean click probability `click_rate` is
   solved on all logits; then each chunk's raw ids are compacted in place and
   its labels drawn from `default_rng([seed, 2, c])`.

Compaction, as an encoder would do it: only used ids get an id, ascending raw
id within a field, fields one after the other. Since raw global ids already
run field by field, one cumulative sum over the bitmap gives the compacted
global id (field offsets included). Example with caps [3, 4], used raw ids
{1, 2} in field 0 and {0, 3} in field 1 (raw global 3 and 6): bitmap
[0,1,1, 1,0,0,1], cumsum-1 -> raw global 1->0, 2->1, 3->2, 6->3; fields [2, 2],
offsets [0, 2].

Multi-hot (`bag_sizes`): a row holds sum(bag_sizes) ids, field by field;
meta.json gains "bag_sizes" and "padding_ids" (local id 0 of each bag field,
null for the one-hot fields) and the planted logit mean-pools each bag.

Rows are i.i.d., so the test split is simply the last `test_fraction` of
them. The same arguments (chunk_rows included) give byte-identical arrays
for any thread count; across CPUs and library versions exp/pow may round
differently in the last bit, which can move an id across a rank boundary. With `save_groups`, each row's latent group
is also written (`train_groups.npy`, `test_groups.npy`, int32) for checking
partitioners against the truth; loaders ignore these files.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hetgmp.atomic import atomic_directory
from hetgmp.auc import exact_auc, logloss
from hetgmp.data.arrays import DatasetMeta, array_name, write_meta
from hetgmp.data.synth_world import NUM_DENSE, SynthConfig, World, build_world, padding_raw_ids, sample_chunk, validate


class _SplitFile:
    """One array kind ("sparse", "dense", "labels", "groups") as train + test .npy
    files, addressed by global row (train rows first). Each access maps only
    the rows it touches, so resident memory stays one chunk, not the file."""

    def __init__(self, directory: Path, kind: str, dtype: type, width: int | None, train_rows: int, rows: int):
        self.parts = []
        for split, first, count in (("train", 0, train_rows), ("test", train_rows, rows - train_rows)):
            path = directory / (f"{split}_groups.npy" if kind == "groups" else array_name(split, kind))
            shape = (count,) if width is None else (count, width)
            created = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            self.parts.append((path, first, count, created.offset))
            del created
        self.dtype, self.width = np.dtype(dtype), width

    def _regions(self, start: int, n: int):
        """Yield (memmap of the file rows, slice of the block) covering global rows [start, start+n)."""
        row_bytes = self.dtype.itemsize * (self.width or 1)
        for path, first, count, header in self.parts:
            lo, hi = max(start, first), min(start + n, first + count)
            if lo < hi:
                shape = (hi - lo,) if self.width is None else (hi - lo, self.width)
                view = np.memmap(path, self.dtype, "r+", offset=header + (lo - first) * row_bytes, shape=shape)
                yield view, slice(lo - start, hi - start)
                view.flush()
                del view

    def write(self, start: int, block: np.ndarray) -> None:
        for view, part in self._regions(start, len(block)):
            view[:] = block[part]

    def remap(self, start: int, n: int, lut: np.ndarray) -> None:
        """Replace every stored id v of rows [start, start+n) by lut[v], in place."""
        from hetgmp.data.synth_kernels import remap_inplace

        for view, _ in self._regions(start, n):
            remap_inplace(np.asarray(view), lut)


def _chunks(config: SynthConfig):
    for c, start in enumerate(range(0, config.rows, config.chunk_rows)):
        yield c, start, min(config.chunk_rows, config.rows - start)


def solve_bias(logits: np.ndarray, click_rate: float, tol: float = 1e-9) -> float:
    """b with mean(sigmoid(logits + b)) == click_rate: Newton steps kept inside a bisection bracket."""
    lo, hi, b = -60.0, 60.0, float(np.log(click_rate / (1 - click_rate)) - np.mean(logits, dtype=np.float64))
    for _ in range(100):
        gap, slope = 0.0, 0.0
        for s in range(0, len(logits), 1 << 22):
            p = 1.0 / (1.0 + np.exp(-(logits[s : s + (1 << 22)].astype(np.float64) + b)))
            gap += float(p.sum())
            slope += float((p * (1.0 - p)).sum())
        gap = gap / len(logits) - click_rate
        if abs(gap) < tol:
            break
        lo, hi = (b, hi) if gap < 0 else (lo, b)
        step = b - gap * len(logits) / slope if slope > 0 else (lo + hi) / 2
        b = step if lo < step < hi else (lo + hi) / 2
    return b


def _draw_pass(world: World, files: dict[str, _SplitFile], bar: tqdm) -> tuple[np.ndarray, np.ndarray]:
    """Pass 1: write raw ids, dense and groups; return (used-id bitmap, logits)."""
    cfg = world.config
    used = np.zeros(int((world.caps + world.padded).sum()), dtype=bool)
    used[padding_raw_ids(world)[world.padded == 1]] = True  # always an id, even if every bag were full
    logits = np.empty(cfg.rows, dtype=np.float32)
    for c, start, n in _chunks(cfg):
        raw, dense, z, group = sample_chunk(world, np.random.default_rng([cfg.seed, 0, c]), n)
        used[raw.ravel()] = True
        files["sparse"].write(start, raw)
        files["dense"].write(start, dense)
        if "groups" in files:
            files["groups"].write(start, group)
        logits[start : start + n] = z
        bar.update(n)
    return used, logits


def _encode_pass(cfg: SynthConfig, files: dict[str, _SplitFile], lut: np.ndarray, logits: np.ndarray, bias: float, bar: tqdm) -> np.ndarray:
    """Pass 2: compact ids in place and draw labels; return the labels as bool."""
    labels = np.empty(cfg.rows, dtype=bool)
    for c, start, n in _chunks(cfg):
        files["sparse"].remap(start, n, lut)
        prob = 1.0 / (1.0 + np.exp(-(logits[start : start + n].astype(np.float64) + bias)))
        y = np.random.default_rng([cfg.seed, 2, c]).random(n) < prob
        files["labels"].write(start, y.astype(np.float32))
        labels[start : start + n] = y
        bar.update(n)
    return labels


def _open_files(directory: Path, cfg: SynthConfig, train_rows: int, save_groups: bool) -> dict[str, _SplitFile]:
    kinds = {"sparse": (np.int32, int(cfg.bags().sum())), "dense": (np.float32, NUM_DENSE), "labels": (np.float32, None)}
    if save_groups:
        kinds["groups"] = (np.int32, None)
    return {k: _SplitFile(directory, k, dt, w, train_rows, cfg.rows) for k, (dt, w) in kinds.items()}


def _write_dataset(directory: Path, world: World, progress: bool, save_groups: bool) -> DatasetMeta:
    cfg = world.config
    t0 = time.perf_counter()
    test_rows = int(round(cfg.rows * cfg.test_fraction))
    train_rows = cfg.rows - test_rows
    files = _open_files(directory, cfg, train_rows, save_groups)
    bar_args = dict(total=cfg.rows, unit="rows", unit_scale=True, file=sys.stderr, disable=not progress)
    with tqdm(desc="synth 1/2 draw", **bar_args) as bar:
        used, logits = _draw_pass(world, files, bar)
    bias = solve_bias(logits, cfg.click_rate)
    fields = [int(n) for n in np.add.reduceat(used, world.raw_offsets.astype(np.intp))]
    lut = np.cumsum(used, dtype=np.int32)
    lut -= 1  # ids never used keep a stale value; no row refers to them
    del used
    with tqdm(desc="synth 2/2 encode", **bar_args) as bar:
        labels = _encode_pass(cfg, files, lut, logits, bias, bar)
    del lut
    test = slice(train_rows, None)
    extra = {
        "dataset": "synthetic",
        "planted_auc": exact_auc(labels[test], logits[test]),
        "planted_auc_train": exact_auc(labels[:train_rows], logits[:train_rows]),
        "planted_logloss": logloss(labels[test], 1.0 / (1.0 + np.exp(-(logits[test].astype(np.float64) + bias)))),
        "click_rate": float(labels.mean()),
        "planted_bias": bias,
        "vocab_caps": [int(v) for v in world.caps],
        "generator": cfg.to_json(),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if cfg.bag_sizes:
        # Raw id 0 of a bag field is its padding id, and stays local id 0 (see synth_world).
        extra.update(bag_sizes=cfg.bags().tolist(), padding_ids=[0 if p else None for p in world.padded], planted_pooling="mean")
    meta = DatasetMeta(fields=fields, num_ids=sum(fields), train_rows=train_rows, test_rows=test_rows, seed=cfg.seed, num_dense=NUM_DENSE, extra=extra)
    write_meta(directory, meta)
    return meta


def generate_synthetic(
    output: str | Path,
    rows: int,
    seed: int = 0,
    scale: float = 1.0,
    test_fraction: float = 0.1,
    force: bool = False,
    progress: bool = False,
    save_groups: bool = False,
    **knobs: float | int,
) -> DatasetMeta:
    """Write a synthetic dataset directory at `output` and return its metadata.

    `knobs` are the other `SynthConfig` fields (groups, in_group, zipf, ...).
    Example: generate_synthetic("data/synth", rows=100_000) writes 90,000
    train and 10,000 test rows; meta.extra["planted_auc"] is the true model's
    test AUC, the ceiling a trained model can approach.
    """
    config = SynthConfig(rows=int(rows), seed=int(seed), scale=float(scale), test_fraction=float(test_fraction), **knobs)
    validate(config)
    with atomic_directory(output, force) as tmp:
        return _write_dataset(tmp, build_world(config), progress, save_groups)

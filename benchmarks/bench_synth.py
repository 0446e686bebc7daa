"""Benchmark and sanity figures for `hetgmp synth`.

    python benchmarks/bench_synth.py --rows 2000000 [--locality] [--learn]

Prints generation time, rows/s, peak RSS, distinct ids per field, planted AUC
and click rate. `--locality` measures how much of each batch's distinct rows a
group-aware ("oracle") partition leaves remote, against random placement, with
and without 1% mirrors, by the SPEC's rules (owner = the part using an id
most; mirrors = each part's top store-rate of its candidate list by
S(c)^2·(1/deg + 1/c)). `--learn` trains a small factorisation machine with
an MLP (one epoch, CPU) and reports its test AUC next to the planted one.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hetgmp.auc import exact_auc
from hetgmp.data.arrays import load_dataset
from hetgmp.data.synthetic import generate_synthetic


def soft_count(c: np.ndarray, rows_per_part: float, batch: int) -> np.ndarray:
    """S(c) = (M/B)(1-(1-c/M)^B): expected batches of a part that read a row c of its samples use."""
    return (rows_per_part / batch) * (1.0 - (1.0 - np.minimum(c / rows_per_part, 1.0)) ** batch)


def oracle_parts(groups: np.ndarray, parts: int) -> np.ndarray:
    """Whole groups to parts, largest first onto the lightest part: a group-aware placement."""
    sizes = np.bincount(groups)
    load, owner = np.zeros(parts), np.zeros(len(sizes), dtype=np.int64)
    for g in np.argsort(-sizes, kind="stable"):
        owner[g] = int(np.argmin(load))
        load[owner[g]] += sizes[g]
    return owner[groups]


def remote_fraction(sparse: np.ndarray, part: np.ndarray, parts: int, batch: int, store_rate: float, rng: np.random.Generator, random_owner: bool = False) -> tuple[float, float]:
    """Mean fraction of a batch's distinct ids not owned by its part: (no mirrors, with mirrors).

    Owners are the parts using each id most, or random with `random_owner`."""
    num_ids = int(sparse.max()) + 1
    keys = (sparse.astype(np.int64) * parts + part[:, None]).ravel()
    pair, count = np.unique(keys, return_counts=True)
    ids, pair_part = pair // parts, pair % parts
    deg = np.bincount(ids, weights=count, minlength=num_ids)
    owner = np.zeros(num_ids, dtype=np.int64)
    order = np.lexsort((count, ids))  # per id, its largest count last: it wins the assignment
    owner[ids[order]] = pair_part[order]
    if random_owner:
        owner = rng.integers(0, parts, num_ids)
    m = len(part) / parts
    mirrored = np.zeros((parts, num_ids), dtype=bool)
    for p in range(parts):
        cand = (pair_part == p) & (owner[ids] != p)
        e, c = ids[cand], count[cand].astype(np.float64)
        prio = soft_count(c, m, batch) ** 2 * (1.0 / deg[e] + 1.0 / c)
        keep = int(np.floor(store_rate * len(e)))
        mirrored[p, e[np.argsort(-prio, kind="stable")[:keep]]] = True
    plain, mirror = [], []
    for p in range(parts):
        rows = np.flatnonzero(part == p)
        for _ in range(4):
            seen = np.unique(sparse[rng.choice(rows, min(batch, len(rows)), replace=False)])
            remote = owner[seen] != p
            plain.append(remote.mean())
            mirror.append((remote & ~mirrored[p, seen]).mean())
    return float(np.mean(plain)), float(np.mean(mirror))


def locality(directory: Path, parts: int = 8, batch: int = 8192, store_rate: float = 0.01) -> dict:
    ds = load_dataset(directory)
    sparse = np.asarray(ds.train.sparse)
    groups = np.load(directory / "train_groups.npy")
    rng = np.random.default_rng(0)
    random_part = rng.integers(0, parts, len(groups))
    out = {}
    out["random"] = remote_fraction(sparse, random_part, parts, batch, store_rate, rng, random_owner=True)
    out["oracle"] = remote_fraction(sparse, oracle_parts(groups, parts), parts, batch, store_rate, rng)
    return out


def learn(directory: Path, dim: int = 8, batch: int = 4096, lr: float = 0.05) -> float:
    """One epoch of FM + MLP with Adam/Adagrad on the train split; test AUC."""
    import torch

    torch.manual_seed(0)
    ds = load_dataset(directory)
    num_ids, fields = ds.meta.num_ids, ds.meta.num_fields
    emb = torch.nn.Embedding(num_ids, dim + 1, sparse=True)
    torch.nn.init.normal_(emb.weight, std=0.01)
    mlp = torch.nn.Sequential(torch.nn.Linear(fields * dim + 13, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt_sparse = torch.optim.SparseAdam(emb.parameters(), lr=lr / 5)
    opt_dense = torch.optim.Adam(mlp.parameters(), lr=1e-3)

    def forward(sparse, dense):
        e = emb(sparse)
        first, v = e[..., 0].sum(1), e[..., 1:]
        fm = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1)
        return first + fm + mlp(torch.cat([v.flatten(1), dense], 1)).squeeze(1)

    tr = ds.train
    for s in range(0, len(tr), batch):
        sp = torch.from_numpy(np.asarray(tr.sparse[s : s + batch], dtype=np.int64))
        de = torch.from_numpy(np.asarray(tr.dense[s : s + batch]))
        y = torch.from_numpy(np.asarray(tr.labels[s : s + batch]))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(forward(sp, de), y)
        opt_sparse.zero_grad(), opt_dense.zero_grad()
        loss.backward()
        opt_sparse.step(), opt_dense.step()
    with torch.no_grad():
        te = ds.test
        z = forward(torch.from_numpy(np.asarray(te.sparse, dtype=np.int64)), torch.from_numpy(np.asarray(te.dense)))
    return exact_auc(np.asarray(te.labels), z.numpy())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000, help="rows to generate")
    ap.add_argument("--scale", type=float, default=1.0, help="vocabulary scale")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", type=Path, default=None, help="where to write (default: a temporary directory, removed)")
    ap.add_argument("--locality", action="store_true", help="measure remote rows per batch, oracle vs random partition")
    ap.add_argument("--learn", action="store_true", help="train FM+MLP one epoch and report its test AUC")
    ap.add_argument("--knob", action="append", default=[], metavar="NAME=VALUE", help="extra SynthConfig field, e.g. in_group=0.7")
    args = ap.parse_args()
    knobs = {k: float(v) if "." in v else int(v) for k, v in (kv.split("=", 1) for kv in args.knob)}
    with tempfile.TemporaryDirectory(dir=args.output.parent if args.output else None) as tmp:
        out = args.output or Path(tmp) / "synth"
        t0 = time.perf_counter()
        meta = generate_synthetic(out, args.rows, seed=args.seed, scale=args.scale, force=True, progress=True, save_groups=args.locality, **knobs)
        seconds = time.perf_counter() - t0
        rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        report = {
            "rows": args.rows, "seconds": round(seconds, 1), "rows_per_s": round(args.rows / seconds),
            "peak_rss_gb": round(rss_gb, 2), "fields": meta.fields, "num_ids": meta.num_ids,
            **{k: meta.extra[k] for k in ("planted_auc", "planted_auc_train", "planted_logloss", "click_rate")},
        }
        print(json.dumps(report), flush=True)
        if args.locality:
            print(json.dumps({"remote_rows_per_batch (plain, 1% mirrors)": locality(out)}), flush=True)
        if args.learn:
            print(json.dumps({"fm_mlp_test_auc_1_epoch": learn(out)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How stale a row read one step early would be: why the sharded step reads at the step boundary.

    hetgmp synth --rows 2000000 --output /tmp/s2m
    hetgmp partition /tmp/s2m --parts 2 --output /tmp/p2.npz --batch-size 8192
    python benchmarks/staleness_floor.py --data /tmp/s2m --partition /tmp/p2.npz --bound 100

Versions count updates, i.e. sample occurrences (SPEC section 3), and a copy
may be read while it lags its primary by at most --bound of them. Taking the
exchange off the step boundary means serving step t + 1's reads while step t
trains, before step t's updates reach the owners. Such a read misses at least:

    a row owned elsewhere   the owner's own occurrences of it in step t, plus those of
                            every other worker that fetches it (fetched rows push every
                            step); mirrors' pending updates are not counted (they reach
                            the primary later in any case)
    a row it owns           the occurrences pushed by the other workers that fetch it

(the reader's own occurrences are left out: it could patch its copy itself).
For every step and worker this counts the distinct rows of batch t + 1 whose
lag so counted exceeds --bound. Where that is above zero in (nearly) every
step, each step must refresh rows after the previous step's updates: a
request and an answer between the workers at every step boundary, whatever
overlaps around them. The batches are bench_sharded_fast.py's (the plan's
samples of each part, a fixed-seed sample; its --batch and --batches).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sharded_fast import plan_workload  # noqa: E402

from hetgmp.partition.plan import PartitionPlan  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="dataset (`hetgmp synth` / `hetgmp prepare`)")
    p.add_argument("--partition", type=Path, required=True, help="its plan (`hetgmp partition DATA --parts P`)")
    p.add_argument("--batch", type=int, default=8192, help="samples per worker and step")
    p.add_argument("--batches", type=int, default=32, help="steps per worker")
    p.add_argument("--store-rate", type=float, default=0.01)
    p.add_argument("--bound", type=int, default=100)
    return p.parse_args()


def worker_batches(args: argparse.Namespace, world: int) -> tuple[list[list[np.ndarray]], np.ndarray, list[np.ndarray]]:
    """(ids of each worker's batches, owner of every id, each worker's mirrors): as the benchmark trains."""
    batches, placement = [], None
    for rank in range(world):
        work = plan_workload(args, rank, world, device="cpu")
        batches.append([ids_BF.numpy().ravel() for _, ids_BF, _ in work.batches])
        placement = work.plan
    return batches, np.asarray(placement.owner, dtype=np.int64), placement.mirrors


def lags_beyond(batches: list[list[np.ndarray]], owner: np.ndarray, mirrors: list[np.ndarray], bound: int) -> dict[str, np.ndarray]:
    """Per (step t + 1, worker): distinct rows read (remote, owned) and those whose lag exceeds the bound."""
    world, steps, num_ids = len(batches), min(len(b) for b in batches), len(owner)
    mirrored = np.zeros((world, num_ids), dtype=bool)
    for rank, ids in enumerate(mirrors):
        mirrored[rank, ids] = True
    out = {k: np.zeros((steps - 1, world), dtype=np.int64) for k in ("remote", "remote_beyond", "owned", "owned_beyond", "max_lag")}
    for t in range(steps - 1):
        # Occurrences of step t that reach a row's primary within the step: the owner's own and fetchers' pushes.
        reach = np.stack([np.bincount(batches[v][t], minlength=num_ids) * ((owner == v) | ~mirrored[v]) for v in range(world)])
        total = reach.sum(0)
        for w in range(world):
            reads = np.unique(batches[w][t + 1])
            lag = total[reads] - reach[w, reads]
            own = owner[reads] == w
            out["remote"][t, w], out["owned"][t, w] = (~own).sum(), own.sum()
            out["remote_beyond"][t, w] = (~own & (lag > bound)).sum()
            out["owned_beyond"][t, w] = (own & (lag > bound)).sum()
            out["max_lag"][t, w] = lag.max(initial=0)
    return out


def report(args: argparse.Namespace, out: dict[str, np.ndarray]) -> None:
    steps, world = out["remote"].shape
    print(f"\n{args.data.name}, plan {args.partition.name}: {world} workers, batch {args.batch}/worker, "
          f"{args.store_rate:g} mirrors, bound {args.bound}; steps t + 1 = 1..{steps}\n")
    print("| rows of batch t + 1 | distinct per step | beyond the bound per step: mean | min | max | steps with any |")
    print("|---|---|---|---|---|---|")
    for kind in ("remote", "owned"):
        beyond = out[f"{kind}_beyond"]
        print(f"| {kind} | {out[kind].mean():,.0f} | {beyond.mean():,.1f} | {beyond.min()} | {beyond.max()} | "
              f"{(beyond > 0).mean():.0%} |")
    print(f"\nlargest lag of a row read one step early: {out['max_lag'].max():,} updates")


def main() -> None:
    args = parse()
    world = PartitionPlan.load(args.partition).parts
    batches, owner, mirrors = worker_batches(args, world)
    report(args, lags_beyond(batches, owner, mirrors, args.bound))


if __name__ == "__main__":
    main()

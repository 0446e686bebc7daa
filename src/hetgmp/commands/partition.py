"""`hetgmp partition DIR --parts P --output plan.npz`: HET-GMP's graph partitioner.

Writes plan.npz (the original's keys plus metadata, see partition/plan.py)
and plan.json beside it (the printed summary as JSON).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from hetgmp.cliflags import FRACTION, NON_NEGATIVE, POSITIVE, SEED, add_flag, new_parser
from hetgmp.errors import HetGMPError


def register(sub: argparse._SubParsersAction) -> None:
    p = new_parser(
        sub,
        "partition",
        help="partition the sample/row bigraph over P workers and rank each worker's mirror candidates",
        description=(
            "Partition a dataset's train samples and embedding rows over P parts (HET-GMP's algorithm, SPEC §2): "
            "a random start, then --rounds rounds of sample and row refinement, then each part's ranked mirror list."
        ),
    )
    p.add_argument("data", metavar="DIR", help="dataset folder (from `hetgmp prepare`/`synth`), or any folder holding train_sparse_feats.npy")
    add_flag(p, "--parts", "-n", "--nrank", type=int, range=POSITIVE, required=True, help="number of parts (workers / GPUs)")
    add_flag(p, "--output", "-o", required=True, help="plan file to write (.npz); its summary goes to the same name with .json")
    add_flag(p, "--rounds", "-r", "--rerun", type=int, range=NON_NEGATIVE, default=5, help="refinement rounds (the paper's T)")
    add_flag(p, "--batch-size", "-b", type=int, range=POSITIVE, default=8192, help="per-worker batch size the cost model assumes")
    add_flag(p, "--gpus-per-node", "-g", "--ngpus", type=int, range=POSITIVE, default=8, help="GPUs per node: link weight 0.1 within a node, 1 across")
    add_flag(p, "--store-rate", type=float, range=FRACTION, default=0.01, help="fraction of each part's candidate list it mirrors (for the summary)")
    add_flag(p, "--device", choices=("cpu", "cuda"), default="cpu", help="cpu: numba on all cores; cuda: the same algorithm in PyTorch on a GPU")
    add_flag(p, "--algorithm", choices=("fast", "original"), default="fast", help="fast: batched parallel refinement; original: HET-GMP's sequential greedy moves")
    add_flag(p, "--ranking", choices=("staleness", "original"), default="staleness",
             help="mirror ranking: staleness (the fetches a mirror saves per step under --bound; fewer rows fetched in "
                  "training, BENCHMARKS.md) or original (HET-GMP's priority)")
    add_flag(p, "--bound", type=int, range=NON_NEGATIVE, default=100, help="the staleness bound the staleness ranking assumes: the --bound you train with")
    add_flag(p, "--compact-lists", action="store_true",
             help="store only the ids each part reads (hetgmp train rebuilds the rest; the original's script would mirror fewer rows)")
    add_flag(p, "--seed", type=int, range=SEED, default=0, help="seed of the random start")
    add_flag(p, "--plot", metavar="FILE.png", default=None, help="also draw the traffic matrix before and after as heatmaps")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # The refinement enters a parallel region a few thousand times per pass.
    # OpenMP's default spin-waiting then burns the cores other processes need
    # and, on a busy machine, more than doubled the wall time (measured 140 s
    # vs 60 s on a 2M-sample graph); sleeping waits cost under a second when
    # idle. Must be set before numba first loads libgomp; the user's choice wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from hetgmp.atomic import atomic_file
    from hetgmp.compiling import announce_compiles
    from hetgmp.partition.report import plot_traffic
    from hetgmp.partition.run import PartitionConfig, partition_dataset

    announce_compiles(args.prog)
    config = PartitionConfig(
        parts=args.parts,
        rounds=args.rounds,
        batch_size=args.batch_size,
        gpus_per_node=args.gpus_per_node,
        store_rate=args.store_rate,
        seed=args.seed,
        device=args.device,
        algorithm=args.algorithm,
        ranking=args.ranking,
        bound=args.bound,
        compact_lists=args.compact_lists,
    )
    output = Path(args.output)
    if output.is_dir():
        raise HetGMPError(f"--output {output} is a folder: give the plan file to write, e.g. --output {output / 'plan.npz'}")
    output.parent.mkdir(parents=True, exist_ok=True)
    result = partition_dataset(args.data, config, out=lambda line: print(line, flush=True))
    result.plan.save(output)
    with atomic_file(output.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(result.summary, indent=2) + "\n")
    if args.plot:
        with atomic_file(args.plot) as tmp:
            plot_traffic(result.traffic_random, result.traffic_partitioned, tmp)
    print(f"wrote {output} and {output.with_suffix('.json')}" + (f" and {args.plot}" if args.plot else ""))
    return 0

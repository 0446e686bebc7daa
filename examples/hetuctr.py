"""HET-GMP's training script, with its flags and defaults, on hetgmp's trainer.

The original guide's commands run unchanged apart from the dataset path:

    python3 examples/hetuctr.py --dataset criteo --model wdl \\
        --batch_size 8192 --iter 1000000 --embed_dim 16 --val --eval_every 10000

    mpirun --allow-run-as-root -np 8 python3 examples/hetuctr.py \\
        --dataset criteo --model wdl --batch_size 8192 --iter 1000000 --embed_dim 128 \\
        --partition ~/hetuctr_dataset/partition/criteo_partition_8.npz \\
        --store_rate 0.01 --bound 100 --val --eval_every 10000

`--dataset NAME` is the prepared directory ~/hetuctr_dataset/NAME, or
$HETGMP_DATA_ROOT/NAME when that variable is set. As in the original, both
the dense layers and the embedding table train with plain SGD at the model's
original learning rate (wdl 0.01, dcn 0.003, dfm 0.001). Under mpirun or
torchrun each process joins the job; `hetgmp train` offers the same trainer
with better-training defaults and more flags.

Those settings learn slowly: with weights drawn from N(0, 0.01) and SGD at
0.01, WDL on small data is still near AUC 0.54 after 100 steps; they need the
original's ~1M iterations. A run of fewer says so once (on rank 0).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from hetgmp.errors import HetGMPError

DATASETS = ("criteo", "avazu", "company")
ORIGINAL_ITERATIONS = 1_000_000


def dataset_dir(name: str) -> Path:
    """~/hetuctr_dataset/NAME, or $HETGMP_DATA_ROOT/NAME."""
    root = os.environ.get("HETGMP_DATA_ROOT") or Path.home() / "hetuctr_dataset"
    return Path(root).expanduser() / name


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="criteo", help="dataset under ~/hetuctr_dataset (or $HETGMP_DATA_ROOT)")
    p.add_argument("--model", choices=("wdl", "dcn", "dfm"), default="wdl", help="wdl (Wide&Deep), dcn (Deep&Cross), dfm (DeepFM)")
    p.add_argument("--batch_size", type=int, default=8192, help="batch size on each worker")
    p.add_argument("--iter", type=int, default=1000000, help="how many iterations to run")
    p.add_argument("--embed_dim", type=int, default=16, help="the dimension of each embedding row")
    p.add_argument("--partition", default=None, help="partition file; without one, random placement is used")
    p.add_argument("--store_rate", type=float, default=0.01, help="fraction of top-priority remote rows kept as mirrors")
    p.add_argument("--bound", type=int, default=0, help="staleness bound: 0 for BSP, 10 or 100 for speed")
    p.add_argument("--val", action="store_true", help="perform evaluation")
    p.add_argument("--eval_every", type=int, default=10000, help="iterations between evaluations")
    p.add_argument("--log_every", type=int, default=100, help="iterations between TRAIN lines")
    p.add_argument("--output", default=None, help="log file")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto", help="where to train")
    return p


def main(argv: list[str] | None = None) -> int:
    from hetgmp.models import ORIGINAL_LR
    from hetgmp.train.config import TrainConfig

    args = build_parser().parse_args(argv)
    data = dataset_dir(args.dataset)
    if not data.is_dir():
        raise HetGMPError(f"dataset {args.dataset!r} not found at {data}: prepare it there (`hetgmp prepare`) or set HETGMP_DATA_ROOT")
    lr = ORIGINAL_LR[args.model]
    cfg = TrainConfig(
        data=str(data), model=args.model, embed_dim=args.embed_dim, batch_size=args.batch_size, iter=args.iter,
        partition=os.path.expanduser(args.partition) if args.partition else None, store_rate=args.store_rate,
        bound=args.bound, val=args.val, eval_every=args.eval_every, log_every=args.log_every, output=args.output,
        device=args.device, optimizer="sgd", lr=lr, sparse_optimizer="sgd", sparse_lr=lr,
    )
    from hetgmp.distributed import detect_launch
    from hetgmp.train.loop import train

    if args.iter < ORIGINAL_ITERATIONS and detect_launch().rank == 0:
        print(slow_settings_note(args.iter, data), file=sys.stderr, flush=True)
    train(cfg)
    return 0


def slow_settings_note(iterations: int, data: Path) -> str:
    return (
        f"hetuctr.py: note: the original's settings (SGD at its learning rate, weights from N(0, 0.01)) need about its "
        f"{ORIGINAL_ITERATIONS:,} iterations to learn; in {iterations:,} expect little (AUC near 0.5). "
        f"`hetgmp train --data {data}` trains well in one epoch with its defaults (Adam 1e-3 on the dense layers, "
        "row-wise Adagrad 0.1 on the table)"
    )


if __name__ == "__main__":
    try:
        sys.exit(main())
    except HetGMPError as e:
        print(f"hetuctr.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("hetuctr.py: interrupted", file=sys.stderr)
        sys.exit(130)

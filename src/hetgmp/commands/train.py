"""`hetgmp train`: train a CTR model on a prepared dataset, alone or as one of many workers.

Under torchrun or mpirun each process joins the job; `--nproc N` without a
launcher starts N local workers (see `hetgmp.train.launch`).
"""

from __future__ import annotations

import argparse

from hetgmp.cliflags import new_parser
from hetgmp.train.config import add_config_flags, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = new_parser(
        sub, "train", help="train WDL/DCN/DeepFM with partitioned embeddings",
        description="Train a CTR model. Runs under torchrun/mpirun, or starts --nproc N local workers itself.",
    )
    add_config_flags(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hetgmp.errors import Interrupted
    from hetgmp.train.checkpoint import resume_hint

    cfg = config_from_args(args)
    try:
        return run_config(cfg)
    except KeyboardInterrupt:
        raise Interrupted(resume_hint(cfg.checkpoint_dir)) from None


def run_config(cfg) -> int:
    """Launch local workers for `--nproc N > 1`, else train in this process (joining any launcher's job)."""
    import dataclasses
    import sys

    from hetgmp.distributed import detect_launch
    from hetgmp.train.config import config_to_argv

    if cfg.nproc > 1 and detect_launch().launcher == "none":
        from hetgmp.train.launch import launch_local

        # The workers' stderr is a pipe to this process: whether to draw a bar is decided by ours.
        shown = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
        argv = ["train", *config_to_argv(dataclasses.replace(cfg, progress=shown))]
        return launch_local(cfg.nproc, argv, cfg.checkpoint_dir)
    from hetgmp.train.loop import train

    train(cfg)
    return 0

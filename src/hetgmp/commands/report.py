"""`hetgmp report RUN_DIR`: plots and a summary of a run's metrics file."""

from __future__ import annotations

import argparse

from hetgmp.cliflags import add_flag, new_parser


def register(sub: argparse._SubParsersAction) -> None:
    parser = new_parser(
        sub,
        "report",
        help="plot a run's loss, AUC and samples/s from its metrics file",
        description=(
            "Read the metrics file given (any name), or RUN_DIR/metrics.jsonl (else the one .jsonl file in RUN_DIR), write a PNG with train loss and "
            "validation AUC against steps and samples and samples/s against steps, and print a summary."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the metrics file (any name), or a directory holding metrics.jsonl or a single other .jsonl file")
    add_flag(parser, "--output", "-o", default=None, help="PNG to write (default: report.png beside the metrics file)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hetgmp.plots import default_output, plot_report, read_metrics, summary

    metrics = read_metrics(args.run_dir)
    output = plot_report(metrics, args.output or default_output(metrics.path))
    print(summary(metrics))
    print(f"wrote {output}")
    return 0

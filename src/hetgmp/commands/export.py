"""`hetgmp export --checkpoint DIR --output model.pt2`: a trained model as a torch.export program.

    program = torch.export.load("model.pt2").module()
    probabilities_B = program(dense_BI, ids_BL)      # runs on plain torch; see hetgmp.serve.export
"""

from __future__ import annotations

import argparse

from hetgmp.cliflags import add_flag, new_parser
from hetgmp.commands.predict import add_checkpoint_flag


def register(sub: argparse._SubParsersAction) -> None:
    p = new_parser(
        sub, "export", help="write a trained model as a torch.export program for serving",
        description="Export the latest checkpoint of a training run (one worker or many, any plan) as one single-device "
        "torch.export program holding the whole table: torch.export.load(path).module()(dense, ids) takes dense float32 "
        "(B, I) and global ids int64 (B, F), any batch size B, and returns probabilities (B,); it needs only torch. "
        "A model trained on multi-hot bags takes (B, sum of the bag sizes) ids, each field's bag in turn as in the dataset "
        "arrays, and pools them as training did. Field f's out-of-vocabulary id is num_ids + f.",
    )
    add_checkpoint_flag(p)
    add_flag(p, "--output", "-o", required=True, help="program file to write (.pt2)")
    add_flag(p, "--table-dtype", choices=("float32", "bfloat16"), default="float32",
             help="dtype the table is stored in; bfloat16 halves its size (rows are widened to float32 for the model)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import time

    from hetgmp.serve import load_trained
    from hetgmp.serve.export import TABLE_DTYPES, export_program, save_program
    from hetgmp.serve.predict import check_output_folder

    output = check_output_folder(args.output)
    began = time.perf_counter()
    trained = load_trained(args.checkpoint)
    program = export_program(trained, TABLE_DTYPES[args.table_dtype])
    save_program(program, output)
    rows, width = trained.table_ED.shape
    print(f"exported {trained.describe()} to {output}: table {rows} x {width} {args.table_dtype} "
          f"({trained.num_ids} ids + {rows - trained.num_ids} out-of-vocabulary rows), {output.stat().st_size / 2**20:.1f} MiB, "
          f"{time.perf_counter() - began:.1f} s; load it with torch.export.load('{output}').module()")
    return 0

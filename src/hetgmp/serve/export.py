"""A trained model as a `torch.export` program for serving: `hetgmp export`.

The program is the single-device Scorer (serve/trained.py) with the whole
table, the out-of-vocabulary rows included, as a constant:

    program = torch.export.load("model.pt2").module()     # plain torch, no hetgmp needed
    probabilities_B = program(dense_BI, ids_BL)           # float32 (B, I), int64 (B, L) global ids

B is dynamic (any batch size from 1 on); I is the training set's, and L its
id columns: F, one id per field, or for multi-hot bags sum(bag_sizes), each
field's bag in turn, as in the dataset arrays; the program pools the bags as
training did (padding ids left out, the checkpoint's sum or mean). Ids
are global ids as in the dataset arrays (field offsets added), and
num_ids + f is field f's out-of-vocabulary id. With `table_dtype=bfloat16`
the table is stored in bf16 (half the bytes) and its rows are widened to
float32 before the model, which stays float32.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hetgmp.atomic import atomic_file
from hetgmp.serve.trained import TrainedModel

TABLE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# The batch sizes the program accepts (torch.export needs a range; 1 << 30 rows is far beyond any batch).
MAX_BATCH = 1 << 30


def export_program(trained: TrainedModel, table_dtype: torch.dtype = torch.float32) -> torch.export.ExportedProgram:
    """The scorer traced with a dynamic batch dimension, on the CPU."""
    scorer = trained.scorer("cpu", table_dtype)
    example = (torch.zeros(2, int(trained.meta["num_dense"])), torch.zeros(2, trained.id_columns, dtype=torch.int64))
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return torch.export.export(scorer, example, dynamic_shapes=({0: batch}, {0: batch}))


def save_program(program: torch.export.ExportedProgram, output: str | Path) -> None:
    """Write atomically: a failed or killed save leaves no output."""
    with atomic_file(output) as tmp:
        torch.export.save(program, tmp)

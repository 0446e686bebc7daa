"""Criteo Kaggle (Display Advertising Challenge) raw text -> dataset directory.

The input is `train.txt` (tab-separated, no header, 45,840,617 rows of
label, I1..I13, C1..C26), bare, gzipped, or inside `dac.tar.gz` (streamed
out of the archive). Example row, tabs shown as |:

    0|1|1|5|0|1382|4|15|2|181|1|2||2|68fd1e64|80e26c9b|...|

gives label 0, dense log(x + 1) of [1, 1, 5, 0, 1382, 4, 15, 2, 181, 1, 2, 0, 2]
(I12 empty -> 0) and, for C1, the rank of "68fd1e64" among C1's distinct
values in sorted string order ("-1", for missing, first). Full Criteo gives
33,762,577 ids; see encode.py for the passes and vocab.py for `vocab.npz`.
"""

from __future__ import annotations

from hetgmp.data.arrays import DatasetMeta
from hetgmp.data.encode import PrepareConfig, prepare_table
from hetgmp.data.reader import TableLayout

DENSE = tuple(f"I{i}" for i in range(1, 14))
CATEGORICAL = tuple(f"C{i}" for i in range(1, 27))
CRITEO = TableLayout(
    dataset="criteo",
    delimiter="\t",
    label="label",
    dense=DENSE,
    categorical=CATEGORICAL,
    column_names=("label", *DENSE, *CATEGORICAL),
    member="train.txt",
)


def prepare_criteo(config: PrepareConfig) -> DatasetMeta:
    """Prepare Criteo from `config.input` (dac.tar.gz, train.txt or train.txt.gz)."""
    return prepare_table(CRITEO, config)

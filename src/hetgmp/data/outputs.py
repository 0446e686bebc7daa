"""Write the six dataset arrays sequentially, rows in their final order.

The shapes are known before the first row is written, so each .npy header is
written up front and rows are appended with plain file writes: no memory map
of the outputs, whose pages would otherwise count towards the process's
resident memory. Rows 0..train_rows-1 go to the train_* files, the rest to
test_* (the last val_fraction of the shuffled order is the test split).
Example: 10 rows with train_rows 9: a chunk of rows 6..9 puts 6..8 in train
and row 9 in test.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np

from hetgmp.data.arrays import array_name


def _open_npy(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> BinaryIO:
    f = open(path, "wb")
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_2_0(f, header)
    return f


class SplitWriter:
    """Appends (dense, sparse, labels) chunks across the train/test boundary."""

    def __init__(self, directory: Path, train_rows: int, test_rows: int, num_dense: int, num_fields: int, id_dtype: np.dtype) -> None:
        self.train_rows = train_rows
        self.written = 0
        self.dtypes = {"dense": np.dtype(np.float32), "sparse": np.dtype(id_dtype), "labels": np.dtype(np.float32)}
        self.files: dict[tuple[str, str], BinaryIO] = {}
        for split, rows in (("train", train_rows), ("test", test_rows)):
            shapes = {"dense": (rows, num_dense), "sparse": (rows, num_fields), "labels": (rows,)}
            for kind, shape in shapes.items():
                self.files[split, kind] = _open_npy(Path(directory) / array_name(split, kind), self.dtypes[kind], shape)

    def write(self, dense: np.ndarray, sparse: np.ndarray, labels: np.ndarray) -> None:
        arrays = {"dense": dense, "sparse": sparse, "labels": labels}
        cut = min(max(self.train_rows - self.written, 0), len(labels))
        for kind, array in arrays.items():
            array = np.ascontiguousarray(array, dtype=self.dtypes[kind])
            self.files["train", kind].write(array[:cut].tobytes())
            self.files["test", kind].write(array[cut:].tobytes())
        self.written += len(labels)

    def close(self) -> None:
        for f in self.files.values():
            f.close()

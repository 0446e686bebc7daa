"""A float32 .npy written chunk by chunk when the row count is known only at the end.

numpy pads every .npy header with room for the shape to grow
(`np.lib.format.GROWTH_AXIS_MAX_DIGITS`), so the header is written for 0 rows,
the values are appended as they come, and the header is rewritten in place with
the final count. The file is built under a temporary name (hetgmp.atomic) and
renamed only when complete: an error or a kill leaves no output.

    with growing_npy("preds.npy") as out:
        out.append(probabilities_B)        # float32, any number of times
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from hetgmp.atomic import atomic_file


class GrowingNpy:
    def __init__(self, f: BinaryIO) -> None:
        self.f, self.rows = f, 0
        self.header_bytes = self._write_header()

    def _write_header(self) -> int:
        self.f.seek(0)
        np.lib.format.write_array_header_1_0(self.f, {"descr": "<f4", "fortran_order": False, "shape": (self.rows,)})
        return self.f.tell()

    def append(self, values: np.ndarray) -> None:
        self.f.write(np.ascontiguousarray(values, dtype="<f4").tobytes())
        self.rows += len(values)

    def finish(self) -> None:
        end = self.f.tell()
        if self._write_header() != self.header_bytes:  # cannot happen below 10**21 rows
            raise RuntimeError("the .npy header outgrew its padding")
        self.f.seek(end)


@contextlib.contextmanager
def growing_npy(path: str | Path) -> Iterator[GrowingNpy]:
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        out = GrowingNpy(f)
        yield out
        out.finish()

"""Stream a delimited text file as Arrow record batches of strings.

Every column is read as bytes: the typed checks (integers, labels) and the
UTF-8 check (`decode_text`) are ours, so that a bad value can be reported
with its line, column name and value and, with --skip-bad-rows, dropped
without stopping the stream (Arrow's own UTF-8 check names only a 0-based
column number and stops the parse). Rows with the
wrong number of columns are caught by Arrow's invalid-row handler, which
gives their physical line number; they are recorded here and skipped, and
the caller decides whether they are an error.

Parsing runs on a background thread (Arrow releases the GIL while it
parses), so it overlaps the per-batch work of the caller. Batches come out
in file order.

Line numbers: the k-th row Arrow emits (0-based) is on physical line
k + 1 + header, plus one for every skipped row on an earlier line.
Example: no header, a bad row on line 2; the rows emitted are lines 1, 3, 4,
so emitted row 1 is on line 3. Empty lines are kept as rows (of empty
values) so that they count, and are then rejected by the typed checks.
"""

from __future__ import annotations

import array
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from hetgmp.data.textsource import TextSource
from hetgmp.errors import HetGMPError

_DONE = object()
KEEP_TEXTS = 5  # invalid rows whose text is kept for messages


def decode_text(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, np.ndarray | None]:
    """`batch`'s byte columns as UTF-8 strings, and the mask of rows whose every value is valid
    UTF-8 (None when all are); an invalid value becomes "" (its row is to be dropped or reported)."""
    columns, valid = [], None
    for column in batch.columns:
        try:
            columns.append(column.cast(pa.string()))
            continue
        except pa.ArrowInvalid:
            pass
        ok = np.array([_is_utf8(v) for v in column.to_pylist()], dtype=np.bool_)  # only on a batch holding bad text
        valid = ok if valid is None else valid & ok
        columns.append(pc.if_else(pa.array(ok), column, pa.scalar(b"", pa.binary())).cast(pa.string()))
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names), valid


def invalid_text(batch: pa.RecordBatch, row: int) -> tuple[str, bytes]:
    """The first column of `row` whose bytes are not valid UTF-8: (column name, the bytes)."""
    for name, column in zip(batch.schema.names, batch.columns):
        value = column[row].as_py()
        if not _is_utf8(value):
            return name, value
    raise ValueError(f"row {row} holds valid UTF-8 only")


def decode_or_refuse(raw: pa.RecordBatch, where: Callable[[int], str], fix: str) -> pa.RecordBatch:
    """decode_text, refusing a batch with invalid UTF-8: HetGMPError naming where(row), the column
    and its bytes, and `fix` (for readers that may not skip rows)."""
    batch, text_ok = decode_text(raw)
    if text_ok is not None:
        row = int(np.flatnonzero(~text_ok)[0])
        column, value = invalid_text(raw, row)
        raise HetGMPError(f"{where(row)}, column {column}: {value!r} is not valid UTF-8: {fix}")
    return batch


def _is_utf8(value: bytes | None) -> bool:
    try:
        (value or b"").decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@dataclass(frozen=True)
class TableLayout:
    """Where a dataset's columns are. column_names None means the file has a header line."""

    dataset: str
    delimiter: str
    label: str | None  # None: rows without a label (files to score, e.g. Criteo's test.txt)
    dense: tuple[str, ...]
    categorical: tuple[str, ...]
    column_names: tuple[str, ...] | None = None
    member: str | None = None  # the file to take from a tar archive
    quoting: bool = False

    @property
    def header_lines(self) -> int:
        return 1 if self.column_names is None else 0

    @property
    def used_columns(self) -> list[str]:
        return [c for c in (self.label, *self.dense, *self.categorical) if c is not None]


class BatchReader:
    """Iterate over string batches of `source`; see the module doc for line numbers."""

    def __init__(self, source: TextSource, layout: TableLayout, block_size: int) -> None:
        self.source = source
        self.layout = layout
        self.block_size = block_size
        self.invalid_lines = array.array("q")
        self.invalid_texts: list[tuple[int, int, int, str]] = []  # (line, columns, expected, text)
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="csv-reader", daemon=True)

    def _on_invalid(self, row: pacsv.InvalidRow) -> str:
        self.invalid_lines.append(row.number if row.number is not None else -1)
        if len(self.invalid_texts) < KEEP_TEXTS:
            self.invalid_texts.append((row.number, row.actual_columns, row.expected_columns, row.text[:300]))
        return "skip"

    def _open(self) -> pacsv.CSVStreamingReader:
        layout = self.layout
        names = list(layout.column_names) if layout.column_names else None
        read = pacsv.ReadOptions(column_names=names, block_size=self.block_size, use_threads=False)
        parse = pacsv.ParseOptions(
            delimiter=layout.delimiter,
            quote_char='"' if layout.quoting else False,
            ignore_empty_lines=False,
            invalid_row_handler=self._on_invalid,
        )
        convert = pacsv.ConvertOptions(
            column_types={c: pa.binary() for c in layout.used_columns},
            include_columns=layout.used_columns,
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        )
        return pacsv.open_csv(self.source.stream, read_options=read, parse_options=parse, convert_options=convert)

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        try:
            reader = self._open()
            while not self._stop.is_set():
                try:
                    self._put(reader.read_next_batch())
                except StopIteration:
                    break
            self._put(_DONE)
        except BaseException as e:  # handed to the consuming thread, which raises it
            self._put(e)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        self._thread.start()
        try:
            while True:
                item = self._queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise self._translate(item) from item
                yield item
        finally:
            self._stop.set()
            self._thread.join()

    def _translate(self, error: BaseException) -> BaseException:
        where = self.source.description
        if isinstance(error, (EOFError, OSError)):
            return HetGMPError(f"reading {where} failed ({error}): the file is truncated or damaged; download it again")
        if isinstance(error, (pa.ArrowInvalid, pa.ArrowKeyError)):
            expected = ", ".join(self.layout.used_columns)
            return HetGMPError(f"{where} cannot be parsed as {self.layout.dataset} data ({error}); expected columns: {expected}")
        return error

    def line_of(self, row: int) -> int:
        """Physical line (1-based) of the row-th emitted row (0-based)."""
        line = row + 1 + self.layout.header_lines
        for skipped in self.invalid_lines:
            if skipped > line:
                break
            line += 1
        return line

    def first_invalid(self) -> str | None:
        """A message for the first wrong-width row seen so far, or None."""
        if not self.invalid_texts:
            return None
        line, columns, expected, text = self.invalid_texts[0]
        names = self.layout.column_names
        shape = ", ".join(names) if names else "the columns named in the header line"
        return (
            f"line {line} of {self.source.description} has {columns} columns, expected {expected} "
            f"({self.layout.dataset} rows are: {shape}); the row reads {text!r}"
        )

"""The files of `hetgmp prepare table`, read as Arrow record batches with row positions.

Inputs: CSV/TSV files (plain or gzip, recognised by their bytes; with a
header line, or `--no-header` with `--column-names` or Arrow's f0, f1, ...
names) and Parquet files; a folder stands for the files inside it (sorted by
path, hidden and `_`-prefixed names skipped, as Arrow's dataset discovery
does). Files are read one after another, in the order given, so the row
order (and with it the seeded shuffle) depends only on the inputs.

CSV is read by `reader.BatchReader` (every column as bytes, then checked UTF-8 strings, lines
counted for messages); Parquet through `pyarrow.dataset`, its columns in
their own types. Each batch comes with `where(i)`, the position of its row i
for messages: "line 7 of a.csv" (physical line, header counted) or
"row 7 of part-0.parquet" (1-based).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds

from hetgmp.data.reader import BatchReader, TableLayout, decode_or_refuse
from hetgmp.data.textsource import open_text
from hetgmp.errors import HetGMPError

PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
FORMATS = ("auto", "csv", "parquet")


@dataclass(frozen=True)
class CsvOptions:
    delimiter: str | None = None  # None: tab for .tsv/.tab names, else comma
    header: bool = True
    column_names: tuple[str, ...] | None = None  # for files without a header line
    block_size: int = 4 << 20

    def delimiter_for(self, path: Path) -> str:
        if self.delimiter is not None:
            return self.delimiter
        suffixes = [s.lower() for s in path.suffixes]
        return "\t" if ".tsv" in suffixes or ".tab" in suffixes else ","


@dataclass
class Batch:
    data: pa.RecordBatch
    where: Callable[[int], str]


def input_files(inputs: list[Path]) -> list[Path]:
    """The files the inputs stand for, in order; a folder gives its visible files sorted by path."""
    files: list[Path] = []
    for path in map(Path, inputs):
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and not any(part[0] in "._" for part in p.relative_to(path).parts))
            if not inside:
                raise HetGMPError(f"--input folder {path} holds no data files: pass the CSV or Parquet files, or the folder that holds them")
            files += inside
        elif path.is_file():
            files.append(path)
        else:
            raise HetGMPError(f"--input {path} does not exist: pass CSV/TSV (optionally .gz) or Parquet files, or a folder of them")
    return files


def detect_format(files: list[Path], format: str) -> str:
    """"csv" or "parquet": the --format given, or from the names (all files must agree)."""
    if format != "auto":
        return format
    kinds = {"parquet" if f.suffix.lower() in PARQUET_SUFFIXES else "csv" for f in files}
    if len(kinds) > 1:
        raise HetGMPError(f"--input mixes Parquet and CSV files ({', '.join(map(str, files[:6]))}): prepare one format at a time, or pass --format")
    return kinds.pop()


class CsvFile:
    """One delimited text file: its column names and its batches (all strings)."""

    def __init__(self, path: Path, options: CsvOptions) -> None:
        self.path, self.options = path, options
        self.delimiter = options.delimiter_for(path)
        self.columns = self._column_names()

    def _column_names(self) -> list[str]:
        if self.options.column_names:
            return list(self.options.column_names)
        read = pacsv.ReadOptions(autogenerate_column_names=not self.options.header, block_size=1 << 20)
        # Wrong-width rows are the batch reader's to report, with their line.
        parse = pacsv.ParseOptions(delimiter=self.delimiter, quote_char='"', invalid_row_handler=lambda row: "skip")
        with open_text(self.path) as source, contextlib.closing(pacsv.open_csv(source.stream, read_options=read, parse_options=parse)) as reader:
            try:
                return reader.schema.names
            except pa.ArrowInvalid as e:  # pragma: no cover - open_csv parses eagerly
                raise HetGMPError(f"{self.path} cannot be read as delimited text ({e})") from e

    def layout(self, used: list[str]) -> TableLayout:
        names = None if self.options.header and not self.options.column_names else tuple(self.columns)
        return TableLayout(dataset="table", delimiter=self.delimiter, label=used[0], dense=(), categorical=tuple(used[1:]),
                           column_names=names, quoting=True)

    def batches(self, used: list[str], on_bytes: Callable[[int], None]) -> Iterator[Batch]:
        with open_text(self.path) as source:
            reader = BatchReader(source, self.layout(used), self.options.block_size)
            emitted = 0
            for raw in reader:
                if len(reader.invalid_lines):
                    raise HetGMPError(f"{reader.first_invalid()}: fix or delete the row")
                first = emitted
                batch = decode_or_refuse(raw, lambda i, first=first: f"line {reader.line_of(first + i)} of {self.path}",
                                         "re-save the file as UTF-8, or fix or delete the row")
                yield Batch(batch, lambda i, first=first: f"line {reader.line_of(first + i)} of {self.path}")
                emitted += batch.num_rows
                on_bytes(source.bytes_read())
            if len(reader.invalid_lines):
                raise HetGMPError(f"{reader.first_invalid()}: fix or delete the row")


class ParquetFile:
    """One Parquet file through pyarrow.dataset: its schema and its batches."""

    def __init__(self, path: Path, batch_rows: int = 1 << 16) -> None:
        self.path, self.batch_rows = path, batch_rows
        try:
            self.dataset = ds.dataset(str(path), format="parquet")
            self.rows = self.dataset.count_rows()
        except (pa.ArrowInvalid, OSError) as e:
            raise HetGMPError(f"{path} is not a readable Parquet file ({e}): pass Parquet files, or --format csv for text") from e
        self.schema = self.dataset.schema
        self.columns = self.schema.names

    def batches(self, used: list[str], on_rows: Callable[[int], None]) -> Iterator[Batch]:
        start = 0
        for fragment in self.dataset.get_fragments():
            # Little read-ahead: the reading is cheaper than the encoding, and each batch held ahead costs memory.
            for batch in fragment.to_batches(columns=used, batch_size=self.batch_rows, batch_readahead=2, fragment_readahead=1, use_threads=True):
                first = start
                yield Batch(batch, lambda i, first=first: f"row {first + i + 1} of {self.path}")
                start += batch.num_rows
                on_rows(batch.num_rows)


def check_columns(path: Path, columns: list[str], used: list[str]) -> None:
    """Every used column present exactly once in the file; else list the file's columns."""
    missing = [c for c in used if c not in columns]
    twice = sorted({c for c in used if columns.count(c) > 1})
    if missing or twice:
        problem = f"has no column {', '.join(missing)}" if missing else f"has more than one column named {', '.join(twice)}"
        raise HetGMPError(f"{path} {problem}; its columns are: {', '.join(columns)}. Name existing columns in --label/--dense/--sparse/--multi-hot"
                          + ("" if missing else ", or rename the duplicates"))

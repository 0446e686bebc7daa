"""Raw text -> dataset directory, in two passes over bounded memory.

Pass 1 reads the text once (reader.py): per batch it checks labels and
integers, transforms the dense features, turns every categorical value into
a sortable int64 key while remembering each field's distinct keys
(vocab.py), and appends fixed-size records to 64 shuffle buckets on disk
(buckets.py). Pass 2 reads the buckets one at a time, shuffles each, maps
keys to global ids and appends the rows to the six arrays (outputs.py).
The text is parsed once; the only per-row work in Python is vectorised.

Everything is written inside the temporary directory of `atomic_directory`
(the buckets in its `.work/` folder, removed before the rename), so an error
or a kill leaves nothing that looks like a dataset.

The original's encoding, exactly: label-encoded fields in sorted string
order per field with missing as "-1", global ids offset by the running
field sizes; dense empty -> 0 then log(x + 1) if x > -1 else -1.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from hetgmp.atomic import atomic_directory
from hetgmp.data import kernels
from hetgmp.data.arrays import DatasetMeta, write_meta
from hetgmp.data.buckets import BUCKETS, BucketFiles, bucket_of, bucket_permutation, record_dtype
from hetgmp.data.outputs import SplitWriter
from hetgmp.data.reader import BatchReader, TableLayout, decode_text, invalid_text
from hetgmp.data.textsource import open_text
from hetgmp.data.vocab import VOCAB_FILE, FieldVocab, save_vocab, string_buffers
from hetgmp.errors import HetGMPError

SKIP_HINT = "fix or delete the row, or pass --skip-bad-rows to skip malformed rows"
UTF8_FIX = "re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`), fix or delete the row, or pass --skip-bad-rows to skip such rows"


@dataclass
class PrepareConfig:
    input: Path
    output: Path
    seed: int = 0
    val_fraction: float = 0.1
    skip_bad_rows: bool = False
    force: bool = False
    progress: bool | None = None  # None: bars only when stderr is a terminal
    # Bytes of text per parsed batch. Arrow's reader buffers up to 32 blocks
    # ahead, so this bounds that buffer (128 MB); larger blocks saved no CPU.
    block_size: int = 4 << 20


@dataclass
class _Stats:
    rows_emitted: int = 0  # rows Arrow handed over, good or bad
    kept: int = 0
    bad_typed: int = 0
    first_bad: tuple[int, str] | None = None  # (line, message) of the first skipped typed row
    seconds: dict[str, float] = field(default_factory=dict)


class _Pass1:
    """Per-batch checks, keys and bucketing."""

    def __init__(self, layout: TableLayout, config: PrepareConfig, reader: BatchReader, buckets: BucketFiles) -> None:
        self.layout, self.config, self.reader, self.buckets = layout, config, reader, buckets
        self.vocabs = [FieldVocab(name) for name in layout.categorical]
        self.stats = _Stats()

    def _typed(self, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labels int8 (n,), dense float32 (I, n) and the ok mask (1 + I, n) of the label and each integer."""
        n, layout = batch.num_rows, self.layout
        labels = np.empty(n, np.int8)
        dense = np.empty((len(layout.dense), n), np.float32)
        ok = np.empty((1 + len(layout.dense), n), np.bool_)
        kernels.parse_labels(*string_buffers(batch.column(layout.label)), labels, ok[0])
        for j, name in enumerate(layout.dense):
            kernels.parse_dense(*string_buffers(batch.column(name)), dense[j], ok[1 + j])
        return labels, dense, ok

    def _bad_row_message(self, batch: pa.RecordBatch, ok: np.ndarray, row: int) -> tuple[int, str]:
        column = int(np.argmin(ok[:, row]))
        name = self.layout.label if column == 0 else self.layout.dense[column - 1]
        value = batch.column(name)[row].as_py()
        rule = "0 or 1" if column == 0 else "an integer or empty"
        line = self.reader.line_of(self.stats.rows_emitted + row)
        where = self.reader.source.description
        return line, f"line {line} of {where}: column {name} is {value!r}, expected {rule}"

    def _bad_text_message(self, raw: pa.RecordBatch, row: int) -> tuple[int, str]:
        name, value = invalid_text(raw, row)
        line = self.reader.line_of(self.stats.rows_emitted + row)
        return line, f"line {line} of {self.reader.source.description}: column {name} is {value!r}, which is not valid UTF-8 text"

    def _check_invalid(self, before_line: float) -> None:
        """In strict mode, stop at a wrong-width row that comes before `before_line`."""
        lines = self.reader.invalid_lines
        if not self.config.skip_bad_rows and len(lines) and lines[0] <= before_line:
            raise HetGMPError(f"{self.reader.first_invalid()}: {SKIP_HINT}")

    def process(self, raw: pa.RecordBatch) -> None:
        n = raw.num_rows
        batch, text_ok = decode_text(raw)
        labels, dense, ok = self._typed(batch)
        good = ok.all(axis=0) if text_ok is None else ok.all(axis=0) & text_ok
        bad = np.flatnonzero(~good)
        if len(bad):
            first = int(bad[0])
            bad_text = text_ok is not None and not text_ok[first]
            line, message = self._bad_text_message(raw, first) if bad_text else self._bad_row_message(batch, ok, first)
            self._check_invalid(line)
            if not self.config.skip_bad_rows:
                raise HetGMPError(f"{message}: {UTF8_FIX if bad_text else SKIP_HINT}")
            self.stats.bad_typed += len(bad)
            self.stats.first_bad = self.stats.first_bad or (line, message)
        self._check_invalid(self.reader.line_of(self.stats.rows_emitted + n - 1))
        self.stats.rows_emitted += n
        keep = None if not len(bad) else good
        self._append(batch, labels, dense, keep)

    def _append(self, batch: pa.RecordBatch, labels: np.ndarray, dense: np.ndarray, keep: np.ndarray | None) -> None:
        if keep is not None:
            batch, labels, dense = batch.filter(pa.array(keep)), labels[keep], dense[:, keep]
        n = batch.num_rows
        records = np.empty(n, self.buckets.dtype)
        records["label"] = labels
        records["dense"] = dense.T
        keys = records["keys"]
        for f, vocab in enumerate(self.vocabs):
            keys[:, f] = vocab.keys(batch.column(self.layout.categorical[f]))
        rows = np.arange(self.stats.kept, self.stats.kept + n, dtype=np.uint64)
        self.buckets.append(records, bucket_of(rows, self.config.seed))
        self.stats.kept += n

    def finish(self) -> None:
        """End of stream: a wrong-width row anywhere is an error in strict mode."""
        self._check_invalid(math.inf)


def progress_bar(progress: bool | None, **kwargs) -> tqdm:
    """A progress bar on stderr; `progress` None: only when stderr is a terminal (tqdm's disable=None)."""
    return tqdm(file=sys.stderr, disable=None if progress is None else not progress, dynamic_ncols=True, mininterval=0.5, **kwargs)


def _run_pass1(layout: TableLayout, config: PrepareConfig, work: Path) -> tuple[_Pass1, BucketFiles]:
    dtype = record_dtype(len(layout.dense), len(layout.categorical))
    with open_text(config.input, layout.member) as source:
        reader = BatchReader(source, layout, config.block_size)
        buckets = BucketFiles(work, dtype)
        pass1 = _Pass1(layout, config, reader, buckets)
        start = time.perf_counter()
        with progress_bar(config.progress, total=source.total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=f"{layout.dataset} 1/2 read") as bar:
            try:
                for batch in reader:
                    pass1.process(batch)
                    bar.update(source.bytes_read() - bar.n)
                    rate = pass1.stats.kept / max(time.perf_counter() - start, 1e-9)
                    bar.set_postfix_str(f"{pass1.stats.kept:,} rows, {rate:,.0f} rows/s", refresh=False)
                pass1.finish()
            finally:
                buckets.close()
        pass1.stats.seconds["read"] = time.perf_counter() - start
    return pass1, buckets


def split_sizes(rows: int, val_fraction: float) -> tuple[int, int]:
    """(train, test): test is ceil(rows * val_fraction), as sklearn's train_test_split counts it."""
    test = math.ceil(rows * val_fraction)
    return rows - test, test


def write_shuffled(buckets: BucketFiles, writer: SplitWriter, encode: Callable[[np.ndarray], np.ndarray], seed: int, bar: tqdm) -> None:
    """Pass 2: each bucket in turn, permuted by (seed, bucket), its keys encoded to ids and appended."""
    with bar:
        for b in range(BUCKETS):
            records = buckets.take(b)
            records = records[bucket_permutation(seed, b, len(records))]
            writer.write(records["dense"], encode(records["keys"]), records["label"])
            bar.update(len(records))


def _run_pass2(pass1: _Pass1, buckets: BucketFiles, meta: DatasetMeta, writer: SplitWriter, config: PrepareConfig) -> None:
    offsets = meta.offsets
    id_dtype = meta.id_dtype()
    bar = progress_bar(config.progress, total=int(buckets.counts.sum()), unit="rows", unit_scale=True, desc=f"{meta.extra['dataset']} 2/2 write")
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:

        def encode(keys: np.ndarray) -> np.ndarray:
            sparse = np.empty((len(keys), len(pass1.vocabs)), id_dtype)
            # The lookups release the GIL, so fields go to all cores.
            list(pool.map(lambda f: pass1.vocabs[f].encode(keys[:, f], offsets[f], sparse[:, f]), range(len(offsets))))
            return sparse

        write_shuffled(buckets, writer, encode, config.seed, bar)


def _meta(layout: TableLayout, config: PrepareConfig, pass1: _Pass1) -> DatasetMeta:
    stats = pass1.stats
    skipped = stats.bad_typed + len(pass1.reader.invalid_lines)
    train, test = split_sizes(stats.kept, config.val_fraction)
    if train == 0:
        raise HetGMPError(f"{config.input} has {stats.kept} usable rows; with --val-fraction {config.val_fraction} none is left for training: give a larger input")
    first = [m for m in (stats.first_bad, _first_invalid(pass1.reader)) if m]
    extra = {
        "dataset": layout.dataset,
        "source": str(config.input),
        "val_fraction": config.val_fraction,
        "shuffle": f"{BUCKETS} hashed buckets, each permuted by numpy default_rng([seed, bucket])",
        "bad_rows_skipped": skipped,
        "first_bad_row": min(first)[1] if first else None,
        "vocab": {"file": VOCAB_FILE, "fields": list(layout.categorical), "missing": "-1", "order": "sorted string order per field"},
        "dense_columns": list(layout.dense),
    }
    fields = [v.size for v in pass1.vocabs]
    return DatasetMeta(fields=fields, num_ids=sum(fields), train_rows=train, test_rows=test, seed=config.seed, num_dense=len(layout.dense), extra=extra)


def _first_invalid(reader: BatchReader) -> tuple[int, str] | None:
    message = reader.first_invalid()
    return (reader.invalid_texts[0][0], message) if message else None


def check_config(config: PrepareConfig) -> None:
    if not 0.0 <= config.val_fraction < 1.0:
        raise HetGMPError(f"--val-fraction is {config.val_fraction}; it must be in [0, 1), e.g. 0.1 for the last 10% as test split")
    if config.block_size < 1024:
        raise HetGMPError(f"--block-size is {config.block_size} bytes; give at least 1024 (a block must hold whole rows; the default is 4 MiB)")
    if config.seed < 0:
        raise HetGMPError(f"--seed is {config.seed}; it must be a non-negative integer")
    check_outside_output(config.input, config.output)


def check_outside_output(input: Path, output: Path) -> None:
    # --force replaces the whole output directory, which would delete the input with it.
    if Path(output).resolve() in Path(input).resolve().parents:
        raise HetGMPError(f"--input {input} lies inside --output {output}: write the arrays to another directory")


def prepare_table(layout: TableLayout, config: PrepareConfig) -> DatasetMeta:
    """Turn `config.input` into the dataset directory `config.output`; return its metadata."""
    check_config(config)
    start = time.perf_counter()
    with atomic_directory(config.output, force=config.force) as tmp:
        work = tmp / ".work"
        pass1, buckets = _run_pass1(layout, config, work)
        vocab = {v.name: v.finish() for v in pass1.vocabs}
        meta = _meta(layout, config, pass1)
        writer = SplitWriter(tmp, meta.train_rows, meta.test_rows, meta.num_dense, meta.num_fields, meta.id_dtype())
        try:
            _run_pass2(pass1, buckets, meta, writer, config)
        finally:
            writer.close()
        shutil.rmtree(work)
        save_vocab(tmp, vocab)
        meta.extra["seconds_pass1"] = round(pass1.stats.seconds["read"], 1)
        meta.extra["seconds"] = round(time.perf_counter() - start, 1)
        write_meta(tmp, meta)
    return meta

"""`hetgmp prepare table`: a user's own CSV/TSV or Parquet files -> dataset directory.

The passes of encode.py, over any columns: pass 1 reads the files in order
(table_input.py), checks the labels, transforms the dense columns
(table_columns.py), turns every categorical value into a key
(table_fields.py) and appends fixed-size records to the seeded shuffle
buckets; with --min-count, the buckets are read once more to count each
value; pass 2 shuffles each bucket, maps keys to global ids and writes the
six arrays. Fields are the --sparse columns, then the --multi-hot ones, each
multi-hot field taking its bag size's columns in the sparse arrays. A
multi-hot column without --bag-size is read once before pass 1 for its
largest bag. Memory holds a batch, one bucket and the vocabularies.

Everything is written inside `atomic_directory`, so an error leaves nothing.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hetgmp.atomic import atomic_directory
from hetgmp.data import table_columns
from hetgmp.data.arrays import DatasetMeta, write_meta
from hetgmp.data.buckets import BUCKETS, BucketFiles, bucket_of, record_dtype
from hetgmp.data.encode import PrepareConfig, check_config, check_outside_output, progress_bar, split_sizes, write_shuffled
from hetgmp.data.outputs import SplitWriter
from hetgmp.data.table_fields import FieldCodec
from hetgmp.data.table_input import CsvFile, CsvOptions, ParquetFile, check_columns, detect_format, input_files
from hetgmp.data.vocab import VOCAB_FILE, MISSING, save_vocab
from hetgmp.errors import HetGMPError


@dataclass
class TableSpec:
    """Which columns play which part, and how categorical values become ids."""

    inputs: list[Path]
    label: str
    dense: tuple[str, ...] = ()
    sparse: tuple[str, ...] | None = None  # None: every column not named elsewhere
    multi_hot: tuple[str, ...] = ()
    bag_sizes: dict[str, int] = field(default_factory=dict)
    hash_buckets: int | None = None  # for every categorical column
    hash_columns: dict[str, int] = field(default_factory=dict)  # per column, overriding hash_buckets
    min_count: int = 1
    dense_transform: str = "criteo"
    list_delimiter: str = "|"
    format: str = "auto"
    csv: CsvOptions = field(default_factory=CsvOptions)


def _check_spec(spec: TableSpec) -> None:
    named = [spec.label, *spec.dense, *(spec.sparse or ()), *spec.multi_hot]
    twice = sorted({c for c in named if named.count(c) > 1})
    if twice:
        raise HetGMPError(f"column {', '.join(twice)} is named more than once across --label/--dense/--sparse/--multi-hot: give each column one role")
    buckets = {"--hash-buckets": spec.hash_buckets, **{f"--hash-buckets {c}=": n for c, n in spec.hash_columns.items()}}
    for flag, n in buckets.items():
        if n is not None and n < 1:
            raise HetGMPError(f"{flag} is {n}; a hashed field needs at least 1 bucket (e.g. --hash-buckets 1000000), or leave the flag out to label-encode")
    if spec.min_count < 1:
        raise HetGMPError(f"--min-count is {spec.min_count}; give 1 (keep every value) or more")
    for column, k in spec.bag_sizes.items():
        if k < 1:
            raise HetGMPError(f"--bag-size {column}={k}; a bag holds at least 1 value")
    if spec.dense_transform not in table_columns.DENSE_TRANSFORMS:
        raise HetGMPError(f"--dense-transform is {spec.dense_transform!r}; choose one of {', '.join(table_columns.DENSE_TRANSFORMS)}")
    if spec.multi_hot and not spec.list_delimiter:
        raise HetGMPError("--list-delimiter is empty; give the character that joins a string column's values, e.g. '|'")


def _open_files(spec: TableSpec, files: list[Path]) -> list[CsvFile | ParquetFile]:
    kind = detect_format(files, spec.format)
    return [ParquetFile(f) if kind == "parquet" else CsvFile(f, spec.csv) for f in files]


def _resolve_sparse(spec: TableSpec, first: CsvFile | ParquetFile) -> tuple[str, ...]:
    if spec.sparse is not None:
        return spec.sparse
    taken = {spec.label, *spec.dense, *spec.multi_hot}
    return tuple(c for c in first.columns if c not in taken)


def _check_inputs(spec: TableSpec, opened: list[CsvFile | ParquetFile], sparse: tuple[str, ...]) -> None:
    roles = {spec.label: "label", **{c: "dense" for c in spec.dense}, **{c: "sparse" for c in sparse}, **{c: "multi-hot" for c in spec.multi_hot}}
    for column in [*spec.bag_sizes, *spec.hash_columns]:
        if roles.get(column) not in ("sparse", "multi-hot"):
            raise HetGMPError(f"--bag-size/--hash-buckets name column {column}, which is not a --sparse or --multi-hot column ({', '.join(sparse + spec.multi_hot)})")
    for column in spec.bag_sizes:
        if roles[column] != "multi-hot":
            raise HetGMPError(f"--bag-size names {column}, a --sparse column (one value a row): pass it with --multi-hot to read bags")
    for f in opened:
        check_columns(f.path, f.columns, list(roles))
        if isinstance(f, ParquetFile):
            for column, role in roles.items():
                table_columns.check_type(str(f.path), column, role, f.schema.field(column).type)
    if not sparse and not spec.multi_hot:
        raise HetGMPError(f"no categorical columns: name them with --sparse or --multi-hot (the file's columns: {', '.join(opened[0].columns)})")


def _batches(opened: list[CsvFile | ParquetFile], used: list[str], bar):
    for f in opened:
        if isinstance(f, ParquetFile):
            yield from f.batches(used, bar.update)
        else:
            done = bar.n
            yield from f.batches(used, lambda read, done=done: bar.update(done + read - bar.n))


def _bar_for(opened: list[CsvFile | ParquetFile], progress: bool, desc: str):
    if isinstance(opened[0], ParquetFile):
        return progress_bar(progress, total=sum(f.rows for f in opened), unit="rows", unit_scale=True, desc=desc)
    return progress_bar(progress, total=sum(f.path.stat().st_size for f in opened), unit="B", unit_scale=True, unit_divisor=1024, desc=desc)


def _bag_sizes(spec: TableSpec, opened: list[CsvFile | ParquetFile], config: PrepareConfig) -> dict[str, int]:
    """--bag-size where given, else each multi-hot column's largest bag (one read of those columns)."""
    sizes = {c: spec.bag_sizes[c] for c in spec.multi_hot if c in spec.bag_sizes}
    scan = [c for c in spec.multi_hot if c not in sizes]
    if scan:
        probes = {c: FieldCodec(c, multi_hot=True, list_delimiter=spec.list_delimiter) for c in scan}
        largest = dict.fromkeys(scan, 0)
        with _bar_for(opened, config.progress, "table 0/2 bag sizes") as bar:
            for batch in _batches(opened, [spec.label, *scan], bar):
                for c in scan:
                    largest[c] = max(largest[c], probes[c].largest_bag(batch.data.column(c)))
        sizes.update({c: max(k, 1) for c, k in largest.items()})
    return sizes


def _codecs(spec: TableSpec, sparse: tuple[str, ...], bag_sizes: dict[str, int]) -> list[FieldCodec]:
    def codec(name: str, multi_hot: bool) -> FieldCodec:
        return FieldCodec(name, width=bag_sizes.get(name, 1), multi_hot=multi_hot, min_count=spec.min_count,
                          hash_buckets=spec.hash_columns.get(name, spec.hash_buckets), list_delimiter=spec.list_delimiter)

    return [codec(c, False) for c in sparse] + [codec(c, True) for c in spec.multi_hot]


def _pass1(spec: TableSpec, opened: list, codecs: list[FieldCodec], config: PrepareConfig, work: Path) -> BucketFiles:
    widths = [c.width for c in codecs]
    buckets = BucketFiles(work, record_dtype(len(spec.dense), sum(widths)))
    used = [spec.label, *spec.dense, *(c.name for c in codecs)]
    kept, start = 0, time.perf_counter()
    try:
        with _bar_for(opened, config.progress, "table 1/2 read") as bar:
            for batch in _batches(opened, used, bar):
                data, n = batch.data, batch.data.num_rows
                records = np.empty(n, buckets.dtype)
                records["label"] = table_columns.labels(data.column(spec.label), spec.label, batch.where)
                for j, name in enumerate(spec.dense):
                    records["dense"][:, j] = table_columns.dense(data.column(name), name, spec.dense_transform, batch.where)
                records["keys"] = np.concatenate([c.keys(data.column(c.name)) for c in codecs], axis=1)
                buckets.append(records, bucket_of(np.arange(kept, kept + n, dtype=np.uint64), config.seed))
                kept += n
                bar.set_postfix_str(f"{kept:,} rows, {kept / max(time.perf_counter() - start, 1e-9):,.0f} rows/s", refresh=False)
    finally:
        buckets.close()
    if kept == 0:
        raise HetGMPError(f"the input ({', '.join(str(f.path) for f in opened[:5])}) holds no rows: pass files with data")
    return buckets


def _count_values(buckets: BucketFiles, codecs: list[FieldCodec]) -> None:
    """--min-count: every value's occurrences, one more read of the buckets."""
    bounds = np.cumsum([0] + [c.width for c in codecs])
    for b in range(BUCKETS):
        keys = buckets.read(b)["keys"]
        for f, codec in enumerate(codecs):
            if codec.min_count > 1:
                codec.count(keys[:, bounds[f] : bounds[f + 1]])


def _meta(spec: TableSpec, codecs: list[FieldCodec], files: list[Path], rows: int, config: PrepareConfig) -> DatasetMeta:
    train, test = split_sizes(rows, config.val_fraction)
    if train == 0:
        raise HetGMPError(f"the input has {rows} rows; with --val-fraction {config.val_fraction} none is left for training: give more rows")
    fields = [c.size for c in codecs]
    extra = {
        "dataset": "table",
        "source": [str(f) for f in files],
        "val_fraction": config.val_fraction,
        "shuffle": f"{BUCKETS} hashed buckets, each permuted by numpy default_rng([seed, bucket])",
        "label_column": spec.label,
        "dense_columns": list(spec.dense),
        "dense_transform": spec.dense_transform,
        "min_count": spec.min_count,
        "vocab": {"file": VOCAB_FILE, "fields": [c.name for c in codecs], "missing": MISSING, "order": "sorted string order per field",
                  "special_value": "", "hash": "FNV-1a 64 of the value's UTF-8 bytes (missing as '-1') mod hash_buckets",
                  "field_info": [c.describe() for c in codecs]},
    }
    if spec.multi_hot:
        extra.update(bag_sizes=[c.width for c in codecs], padding_ids=[c.padding_id for c in codecs])
    return DatasetMeta(fields=fields, num_ids=sum(fields), train_rows=train, test_rows=test, seed=config.seed, num_dense=len(spec.dense), extra=extra)


def _encoder(codecs: list[FieldCodec], meta: DatasetMeta):
    bounds = np.cumsum([0] + [c.width for c in codecs])

    def encode(keys: np.ndarray) -> np.ndarray:
        sparse = np.empty((len(keys), bounds[-1]), meta.id_dtype())
        for f, codec in enumerate(codecs):
            codec.encode(keys[:, bounds[f] : bounds[f + 1]], meta.offsets[f], sparse[:, bounds[f] : bounds[f + 1]])
        return sparse

    return encode


def prepare_from_table(spec: TableSpec, config: PrepareConfig) -> DatasetMeta:
    """Turn the files of `spec.inputs` into the dataset directory `config.output`; return its metadata."""
    check_config(config)
    _check_spec(spec)
    for path in spec.inputs:
        check_outside_output(path, config.output)
    start = time.perf_counter()
    files = input_files(spec.inputs)
    opened = _open_files(spec, files)
    sparse = _resolve_sparse(spec, opened[0])
    _check_inputs(spec, opened, sparse)
    codecs = _codecs(spec, sparse, _bag_sizes(spec, opened, config))
    with atomic_directory(config.output, force=config.force) as tmp:
        buckets = _pass1(spec, opened, codecs, config, tmp / ".work")
        for codec in codecs:
            codec.finish()
        if spec.min_count > 1:
            _count_values(buckets, codecs)
        vocab = {c.name: v for c in codecs if (v := c.settle()) is not None}
        meta = _meta(spec, codecs, files, int(buckets.counts.sum()), config)
        writer = SplitWriter(tmp, meta.train_rows, meta.test_rows, meta.num_dense, sum(c.width for c in codecs), meta.id_dtype())
        bar = progress_bar(config.progress, total=meta.train_rows + meta.test_rows, unit="rows", unit_scale=True, desc="table 2/2 write")
        try:
            write_shuffled(buckets, writer, _encoder(codecs, meta), config.seed, bar)
        finally:
            writer.close()
        shutil.rmtree(tmp / ".work")
        save_vocab(tmp, vocab)
        meta.extra["seconds"] = round(time.perf_counter() - start, 1)
        write_meta(tmp, meta)
    return meta

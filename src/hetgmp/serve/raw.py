"""Raw Criteo/Avazu rows -> (dense, global ids, labels) batches, encoded with the training vocabulary.

The rows are parsed exactly as `hetgmp prepare` parses them (reader.py, the
dense transform and label checks of data/kernels.py) and their categorical
values are looked up in the training set's `vocab.npz` (vocab_lookup.py); an
unseen value takes its field's out-of-vocabulary id (serve/trained.py).

Rows may come with or without their label: Criteo rows have 40 columns
(label, I1..I13, C1..C26) or 39 (no label, as Kaggle's test.txt); an Avazu
file's header line names its columns and may lack `click`. Without labels no
AUC can be computed. Every row is scored, in file order: a malformed row stops
the run with its line number (skipping it would shift every later prediction).

Raw rows hold one value per field, so a checkpoint trained on multi-hot bags
is refused here: its rows must be scored as a prepared dataset (--data DIR)
whose bags are the training data's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from hetgmp.data import kernels
from hetgmp.data.arrays import read_meta
from hetgmp.data.avazu import AVAZU
from hetgmp.data.criteo import CRITEO
from hetgmp.data.reader import BatchReader, TableLayout, decode_or_refuse
from hetgmp.data.textsource import open_text
from hetgmp.data.vocab import VOCAB_FILE, load_vocab, string_buffers
from hetgmp.errors import HetGMPError
from hetgmp.serve.predict import Rows
from hetgmp.serve.trained import TrainedModel
from hetgmp.serve.vocab_lookup import FieldLookup

FORMATS = {"criteo": CRITEO, "avazu": AVAZU}


def field_lookups(vocab_dir: str | Path, layout: TableLayout, trained: TrainedModel) -> list[FieldLookup]:
    """One lookup per categorical column, after checking the model and vocabulary are the checkpoint's."""
    refuse_bags(trained, layout)
    vocab_dir = Path(vocab_dir)
    if not (vocab_dir / VOCAB_FILE).is_file():
        raise HetGMPError(f"--vocab {vocab_dir} has no {VOCAB_FILE}: give the dataset folder `hetgmp prepare` wrote for training "
                          "(`hetgmp synth` datasets have no raw values, so no vocabulary)")
    vocab = load_vocab(vocab_dir)
    if list(vocab) != list(layout.categorical):
        raise HetGMPError(f"{vocab_dir / VOCAB_FILE} holds fields {list(vocab)} but --format {layout.dataset} needs "
                          f"{list(layout.categorical)}: pass the --format the training set was prepared from")
    sizes = [len(v) for v in vocab.values()]
    if not trained.same_vocabulary(sizes):
        raise HetGMPError(f"{vocab_dir} has a vocabulary of {sum(sizes)} ids in fields of {sizes}, but the checkpoint "
                          f"{trained.folder} was trained on {trained.num_ids} ids in fields of {trained.fields} "
                          f"(dataset {trained.meta.get('data')}): pass --vocab the dataset folder the model was trained on")
    offsets = read_meta(vocab_dir).offsets
    return [FieldLookup(v, offsets[f], trained.oov_id(f)) for f, v in enumerate(vocab.values())]


def refuse_bags(trained: TrainedModel, layout: TableLayout) -> None:
    """Raw Criteo/Avazu rows give one id per field; a multi-hot model pools bags of sum(bag_sizes) ids."""
    if trained.bags is not None:
        raise HetGMPError(f"the checkpoint {trained.folder} was trained on multi-hot bags (bag sizes {list(trained.bags.sizes)}), "
                          f"and raw --input rows of --format {layout.dataset} hold one value per field: prepare the rows "
                          "first, into a dataset with the training data's vocabulary and bags (as the dataset it was "
                          f"trained on, {trained.meta.get('data')}), and score that with --data DIR")


def first_line(path: str | Path, layout: TableLayout) -> bytes:
    with open_text(path, layout.member) as source:
        return source.stream.readline().rstrip(b"\r\n")


def file_layout(path: str | Path, layout: TableLayout) -> TableLayout:
    """The layout of this file: with its label column, or without one."""
    line = first_line(path, layout)
    if layout.column_names is not None:  # no header: the column count tells
        columns = line.count(layout.delimiter.encode()) + 1
        full = len(layout.column_names)
        if columns == full:
            return layout
        if columns == full - 1:
            names = tuple(c for c in layout.column_names if c != layout.label)
            return dataclasses.replace(layout, label=None, column_names=names)
        raise HetGMPError(f"line 1 of {path} has {columns} columns, but {layout.dataset} rows have {full} "
                          f"({', '.join(layout.column_names[:3])}, ..., {layout.column_names[-1]}) or {full - 1} (without "
                          f"{layout.label}): pass a {layout.dataset} file, or the --format it was written in")
    header = [c.strip('"') for c in line.decode(errors="replace").split(layout.delimiter)]
    missing = [c for c in (*layout.dense, *layout.categorical) if c not in header]
    if missing:
        raise HetGMPError(f"the header line of {path} lacks columns {missing} of {layout.dataset} (it names {header[:8]}...): "
                          f"pass a {layout.dataset} file with its header line, or the --format it was written in")
    return layout if layout.label in header else dataclasses.replace(layout, label=None)


class RawRows:
    """Iterate over a raw file's rows as Rows batches, in file order."""

    def __init__(self, path: str | Path, layout: TableLayout, lookups: list[FieldLookup], block_size: int = 4 << 20) -> None:
        self.path, self.layout, self.lookups, self.block_size = Path(path), file_layout(path, layout), lookups, block_size

    def __iter__(self) -> Iterator[Rows]:
        with open_text(self.path, self.layout.member) as source:
            reader = BatchReader(source, self.layout, self.block_size)
            rows = 0
            for raw in reader:
                self._check_widths(reader)
                batch = decode_or_refuse(raw, lambda i, first=rows: f"line {reader.line_of(first + i)}",
                                         "fix or delete that row (every row is scored, in order, so none is skipped)")
                yield self._typed(batch, reader, rows)
                rows += batch.num_rows
            self._check_widths(reader)

    def _check_widths(self, reader: BatchReader) -> None:
        if reader.invalid_texts:
            raise HetGMPError(f"{reader.first_invalid()}: fix or delete that row (every row is scored, in order, so none is skipped)")

    def _typed(self, batch: pa.RecordBatch, reader: BatchReader, first_row: int) -> Rows:
        n, layout = batch.num_rows, self.layout
        dense = np.empty((len(layout.dense), n), np.float32)
        ok = np.ones((1 + len(layout.dense), n), np.bool_)
        labels = None
        if layout.label is not None:
            labels = np.empty(n, np.int8)
            kernels.parse_labels(*string_buffers(batch.column(layout.label)), labels, ok[0])
        for j, name in enumerate(layout.dense):
            kernels.parse_dense(*string_buffers(batch.column(name)), dense[j], ok[1 + j])
        bad = np.flatnonzero(~ok.all(axis=0))
        if len(bad):
            row, column = int(bad[0]), int(np.argmin(ok[:, bad[0]]))
            name = layout.label if column == 0 else layout.dense[column - 1]
            rule = "0 or 1" if column == 0 else "an integer or empty"
            raise HetGMPError(f"line {reader.line_of(first_row + row)} of {reader.source.description}: column {name} is "
                              f"{batch.column(name)[row].as_py()!r}, expected {rule}: fix or delete that row")
        ids = np.stack([lookup.ids(batch.column(name)) for lookup, name in zip(self.lookups, layout.categorical)], 1)
        return Rows(np.ascontiguousarray(dense.T), ids.reshape(n, len(self.lookups)),
                        None if labels is None else labels.astype(np.float32))

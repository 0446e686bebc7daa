"""Score rows with a trained model, streaming: `hetgmp predict`.

Rows come in batches (a dataset split, memory-mapped, or a raw file parsed as
it is read), each batch goes through the scorer on the chosen device, and its
probabilities are appended to the output .npy (serve/output.py). Memory is the
model, one batch, and 4 bytes of logit (plus 1 of label) per row kept for the
exact AUC, which needs every score at once.

The metrics are those of the training run's EVAL line (train/evaluate.py
`metrics`, on the float32 logits), so predict on the test split of the
dataset a run evaluated on prints the AUC and log loss of its last EVAL line.

A dataset split is scored only if its rows are laid out as the training rows
were: the same vocabulary, dense features and bags (bag sizes and padding ids,
meta.json's "bag_sizes" and "padding_ids"). Bags of other sizes would be
pooled at the wrong columns, silently, so they are refused.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from hetgmp.data.arrays import META_FILE, DatasetMeta, load_dataset
from hetgmp.errors import HetGMPError
from hetgmp.models import Bags
from hetgmp.serve.output import growing_npy
from hetgmp.serve.trained import Scorer, TrainedModel
from hetgmp.train.evaluate import metrics
from hetgmp.train.validate import check_rows


@dataclass
class Rows:
    """One batch of rows to score."""

    dense_NI: np.ndarray  # float32
    ids_NL: np.ndarray  # int64 global ids: one per field, or each field's bag (multi-hot)
    labels_N: np.ndarray | None  # float32 0/1, None for rows without labels


@dataclass
class Prediction:
    rows: int
    seconds: float
    metrics: dict[str, float] | None  # None when the rows have no labels


def check_output_folder(path: str | Path, flag: str = "--output") -> Path:
    """Refuse an output whose folder does not exist, before any work (nothing is created)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise HetGMPError(f"{flag} {path}: its folder {path.parent} does not exist: create it first (mkdir -p {path.parent}) "
                          "or write somewhere that exists")
    if path.is_dir():
        raise HetGMPError(f"{flag} {path} is a folder: give a file name, e.g. {path / 'preds.npy'}")
    return path


def split_batches(directory: str | Path, split: str, trained: TrainedModel, batch_rows: int) -> tuple[Iterator[Rows], int]:
    """Batches of a dataset split in row order, and its row count; refuses another vocabulary."""
    dataset = load_dataset(directory)
    meta = dataset.meta
    if not trained.same_vocabulary(meta.fields):
        raise HetGMPError(f"dataset {directory} has {meta.num_ids} ids in fields of {meta.fields}, but the checkpoint {trained.folder} "
                          f"was trained on {trained.num_ids} ids in fields of {trained.fields} (dataset {trained.meta.get('data')}): "
                          "score a dataset encoded with the training vocabulary (or raw rows: --input RAW --format criteo|avazu "
                          "--vocab TRAINING_DATASET)")
    if meta.num_dense != int(trained.meta["num_dense"]):
        raise HetGMPError(f"dataset {directory} has {meta.num_dense} dense features but the checkpoint's model takes "
                          f"{trained.meta['num_dense']}: score the kind of dataset the model was trained on")
    check_bags(Path(directory), meta, trained)
    rows = dataset.train if split == "train" else dataset.test

    def batches() -> Iterator[Rows]:
        for start in range(0, len(rows), batch_rows):
            part = slice(start, start + batch_rows)
            ids, labels = np.array(rows.sparse[part], np.int64), np.array(rows.labels[part], np.float32)  # copies: writable
            check_rows(Path(directory), split, meta, torch.from_numpy(ids), torch.from_numpy(labels))
            yield Rows(np.array(rows.dense[part], np.float32), ids, labels)

    return batches(), len(rows)


def check_bags(directory: Path, meta: DatasetMeta, trained: TrainedModel) -> None:
    """Refuse a dataset whose bags (sizes, padding ids) are not those the model was trained on."""
    sizes, padding = _bag_layout(Bags.of(meta), meta)
    trained_sizes, trained_padding = _bag_layout(trained.bags, meta)
    if sizes != trained_sizes:
        found = f"bag sizes {sizes}, but the checkpoint {trained.folder} was trained on bag sizes {trained_sizes}"
    elif padding != trained_padding:
        found = (f"the checkpoint's bag sizes but padding_ids {padding}, and the checkpoint {trained.folder} was trained "
                 f"with padding_ids {trained_padding}")
    else:
        return
    raise HetGMPError(f"{directory / META_FILE} has {found} (dataset {trained.meta.get('data')}): score a dataset whose bags are "
                      "the training data's (`hetgmp synth --multi-hot-sizes` or `hetgmp prepare table --multi-hot COLS "
                      "--bag-size COL=K` with the training data's sizes; without them for a one-hot model)")


def _bag_layout(bags: Bags | None, meta: DatasetMeta) -> tuple[list[int], list[int | None]]:
    """(bag sizes, local padding ids as meta.json writes them) of bags over this dataset's vocabulary."""
    if bags is None:
        return [1] * meta.num_fields, [None] * meta.num_fields
    return list(bags.sizes), [None if p < 0 else p - offset for p, offset in zip(bags.padding, meta.offsets)]


@torch.no_grad()
def predict(scorer: Scorer, batches: Iterable[Rows], output: str | Path, device: torch.device, bar: tqdm) -> Prediction:
    """Score every batch, write the probabilities to `output` (float32 .npy, row order), and the metrics."""
    began = time.perf_counter()
    logits: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    with growing_npy(output) as out:
        for batch in batches:
            dense = torch.from_numpy(batch.dense_NI).to(device, non_blocking=True)
            ids = torch.from_numpy(batch.ids_NL).to(device, non_blocking=True)
            logits_B = scorer.logits(dense, ids).float()
            out.append(torch.sigmoid(logits_B).cpu().numpy())
            logits.append(logits_B.cpu().numpy())
            if batch.labels_N is not None:
                labels.append(batch.labels_N.astype(np.int8))
            bar.update(len(batch.ids_NL))
        rows = out.rows
    result = metrics(np.concatenate(labels), np.concatenate(logits)) if labels and rows else None
    return Prediction(rows, time.perf_counter() - began, result)


def progress_bar(enabled: bool, total: int | None, unit: str) -> tqdm:
    return tqdm(total=total, unit=unit, unit_scale=True, file=sys.stderr, disable=not enabled, dynamic_ncols=True, mininterval=0.5)

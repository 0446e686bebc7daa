"""Resuming a checkpoint of P workers on P' workers: another plan, random placement or one worker.

A checkpoint's `rank-R.pt` holds that rank's primaries (ids ascending, values,
versions and, with row-wise Adagrad, accumulators; taken after a flush, so
every mirror's pending delta is in its owner's row) beside the dense state,
which is the same on every rank. A run with the checkpoint's worker count and
plan loads its own rank file: the resume is exact. Otherwise the rows are
re-placed by global id:

    saved, 2 workers           new placement, 3 workers: rank 1 owns ids [1, 4]
    rank-0.pt  ids [0, 3]      rank 1 reads rank-0.pt: takes nothing
    rank-1.pt  ids [1, 2, 4]   rank 1 reads rank-1.pt: takes ids 1 and 4

Every new rank reads the P saved files one at a time (one file and its own
rows in memory, never the P files at once) and keeps the rows its placement
gives it (`Placement.owner == rank`; every id on one worker). An id of its
own that no file holds, or that two files hold, stops the resume
(DamagedCheckpoint: the resume then tries the next older checkpoint). Mirrors
are not saved: the tables fetch each one from its owner at its next read. The
dense weights, the dense optimizer's state (Adam's moments) and the RNG states
are rank 0's.

Data order. The run resumes at the checkpoint's epoch position:

    new step = round(saved step * S' / S), at least 1

with S and S' the steps per epoch of the saved and the new run
(ceil(largest shard / batch), train/data.py). With the same batch per worker
S' is about S * P / P', so the samples seen are kept; with the same global
batch the step count barely moves. A checkpoint at an epoch's end resumes at
the next epoch's start, and `--epochs E` ends where the saved run would have
(`--iter N` counts the new run's steps). From there each worker draws its new
shard's batches (its plan part, or its contiguous shard) in the order of its
permutation for (seed, epoch, new rank), as a run of P' workers would.
Reproduced: every row, version and accumulator, the dense weights and
optimizer state, the epoch position. Not reproduced: which samples the rest of
the interrupted epoch visits (some of its rows are seen twice, others not at
all; every later epoch visits each row once), the uninterrupted run's batches
and global batch, and the mirrors' staleness (they restart fresh). Logs and
checkpoints count the new run's steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hetgmp.embedding import Placement
from hetgmp.errors import HetGMPError
from hetgmp.train import checkpoint as ckpt
from hetgmp.train.checkpoint import DamagedCheckpoint

if TYPE_CHECKING:  # the scorer (serve/trained.py) merges rank files without importing the trainer
    from hetgmp.train.setup import Run

ROW_KEYS = ("values", "versions", "accumulator")  # the per-row tensors of a table's state_dict, beside "ids"


def replaces_rows(saved: dict[str, Any], expected: dict[str, Any]) -> bool:
    """Whether a checkpoint (its meta.json `saved`) was placed otherwise than this run (`expected`)."""
    return saved.get("world_size") != expected["world_size"] or saved.get("plan") != expected["plan"]


def resume_state(run: Run, folder: Path, saved: dict[str, Any]) -> dict[str, Any]:
    """This rank's state to resume `run` from the checkpoint `folder` (whose meta.json is `saved`)."""
    if not replaces_rows(saved, run.checkpoint_meta()):
        return ckpt.load_rank_state(folder, run.ctx.rank)
    step = resume_step(folder, saved, run.steps_per_epoch)
    num_ids = int(saved["num_ids"])
    state = replaced_state(folder, int(saved["world_size"]), primary_ids(run.placement, run.ctx.rank, num_ids), num_ids)
    return {**state, "step": step}


def resume_step(folder: Path, saved: dict[str, Any], steps_per_epoch: int) -> int:
    """The step at the checkpoint's epoch position in a run of `steps_per_epoch` (module docstring)."""
    if "steps_per_epoch" not in saved:
        raise HetGMPError(
            f"checkpoint {folder} predates resuming on another number of workers or plan (its meta.json lacks steps_per_epoch): "
            f"resume it on {saved.get('world_size')} worker(s) with the plan it was written with ({saved.get('plan')})"
        )
    return max(1, round(int(saved["step"]) * steps_per_epoch / int(saved["steps_per_epoch"])))


def describe_resume(saved: dict[str, Any], run: Run) -> str:
    """How a resume placed its rows, for the start-up line after "resumed at step S"; "" for an exact resume."""
    if not replaces_rows(saved, run.checkpoint_meta()):
        return ""
    return (f" from a checkpoint of {_workers(saved['world_size'])} (plan {saved['plan']}) at its step {saved['step']}, "
            f"rows re-placed for {_workers(run.ctx.world_size)}")


def _workers(count: int) -> str:
    return f"{count} worker" + ("" if count == 1 else "s")


def primary_ids(placement: Placement | None, rank: int, num_ids: int) -> torch.Tensor:
    """The ids `rank` owns under `placement` (None: one worker, every id), ascending, as the tables hold them."""
    if placement is None:
        return torch.arange(num_ids)
    return torch.from_numpy(np.flatnonzero(placement.owner == rank).astype(np.int64))


def replaced_state(folder: Path, saved_world_size: int, wanted: torch.Tensor, num_ids: int) -> dict[str, Any]:
    """Rank 0's dense state and the rows of ids `wanted` (ascending) from the `saved_world_size`
    rank files of `folder`, read one at a time."""
    rows = RowAssembly(folder, wanted, num_ids)
    dense: dict[str, Any] = {}
    for saved_rank in range(saved_world_size):
        state = ckpt.load_rank_state(folder, saved_rank)
        if not isinstance(state, dict) or not isinstance(state.get("embedding"), dict):
            raise DamagedCheckpoint(f"{folder / f'rank-{saved_rank}.pt'} holds no embedding state: the checkpoint is damaged")
        rows.take(saved_rank, state.pop("embedding"))
        if saved_rank == 0:
            dense = state
    return {**dense, "embedding": rows.finish()}


class RowAssembly:
    """One new rank's rows, filled by global id from the saved rank files in turn."""

    def __init__(self, folder: Path, wanted: torch.Tensor, num_ids: int, keys: tuple[str, ...] = ROW_KEYS) -> None:
        """keys: the per-row tensors to keep (the embedding state's ROW_KEYS that it holds)."""
        self.folder, self.wanted, self.num_ids, self.keys = folder, wanted.long(), num_ids, keys
        self.source = torch.full((len(wanted),), -1, dtype=torch.int32)  # the saved rank each row came from
        self._lookup = torch.cat([self.wanted, torch.tensor([num_ids])])  # a sentinel past every id: searchsorted stays in range
        self.rows: dict[str, torch.Tensor] = {}

    def take(self, saved_rank: int, emb: dict[str, torch.Tensor]) -> None:
        """Copy the rows of wanted ids from one saved rank's embedding state."""
        path = self.folder / f"rank-{saved_rank}.pt"
        ids = self._checked_ids(path, emb)
        at = torch.searchsorted(self._lookup, ids)
        mine = self._lookup[at] == ids
        found, at = ids[mine], at[mine]
        again = self.source[at] >= 0
        if again.any():
            first = int(again.nonzero()[0, 0])
            raise DamagedCheckpoint(f"id {int(found[first])} has a row in both rank-{int(self.source[at[first]])}.pt and "
                                    f"rank-{saved_rank}.pt of {self.folder}: every id has one owner, whose file alone holds its row")
        self.source[at] = saved_rank
        for key in self.keys:
            if key in emb:
                self._rows_like(key, emb[key])[at] = emb[key][mine]

    def _checked_ids(self, path: Path, emb: dict[str, torch.Tensor]) -> torch.Tensor:
        """The file's ids, refused unless strictly ascending within the vocabulary, one per row, beside the per-row
        tensors of the files before it."""
        if "ids" not in emb or "values" not in emb:
            raise DamagedCheckpoint(f"{path} holds an embedding state without ids or values: the checkpoint is damaged")
        ids = emb["ids"].long()
        if len(ids) and (int(ids[0]) < 0 or int(ids[-1]) >= self.num_ids or not bool((ids[1:] > ids[:-1]).all())):
            raise DamagedCheckpoint(f"{path} holds ids that are not ascending within the vocabulary 0..{self.num_ids - 1} "
                                    "(each row the rank owns, once): the checkpoint is damaged")
        uneven = [key for key in ROW_KEYS if key in emb and len(emb[key]) != len(ids)]
        if uneven:
            raise DamagedCheckpoint(f"{path} holds {len(ids)} ids but {', '.join(f'{len(emb[k])} {k}' for k in uneven)}: the checkpoint is damaged")
        kinds = sorted(key for key in self.keys if key in emb)
        if self.rows and kinds != sorted(self.rows):
            raise DamagedCheckpoint(f"{path} holds {', '.join(kinds)} per row but the rank files before it {', '.join(sorted(self.rows))}: "
                                    "the folder mixes files of different runs")
        return ids

    def _rows_like(self, key: str, saved: torch.Tensor) -> torch.Tensor:
        if key not in self.rows:
            self.rows[key] = torch.zeros((len(self.wanted), *saved.shape[1:]), dtype=saved.dtype)
        elif self.rows[key].shape[1:] != saved.shape[1:]:
            raise DamagedCheckpoint(f"{self.folder} holds {key} of shape {tuple(saved.shape)} beside {tuple(self.rows[key].shape[1:])} per row "
                                    "in an earlier rank file: the folder mixes files of different runs")
        return self.rows[key]

    def finish(self) -> dict[str, torch.Tensor]:
        """The embedding state of the wanted ids; refused if a saved file left some of them out."""
        missing = self.wanted[self.source < 0]
        if len(missing):
            raise DamagedCheckpoint(f"{len(missing)} ids (e.g. {missing[:5].tolist()}) have a row in none of the rank files of "
                                    f"{self.folder}: the checkpoint is incomplete")
        return {"ids": self.wanted.clone(), **self.rows}

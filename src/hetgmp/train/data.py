"""Each worker's samples: loaded once into memory, then sliced into batches.

Worker r trains on the train rows the plan assigns it (`data_partition == r`),
or without a plan on the contiguous shard [r*N//P, (r+1)*N//P). Its rows are
read from disk once, onto the device when they fit, and every batch is an
index into them, so steps never touch the disk.

Order: epoch e visits the worker's rows in a permutation seeded by
(seed, e, rank). All workers take the same number of steps per epoch,
ceil(largest shard / batch), and every batch is full (fixed shapes): a
shard wraps around its permutation. Example: shard of 5 rows, batch 4,
largest shard 7 -> 2 steps per epoch; with permutation [3, 0, 4, 1, 2] the
batches are rows [3, 0, 4, 1] and [2, 3, 0, 4].

Evaluation splits the test rows into contiguous shards the same way; every
worker runs ceil(largest test shard / batch) batches, a worker with fewer
rows running one-row padding batches whose outputs are dropped.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from hetgmp.data.arrays import Split
from hetgmp.errors import HetGMPError

# Use at most this fraction of the free GPU memory for a worker's rows.
_DEVICE_SHARE = 0.4


@dataclass
class Batch:
    """One batch: dense (B, I) float32, ids (B, F) int64 global ids, labels (B,) float32."""

    dense: torch.Tensor
    ids: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in (self.dense, self.ids, self.labels)))

    def pin_memory(self) -> "Batch":
        return Batch(*(t.pin_memory() for t in (self.dense, self.ids, self.labels)))


def contiguous_shard(rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of worker `rank`'s contiguous shard: 10 rows, 3 workers -> (0,3), (3,6), (6,10)."""
    return rows * rank // world_size, rows * (rank + 1) // world_size


def _device_for_rows(nbytes: int, device: torch.device) -> torch.device:
    if device.type != "cuda":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    return device if nbytes <= _DEVICE_SHARE * free else torch.device("cpu")


class Rows:
    """A worker's rows held in memory: dense (n, I), ids (n, F) as stored, labels (n,)."""

    def __init__(self, split: Split, index: np.ndarray | slice, device: torch.device):
        # np.array copies: a slice of a memory-mapped array would stay tied to the file.
        dense = np.array(split.dense[index], dtype=np.float32)
        ids = np.array(split.sparse[index])
        labels = np.array(split.labels[index], dtype=np.float32)
        self.device = device
        home = _device_for_rows(dense.nbytes + ids.nbytes + labels.nbytes, device)
        self.dense, self.ids, self.labels = (torch.from_numpy(a).to(home) for a in (dense, ids, labels))
        if home.type == "cpu" and device.type == "cuda":
            self.dense, self.ids, self.labels = (t.pin_memory() for t in (self.dense, self.ids, self.labels))

    def __len__(self) -> int:
        return self.labels.shape[0]

    def take(self, idx: torch.Tensor) -> Batch:
        """Rows `idx` (on the rows' device) as a Batch on the training device, ids as int64."""
        idx = idx.to(self.labels.device)
        batch = Batch(self.dense[idx], self.ids[idx].long(), self.labels[idx])
        return batch.to(self.device, non_blocking=True)

    def take_into(self, idx: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        """Rows `idx` written into existing (dense, ids, labels) tensors: with the rows on the
        training device and matching dtypes, three index_selects and no new tensor."""
        idx = idx.to(self.labels.device)
        for src, dst in zip((self.dense, self.ids, self.labels), out):
            _select_into(src, idx, dst)

    def ids_into(self, idx: torch.Tensor, out: torch.Tensor) -> None:
        """The ids of rows `idx` written into an existing tensor (as take_into)."""
        _select_into(self.ids, idx.to(self.labels.device), out)


def _select_into(src: torch.Tensor, idx: torch.Tensor, dst: torch.Tensor) -> None:
    """dst = src[idx]: one index_select where devices and dtypes match, else a copy."""
    if src.device == dst.device and src.dtype == dst.dtype:
        torch.index_select(src, 0, idx, out=dst)
        return
    rows = src.index_select(0, idx)
    if rows.device.type == "cpu" and dst.device.type == "cuda":
        rows = rows.pin_memory()  # from pageable memory the copy would wait for the device
    dst.copy_(rows, non_blocking=True)


def train_rows(split: Split, data_partition: np.ndarray | None, rank: int, world_size: int, device: torch.device) -> Rows:
    """Load worker `rank`'s training rows (its plan part, or its contiguous shard)."""
    if data_partition is None:
        start, stop = contiguous_shard(len(split), rank, world_size)
        index: np.ndarray | slice = slice(start, stop)
    else:
        index = np.flatnonzero(data_partition == rank)
    rows = Rows(split, index, device)
    if len(rows) == 0:
        raise HetGMPError(
            f"worker {rank} of {world_size} has no training rows ({len(split)} rows in all): "
            "use fewer workers or a larger dataset, or re-run `hetgmp partition` for this dataset"
        )
    return rows


def shard_sizes(data_partition: np.ndarray | None, rows: int, world_size: int) -> list[int]:
    """Rows per worker, known to every worker without communication."""
    if data_partition is None:
        return [stop - start for start, stop in (contiguous_shard(rows, r, world_size) for r in range(world_size))]
    return np.bincount(data_partition, minlength=world_size)[:world_size].tolist()


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A seed drawn from (seed, epoch, rank), independent across the three."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0] >> 1)


class EpochOrders:
    """Each epoch's permutation of a worker's rows, on the rows' device.

    Drawn on the CPU (the same order whatever the device), one epoch ahead on
    a helper thread: a randperm of 40M rows takes seconds, about as long as an
    epoch of the fast step, and would stall it at every epoch's start. On CUDA
    the permutation is pinned, so its copy to the device waits for nothing.
    """

    def __init__(self, rows: int, seed: int, rank: int, device: torch.device, epochs: int | None = None):
        self.rows, self.seed, self.rank, self.device, self.epochs = rows, seed, rank, device, epochs
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="epoch-order")
        self._ahead: tuple[int, Future] | None = None

    def get(self, epoch: int) -> torch.Tensor:
        """Epoch `epoch`'s permutation; starts drawing the next one (if the run has one)."""
        ahead, self._ahead = self._ahead, None
        perm = ahead[1].result() if ahead and ahead[0] == epoch else self._draw(epoch)
        if self.epochs is None or epoch + 1 < self.epochs:
            self._ahead = (epoch + 1, self._pool.submit(self._draw, epoch + 1))
        return perm.to(self.device, non_blocking=True)

    def _draw(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, self.rank))
        perm = torch.randperm(self.rows, generator=gen)
        return perm.pin_memory() if self.device.type == "cuda" else perm


class BatchStream:
    """Batch number `step` (counted from 0 over the whole run) of one worker; see the module doc.

    `total_steps` (if known) spares drawing an epoch order the run never reaches."""

    def __init__(self, rows: Rows, batch_size: int, steps_per_epoch: int, seed: int, rank: int, total_steps: int | None = None):
        self.rows, self.batch_size, self.steps_per_epoch = rows, batch_size, steps_per_epoch
        epochs = None if total_steps is None else -(-total_steps // steps_per_epoch)
        self._orders = EpochOrders(len(rows), seed, rank, rows.labels.device, epochs)
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)
        self._offsets = torch.arange(batch_size, device=rows.labels.device)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def batch(self, step: int) -> Batch:
        return self.rows.take(self.indices(step))

    def batch_into(self, step: int, out: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        """Batch `step` written into existing (dense, ids, labels) tensors (a captured step's inputs)."""
        self.rows.take_into(self.indices(step), out)

    def ids(self, step: int) -> torch.Tensor:
        """Batch `step`'s ids as stored, on the rows' device (no dense features or labels gathered)."""
        return self.rows.ids[self.indices(step)]

    def ids_into(self, step: int, out: torch.Tensor) -> None:
        """Batch `step`'s ids written into an existing tensor (a captured step's next ids)."""
        self.rows.ids_into(self.indices(step), out)

    @property
    def epochs(self) -> int | None:
        """Epochs the run reaches, None if unknown."""
        return self._orders.epochs

    def order(self, epoch: int) -> torch.Tensor:
        """Epoch `epoch`'s permutation of the rows, on the rows' device (epochs are asked for in order)."""
        if epoch != self._epoch:
            self._perm = self._orders.get(epoch)
            self._epoch = epoch
        return self._perm

    def indices(self, step: int) -> torch.Tensor:
        """Rows of batch `step`, on the rows' device (always batch_size of them)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        self.order(epoch)
        start = i * self.batch_size
        if start + self.batch_size <= len(self.rows):
            return self._perm[start: start + self.batch_size]  # a view: no kernel to launch
        return self._perm[(start + self._offsets) % len(self.rows)]  # the epoch's last batch wraps


def steps_per_epoch(sizes: list[int], batch_size: int) -> int:
    return -(-max(sizes) // batch_size)


class EvalBatches:
    """This worker's test shard in batches, padded to the same count on every worker."""

    def __init__(self, split: Split, rank: int, world_size: int, batch_size: int, device: torch.device):
        start, stop = contiguous_shard(len(split), rank, world_size)
        self.rows = Rows(split, slice(start, stop), device)
        if len(self.rows) == 0:
            raise HetGMPError(
                f"worker {rank} of {world_size} gets no test rows ({len(split)} in all): "
                "evaluation needs at least one test row per worker; drop --val or use fewer workers"
            )
        largest = max(b - a for a, b in (contiguous_shard(len(split), r, world_size) for r in range(world_size)))
        self.num_batches = -(-largest // batch_size)
        self.batch_size = batch_size

    def __iter__(self):
        """Yield (batch, valid rows); padding batches hold one row and 0 valid rows."""
        n = len(self.rows)
        device = self.rows.labels.device
        for i in range(self.num_batches):
            start, stop = i * self.batch_size, min((i + 1) * self.batch_size, n)
            if start >= n:
                yield self.rows.take(torch.zeros(1, dtype=torch.long, device=device)), 0
            else:
                yield self.rows.take(torch.arange(start, stop, device=device)), stop - start

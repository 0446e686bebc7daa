"""The single-worker table: the reference every sharded run is held to.

One (E, D) table on the device, a version (update count) per row and, for
row-wise Adagrad, an accumulator per row. Same interface as ShardedTable (fixed/table.py).
"""

from __future__ import annotations

import torch

from hetgmp.embedding.batch import BatchRows
from hetgmp.embedding.config import EmbeddingConfig, check_state_dict
from hetgmp.embedding.counters import StepCounters
from hetgmp.embedding.init import initial_rows
from hetgmp.embedding.memory import check_memory, memory_bytes
from hetgmp.embedding.optim import row_update
from hetgmp.errors import HetGMPError


class LocalEmbedding:
    """A plain embedding table trained by the folded sparse optimizer."""

    def __init__(self, config: EmbeddingConfig, device: torch.device) -> None:
        check_memory(config, 1, config.num_ids, 0, device)
        self.config = config
        self.device = device
        self.table = initial_rows(torch.arange(config.num_ids), config, device)
        self.version = torch.zeros(config.num_ids, dtype=torch.int64, device=device)
        self.acc = torch.full((config.num_ids,), config.adagrad_init, device=device) if config.adagrad else None
        self.counters = StepCounters()
        self.totals = StepCounters()
        self._current = StepCounters()
        self._last: BatchRows | None = None

    def _batch(self, ids: torch.Tensor) -> BatchRows:
        batch = BatchRows.of(ids, self.device, self.config.num_ids)
        batch.rows_UD = self.table[batch.uids_U]
        return batch

    def __call__(self, ids_BF: torch.Tensor) -> torch.Tensor:
        """(ids.shape, D) rows for training; the next step() applies their gradient."""
        batch = self._batch(ids_BF)
        n = len(batch.uids_U)
        self._current.add(StepCounters(distinct_ids=n, local_hits=n))
        self._last = batch
        return batch.output(requires_grad=True)

    @torch.no_grad()
    def read(self, ids_BF: torch.Tensor) -> torch.Tensor:
        """Current rows, without gradient (evaluation)."""
        return self._batch(ids_BF).output(requires_grad=False)

    @torch.no_grad()
    def step(self, next_ids: torch.Tensor | None = None) -> None:
        """Apply the gradient of the last forward. `next_ids` needs no prefetch on one worker."""
        batch, self._last = self._last, None
        grad = batch.gradient() if batch is not None else None
        if grad is not None:
            grad_UD, counts_U = grad
            acc_U = self.acc[batch.uids_U] if self.acc is not None else None
            delta_UD, acc_delta_U = row_update(grad_UD, acc_U, self.config)
            self.table.index_add_(0, batch.uids_U, delta_UD)
            if acc_delta_U is not None:
                self.acc.index_add_(0, batch.uids_U, acc_delta_U)
            self.version.index_add_(0, batch.uids_U, counts_U)
        self.counters, self._current = self._current, StepCounters()
        self.totals.add(self.counters)

    def flush(self) -> None:
        """Nothing is pending on one worker."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every row: ids, values, versions and (row-wise Adagrad) accumulators."""
        sd = {"ids": torch.arange(self.config.num_ids, device=self.device), "values": self.table.clone(), "versions": self.version.clone()}
        if self.acc is not None:
            sd["accumulator"] = self.acc.clone()
        return sd

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        check_state_dict(sd, self.config)
        ids = sd["ids"].to(self.device)
        if len(ids) != self.config.num_ids or not torch.equal(ids, torch.arange(self.config.num_ids, device=self.device)):
            raise HetGMPError(
                f"the checkpoint holds {len(ids)} rows but this single-worker table has {self.config.num_ids}: "
                "load a checkpoint written by a single-worker run of the same dataset"
            )
        self.table.copy_(sd["values"])
        self.version.copy_(sd["versions"])
        if self.acc is not None:
            self.acc.copy_(sd["accumulator"])

    def gather_table(self) -> torch.Tensor:
        """The whole (E, D) table (a copy)."""
        return self.table.clone()

    def memory_bytes_per_worker(self) -> int:
        return memory_bytes(self.config, 1, self.config.num_ids, 0)

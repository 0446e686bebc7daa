"""What the stages of an exchange round need to know of this worker."""

from __future__ import annotations

from dataclasses import dataclass

from hetgmp.embedding.config import EmbeddingConfig
from hetgmp.embedding.store import RowStore


@dataclass(frozen=True)
class Shard:
    store: RowStore
    config: EmbeddingConfig
    rank: int
    world: int

    @property
    def acc_cols(self) -> list[int]:
        """Float columns a record carries after the row: one accumulator with row-wise Adagrad."""
        return [1] if self.config.adagrad else []

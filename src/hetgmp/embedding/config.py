"""Configuration of an embedding table and of its sparse optimizer."""

from __future__ import annotations

from dataclasses import dataclass

from hetgmp.choices import SPARSE_OPTIMIZERS as OPTIMIZERS
from hetgmp.errors import HetGMPError


@dataclass
class EmbeddingConfig:
    """One embedding table: its size, its initial values and its optimizer.

    num_ids:      E, the whole vocabulary (ids are 0 .. E-1).
    dim:          D, the width of a row (DeepFM asks for d + 1).
    optimizer:    "sgd" (delta = -lr * g) or "rowwise_adagrad" (one accumulator
                  per row: acc += mean(g^2); delta = -lr * g / (sqrt(acc) + eps)).
    lr:           learning rate of the sparse optimizer.
    bound:        staleness bound in updates; 0 = synchronous (BSP).
    init_std:     rows start N(0, init_std), identical for any world size.
    seed:         seed of the initial rows.
    adagrad_eps, adagrad_init: epsilon and initial accumulator of row-wise Adagrad.
    ids_per_batch: B x F of one local batch; only sizes the exchange buffers in
                  the memory check (0 leaves them out).
    """

    num_ids: int
    dim: int
    optimizer: str = "sgd"
    lr: float = 0.01
    bound: int = 0
    init_std: float = 0.01
    seed: int = 0
    adagrad_eps: float = 1e-8
    adagrad_init: float = 0.0
    ids_per_batch: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise HetGMPError(f"embedding optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}")
        if self.num_ids < 1 or self.dim < 1:
            raise HetGMPError(f"an embedding table needs num_ids >= 1 and dim >= 1, got num_ids={self.num_ids}, dim={self.dim}")
        if self.bound < 0:
            raise HetGMPError(f"the staleness bound must be >= 0 (0 = synchronous), got {self.bound}")

    @property
    def adagrad(self) -> bool:
        return self.optimizer == "rowwise_adagrad"


def check_state_dict(sd: dict, config: EmbeddingConfig) -> None:
    """Refuse an embedding state written for another optimizer or row width, naming the difference."""
    need = ["ids", "values", "versions"] + (["accumulator"] if config.adagrad else [])
    missing = [k for k in need if k not in sd]
    if missing:
        raise HetGMPError(
            f"the checkpoint's embedding state lacks {', '.join(missing)} (this table uses optimizer {config.optimizer}): "
            "resume with the --sparse-optimizer the checkpoint was written with"
        )
    if sd["values"].dim() != 2 or sd["values"].shape[1] != config.dim:
        raise HetGMPError(
            f"the checkpoint's embedding rows are {tuple(sd['values'].shape)} but this table is {config.dim} wide: "
            "resume with the --embed-dim and --model the checkpoint was written with"
        )

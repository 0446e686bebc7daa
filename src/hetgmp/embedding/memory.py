"""Memory needed per worker, checked before anything large is allocated.

With E ids, D columns, P workers, S = Np + M stored rows on this worker (Np
primaries, M mirrors), U = ids_per_batch (B x F) and a = 1 for row-wise
Adagrad (0 for SGD), in bytes:

    maps      E x (o + 4)                 owner (o = 2 bytes below 32768 workers, else 4) + slot (int32)
    rows      S x (4D + 8 + 8 + 4a)       value, version, stored id, accumulator
    mirrors   M x (4D + 8 + 4a)           a mirror's base (its row and accumulator as of its last
                                          exchange with the owner) and unpushed count
    exchange  4 x U x P x (2(4 + D + a) + 4) + 8 x U x D
              worst-case words of one round (every id pushed and requested,
              every worker sending to this one, answered in full), plus the
              batch's rows and their gradient
    init      4 x 65536 x D               one chunk of initial rows being drawn

Worked example: E = 33,762,577 (Criteo), D = 128, P = 8, SGD, random owners
(Np = E/8, M = 0), U = 8192 x 26: maps 203 MB, rows 2.2 GB, exchange 2.0 GB
(worst case), total about 4.5 GB per worker.

A single-worker table has no maps, no pending state and no exchange (S = E).

The batch itself, per sample of F fields holding L ids (L = F one-hot, the
sum of the bag sizes multi-hot), I dense features, rows D wide, in bytes
(`batch_bytes`, checked before the model is built), with H the model's layer
width (`hetgmp.models.model_size`: the floats per sample its layers write; 768,
the three 256-wide layers, when not given) and P its parameters:

    ids       16 L                        the batch's ids and the next batch's (int64)
    inputs    8 (I + 1)                   dense features and label
    rows      12 L D                      the rows read, their gradient, a sum
    model     24 (F D + I + H)            activations and gradients: six fp32 copies of the
                                          (pooled) input and of the layers' outputs (an allowance)
plus, once a batch, 16 P: weights, their gradient, slack for the optimizer.

Worked example: Criteo (F = 26, I = 13), D = 16: 34 kB a sample, 282 MB for a
batch of 8192, 342 GB for a batch of 10 million. MLPerf's DCNv2 at D = 128
(H = 29,441, P = 16.0M): 827 kB a sample, 7.0 GB for a batch of 8192 (257 MB of it the weights).
"""

from __future__ import annotations

import torch

from hetgmp.embedding.config import EmbeddingConfig
from hetgmp.embedding.init import CHUNK_IDS
from hetgmp.errors import HetGMPError


def memory_bytes(config: EmbeddingConfig, world_size: int, num_primaries: int, num_mirrors: int) -> int:
    """The formula above, for one worker."""
    dim, adagrad, ids = config.dim, int(config.adagrad), config.ids_per_batch
    stored = num_primaries + num_mirrors
    maps = 0 if world_size == 1 else config.num_ids * ((2 if world_size <= 32767 else 4) + 4)
    rows = stored * (4 * dim + 16 + 4 * adagrad)
    pending = num_mirrors * (4 * dim + 8 + 4 * adagrad)
    record = 4 + dim + adagrad  # words of a push or an answer: two int64 + the row (+ accumulator)
    exchange = 0 if world_size == 1 else 4 * ids * world_size * (2 * record + 4) + 8 * ids * dim
    return maps + rows + pending + exchange + 4 * CHUNK_IDS * dim


def available_bytes(device: torch.device) -> int:
    """Free memory of the device: GPU free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise HetGMPError("cannot read MemAvailable from /proc/meminfo to check the embedding table's memory")


HIDDEN = 3 * 256  # the deep part's widths (SPEC section 4), HET-GMP's three models


def batch_bytes(batch: int, num_fields: int, num_dense: int, dim: int, layer_width: int = HIDDEN, num_params: int = 0,
                columns: int | None = None) -> int:
    """The batch formula above: bytes one step of `batch` samples holds (columns: L, default F)."""
    ids = num_fields if columns is None else columns
    per_sample = 16 * ids + 8 * (num_dense + 1) + 12 * ids * dim + 24 * (num_fields * dim + num_dense + layer_width)
    return batch * per_sample + 16 * num_params


def check_batch_memory(batch: int, num_fields: int, num_dense: int, dim: int, device: torch.device,
                       layer_width: int = HIDDEN, num_params: int = 0, columns: int | None = None) -> int:
    """Raise HetGMPError before allocating when a step of `batch` samples cannot fit in free memory
    (layer_width and num_params: `hetgmp.models.model_size` of the model to train; columns: ids per sample)."""
    need, free = batch_bytes(batch, num_fields, num_dense, dim, layer_width, num_params, columns), available_bytes(device)
    if need > free:
        per_sample = batch_bytes(1, num_fields, num_dense, dim, layer_width, columns=columns)
        gib, fits = 1 << 30, max(0, free - 16 * num_params) // per_sample
        ids = num_fields if columns is None else columns
        raise HetGMPError(
            f"--batch-size {batch:,} needs about {need / gib:.1f} GiB per worker on {device} ({per_sample:,} bytes a sample: "
            f"{ids} ids, {num_dense} dense features, {ids} rows of {dim} and the model's activations) but only "
            f"{free / gib:.1f} GiB is free: use --batch-size {fits:,} or less (leaving room for the table: less still), or more workers"
        )
    return need


def check_memory(config: EmbeddingConfig, world_size: int, num_primaries: int, num_mirrors: int, device: torch.device) -> int:
    """Raise HetGMPError before allocating when the formula exceeds free memory; return the bytes needed."""
    need = memory_bytes(config, world_size, num_primaries, num_mirrors)
    free = available_bytes(device)
    if need > free:
        gib = 1 << 30
        raise HetGMPError(
            f"the embedding table needs {need / gib:.2f} GiB per worker on {device} but only {free / gib:.2f} GiB is free "
            f"(E={config.num_ids} ids, D={config.dim}, {world_size} workers, {num_primaries} primaries + {num_mirrors} mirrors "
            f"on this worker, {config.ids_per_batch} ids per batch): use more workers (fewer ids per worker), a smaller "
            "--embed-dim, a lower --store-rate or a smaller --batch-size"
        )
    return need

"""Deterministic initial rows, identical whatever the world size and placement.

Ids are cut into chunks of CHUNK_IDS consecutive ids; chunk k is drawn as one
(CHUNK_IDS, D) block of N(0, init_std) from its own generator, seeded from
(seed, k) through numpy's SeedSequence. A worker draws only the chunks that
hold ids it stores and keeps the rows it needs, so row e has the same value on
every worker that stores it and in a single-worker table.

    CHUNK_IDS = 65536, ids = [3, 70000]
    -> chunk 0 (ids 0..65535) gives row 3, chunk 1 (ids 65536..131071) gives
       row 70000 as its row 4464.

Values are drawn on the table's device: identical across world sizes and
placements on one device type (CPU and CUDA generators differ).
"""

from __future__ import annotations

import numpy as np
import torch

from hetgmp.embedding.config import EmbeddingConfig

CHUNK_IDS = 1 << 16


def chunk_seed(seed: int, chunk: int) -> int:
    """A 63-bit generator seed for chunk `chunk` of a table seeded with `seed`."""
    state = np.random.SeedSequence([seed, chunk]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & ((1 << 63) - 1)


def initial_rows(ids: torch.Tensor, config: EmbeddingConfig, device: torch.device) -> torch.Tensor:
    """Initial values of `ids` (any order, int64 [N]) as float32 [N, D] on `device`."""
    ids = ids.to(device=device, dtype=torch.int64)
    out = torch.empty(len(ids), config.dim, dtype=torch.float32, device=device)
    if len(ids) == 0:
        return out
    # Sorting groups the ids of one chunk together: one pass over the ids, then
    # one draw per chunk (a per-chunk mask would cost E x chunks).
    sorted_ids, order = torch.sort(ids)
    chunks, per_chunk = torch.unique_consecutive(torch.div(sorted_ids, CHUNK_IDS, rounding_mode="floor"), return_counts=True)
    gen = torch.Generator(device=device)
    start = 0
    for chunk, count in zip(chunks.tolist(), per_chunk.tolist()):
        gen.manual_seed(chunk_seed(config.seed, chunk))
        block = torch.randn(CHUNK_IDS, config.dim, generator=gen, device=device)
        where = order[start : start + count]
        out[where] = block[sorted_ids[start : start + count] - chunk * CHUNK_IDS] * config.init_std
        start += count
    return out

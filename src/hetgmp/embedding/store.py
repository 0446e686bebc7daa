"""The rows one worker stores: its primaries, then its mirrors.

    E = 6, P = 2, rank 0; owner = [0, 1, 1, 0, 1, 0]; rank 0 mirrors [4]
    primaries = ids [0, 3, 5] -> slots 0, 1, 2;  mirrors = [4] -> slot 3
    slot  = [0, -1, -1, 1, 3, 2]     (int32 [E]; -1: not stored here)
    rows[S, D], version[S], ids[S] = [0, 3, 5, 4], acc[S] (row-wise Adagrad)
    pending_count[M + 1] for the M mirrors (mirror slot s <-> pending index s - Np): the
      updates a mirror has applied and not yet pushed (fixed/rows.py keeps the delta)

A primary's version counts the updates applied to it (sample occurrences). A
mirror's version is the primary's version when it was last refreshed plus the
counts it has pushed since: primary_version - mirror_version is then exactly
the number of other workers' updates the mirror has not seen.

One more row follows the stored ones, the sink (slot S = Np + M, pending
index M): the step masks writes to it instead of compacting its index lists,
which would make the host wait for the device to learn their lengths. It
belongs to no id and nothing reads it back, except pending_count[M], which stays 0.
`spare` more rows (and versions) follow the sink: the sharded table keeps
the rows it fetched there (fixed/rows.py).
"""

from __future__ import annotations

import numpy as np
import torch

from hetgmp.embedding.config import EmbeddingConfig
from hetgmp.embedding.init import initial_rows
from hetgmp.embedding.memory import check_memory
from hetgmp.embedding.placement import Placement, owner_dtype

_TORCH_OWNER = {np.dtype(np.int16): torch.int16, np.dtype(np.int32): torch.int32}


class RowStore:
    def __init__(self, config: EmbeddingConfig, placement: Placement, rank: int, device: torch.device, spare: int = 0) -> None:
        world = placement.world_size
        num_primaries = int(np.count_nonzero(placement.owner == rank))
        mirror_ids = torch.from_numpy(np.asarray(placement.mirrors[rank], dtype=np.int64)).to(device)
        check_memory(config, world, num_primaries, len(mirror_ids), device)
        dtype = owner_dtype(world)
        self.owner = torch.from_numpy(np.ascontiguousarray(placement.owner, dtype=dtype)).to(device)
        primary_ids = torch.nonzero(self.owner == rank).squeeze(1)
        self.num_primaries, self.num_mirrors = len(primary_ids), len(mirror_ids)
        self.ids = torch.cat([primary_ids, mirror_ids])
        self.slot = torch.full((config.num_ids,), -1, dtype=torch.int32, device=device)
        self.slot[self.ids] = torch.arange(len(self.ids), dtype=torch.int32, device=device)
        self.sink, self.spare = len(self.ids), spare
        sinks = 1 + spare
        self.rows = torch.cat([initial_rows(self.ids, config, device), torch.zeros(sinks, config.dim, device=device)])
        self.version = torch.zeros(self.sink + sinks, dtype=torch.int64, device=device)
        self.acc = torch.full((self.sink + sinks,), config.adagrad_init, device=device) if config.adagrad else None
        self.pending_count = torch.zeros(self.num_mirrors + 1, dtype=torch.int64, device=device)

    def resize_spare(self, spare: int) -> None:
        """`spare` rows after the sink instead (zeros): the sharded table's staging rows, when it grows."""
        keep = self.sink + 1
        self.rows = torch.cat([self.rows[:keep], self.rows.new_zeros(spare, self.rows.shape[1])])
        self.version = torch.cat([self.version[:keep], self.version.new_zeros(spare)])
        if self.acc is not None:
            self.acc = torch.cat([self.acc[:keep], self.acc.new_zeros(spare)])
        self.spare = spare

    def locate(self, ids_N: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(owner rank, slot or -1) of each id, both int64."""
        return self.owner[ids_N].long(), self.slot[ids_N].long()

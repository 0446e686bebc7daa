"""A stable sort by a small key, and how many entries hold each key, without the host.

The stages of a round classify rows by a key in [0, K) with K about 2P + 2
(see writes.py, reads.py, owner.py); sorting the key in the narrowest integer
type that holds it matters on a GPU, whose radix sort makes one pass per byte.

    key = [2, 0, 2, 1], K = 3  ->  order = [1, 3, 0, 2], counts = [1, 1, 2]
"""

from __future__ import annotations

import torch


def sort_by_key(key_N: torch.Tensor, num_keys: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(stable order of the entries by key, int64 [num_keys] entries per key)."""
    order = torch.argsort(key_N.to(_narrowest(num_keys)), stable=True)
    counts = torch.zeros(num_keys, dtype=torch.int64, device=key_N.device).index_add_(0, key_N, torch.ones_like(key_N))
    return order, counts


def _narrowest(num_keys: int) -> torch.dtype:
    for dtype in (torch.uint8, torch.int16, torch.int32):
        if num_keys - 1 <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64

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
    dtype = _narrowest(num_keys + 1)
    sorted_keys, order = torch.sort(key_N.to(dtype), stable=True)
    return order, segment_sizes(sorted_keys, torch.arange(num_keys + 1, dtype=dtype, device=key_N.device))


def segment_sizes(sorted_N: torch.Tensor, values_K1: torch.Tensor) -> torch.Tensor:
    """How many of the sorted entries equal each of values_K1[:-1] (ascending, consecutive):
    binary searches, where counting by index_add_ would pile atomics onto the few keys."""
    starts = torch.searchsorted(sorted_N, values_K1)
    return starts[1:] - starts[:-1]


def _narrowest(num_values: int) -> torch.dtype:
    """The narrowest integer type that holds 0 .. num_values - 1."""
    for dtype in (torch.uint8, torch.int16, torch.int32):
        if num_values - 1 <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64

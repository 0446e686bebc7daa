"""Fixed-shape unique ids, per-peer request slots, and the exchange capacity C.

The sharded fast step sends each peer a block of exactly C records a round,
so every collective has equal split sizes and the step never asks the host
for a size. A batch's unique ids are found by one sort and kept at the
batch's length N (the padding marked invalid); each unique id owned by a peer
gets its slot in that peer's block from a running count per owner:

    ids_N     = [9, 5, 9, 2, 7]                   rank 0, owner = {2: 1, 5: 0, 7: 1, 9: 1}
    uids_N    = [2, 5, 7, 9, 0]    valid = [T, T, T, T, F]    counts = [1, 1, 1, 2, 0]
    inverse_N = [3, 1, 3, 0, 2]    (ids_N == uids_N[inverse_N])
    remote    = [T, F, T, T, F]    peer slot = [0, -, 1, 2, -]   per peer = [0, 3]

C must hold the largest per-peer count of any step on any worker, and U
(the per-id tensors' length, if cut: `UniqueIds.first`) its largest count of
distinct ids: `find_capacities` measures both over the batches a run will
train on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist

from hetgmp.kernels.gather import sort_ids

CAPACITY_MULTIPLE = 256  # C is rounded up to this: room for batches a little busier than the measured ones


@dataclass
class UniqueIds:
    """A batch's distinct ids at fixed length N (see the module docstring)."""

    uids_N: torch.Tensor     # int64 [N]: distinct ids, ascending, then 0s
    valid_N: torch.Tensor    # bool [N]: True for the distinct ids
    counts_N: torch.Tensor   # int64 [N]: occurrences of each distinct id (0 in the padding)
    inverse_N: torch.Tensor  # int64 [N]: position of each batch id among uids_N
    order: tuple[torch.Tensor, torch.Tensor]  # (inverse_N sorted, the sort's permutation): the
                                              # fused update's sort, shared (kernels.gather)
    distinct: torch.Tensor   # int64 [1]: how many distinct ids the batch holds

    def first(self, k: int) -> UniqueIds:
        """The first k distinct ids (a batch holds far fewer distinct ids than ids: every per-id
        pass then works on k rows, not N). The per-id tensors are cut to k; were there more,
        the batch positions of the others point at slot k - 1 (wrong rows: the step flags it)."""
        if k >= len(self.uids_N):
            return self
        last = k - 1
        inverse_N, (sorted_N, perm_N) = self.inverse_N.clamp(max=last), self.order
        return UniqueIds(self.uids_N[:k], self.valid_N[:k], self.counts_N[:k], inverse_N, (sorted_N.clamp(max=last), perm_N), self.distinct)


def unique_ids(ids_N: torch.Tensor, num_ids: int) -> UniqueIds:
    """One sort, no unique()/nonzero(): every output has the batch's length (the runs of the
    sorted ids, as the fused update finds them).

    Each run's first position and length come from searchsorted on the ascending run numbers,
    and the distinct ids are read there: a scatter of every occurrence to its run (or an
    index_add_ of ones) would aim all of a hot id's thousands of occurrences at one address,
    and on a GPU writes to one address queue behind each other."""
    sorted_N, perm_N = sort_ids(ids_N, num_ids)
    n = len(sorted_N)
    starts_N = torch.zeros(n, dtype=torch.int64, device=sorted_N.device)
    torch.ne(sorted_N[1:], sorted_N[:-1], out=starts_N[1:])
    seg_N = torch.cumsum(starts_N, 0)  # run number of each sorted position, ascending
    runs_N = torch.arange(n, device=seg_N.device)
    first_N = torch.searchsorted(seg_N, runs_N)
    counts_N = torch.searchsorted(seg_N, runs_N, right=True) - first_N
    distinct = seg_N[-1:] + 1
    valid_N = runs_N < distinct
    uids_N = torch.where(valid_N, sorted_N[first_N.clamp(max=n - 1)].long(), 0)
    inverse_N = torch.empty_like(seg_N).scatter_(0, perm_N.long(), seg_N)
    return UniqueIds(uids_N, valid_N, counts_N, inverse_N, (seg_N, perm_N), distinct)


def peer_slots(owner_N: torch.Tensor, remote_N: torch.Tensor, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(slot of each remote id in its owner's block, int64 [N]; remote ids per peer, int64 [P]).

    A running count per owner over a [P, N] one-hot, as ONE scan of its P N
    elements (rows laid end to end, each row's count then taken relative to
    the total before it): a cumsum along dim 0 of [N, P] runs a scan per
    column, P threads walking N rows (20 ms on an H100 at N = 212,992)."""
    peers_P = torch.arange(world, device=owner_N.device)
    onehot_PN = (remote_N.unsqueeze(0) & (owner_N.unsqueeze(0) == peers_P.unsqueeze(1))).long()
    running_PN = torch.cumsum(onehot_PN.reshape(-1), 0).reshape(world, -1)
    before_P = torch.cat([running_PN.new_zeros(1), running_PN[:-1, -1]])
    running_PN = running_PN - before_P.unsqueeze(1)
    slot_N = running_PN.gather(0, owner_N.clamp(0, world - 1).unsqueeze(0)).squeeze(0) - 1
    return slot_N, running_PN[:, -1]


def remote_per_peer(ids_BF: torch.Tensor, owner_E: torch.Tensor, rank: int, world: int, num_ids: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(int64 [P]: distinct ids of the batch owned by each other worker (0 for `rank` itself),
    int64 [1]: distinct ids of the batch)."""
    u = unique_ids(ids_BF.reshape(-1), num_ids)
    owner_N = owner_E[u.uids_N].long()
    remote_N = u.valid_N & (owner_N != rank)
    per_peer = (remote_N.unsqueeze(1) & (owner_N.unsqueeze(1) == torch.arange(world, device=owner_N.device))).sum(0)
    return per_peer, u.distinct


def round_up(count: int, multiple: int = CAPACITY_MULTIPLE) -> int:
    """The smallest positive multiple of `multiple` that is >= count."""
    return max(multiple, -(-count // multiple) * multiple)


def find_capacities(batches: Iterable[torch.Tensor], owner_E: torch.Tensor, rank: int, world: int,
                    multiple: int = CAPACITY_MULTIPLE, group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    """(C, U) for the sharded fast step, over this worker's `batches` (ids_BF each, on the device),
    maxed over workers, rounded up to `multiple`: C the largest per-peer count of distinct remote
    ids in a batch, U the largest count of distinct ids in a batch.

    Device work per batch, one host read at the end; a collective when world > 1
    (every worker must pass its own batches and get the same C and U)."""
    most = torch.zeros(2, dtype=torch.int64, device=owner_E.device)
    for ids_BF in batches:
        per_peer, distinct = remote_per_peer(ids_BF.to(owner_E.device), owner_E, rank, world, len(owner_E))
        most = torch.maximum(most, torch.cat([per_peer.max().reshape(1), distinct]))
    if world > 1:
        dist.all_reduce(most, op=dist.ReduceOp.MAX, group=group)
    peer, distinct = most.tolist()
    return round_up(peer, multiple), round_up(distinct, multiple)

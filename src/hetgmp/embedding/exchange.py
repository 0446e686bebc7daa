"""Records, buffers and the all_to_all_single rounds between workers.

Every message is a matrix of 4-byte words, one record per row, so one
`all_to_all_single` of int32 moves ids, versions and float rows together on
NCCL and Gloo alike. An int64 takes two words; a float32 row of D takes D:

    request  [id, version]                       4 words   (version -1: must fetch)
    push     [id, count, row (D), acc? (1)]      4 + D + a words
    answer   [position, version, row, acc?]      4 + D + a words

A round sends K kinds of records. The send buffer holds, for each destination
in rank order, its records of kind 0, then kind 1, ... (each kind sorted by
destination beforehand). With P = 2, K = 2, rank 0 sending 1 record of kind 0
and 2 of kind 1 (widths 4 and 6) to rank 1:

    send counts [[0, 0], [1, 2]]  -> split sizes in words [0, 1*4 + 2*6 = 16]

The counts travel first, in a small all_to_all whose result the host reads
(a device-to-host sync: split sizes live on the host); the words follow.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

Group = dist.ProcessGroup | None  # None: the default group

WORD = torch.int32
MUST_FETCH = -1  # the version a request carries for a row the reader does not hold


def to_record(ints: list[torch.Tensor], floats: list[torch.Tensor]) -> torch.Tensor:
    """int64 [N] columns and float32 [N, k] (or [N]) blocks -> int32 words [N, W] (a bitwise view)."""
    n = len(ints[0])
    parts = [c.to(torch.int64).contiguous().view(WORD).reshape(n, 2) for c in ints]
    parts += [(f.unsqueeze(1) if f.dim() == 1 else f).to(torch.float32).contiguous().view(WORD) for f in floats]
    return torch.cat(parts, dim=1)


def from_record(words: torch.Tensor, n_ints: int, float_widths: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Inverse of to_record: (int64 columns, float32 blocks)."""
    # Flatten before the view: a one-row slice counts as contiguous but keeps the row stride.
    ints = [words[:, 2 * i : 2 * i + 2].reshape(-1).view(torch.int64) for i in range(n_ints)]
    floats, start = [], 2 * n_ints
    for width in float_widths:
        floats.append(words[:, start : start + width].reshape(-1).view(torch.float32).reshape(-1, width))
        start += width
    return ints, floats


@dataclass
class Outgoing:
    """Records of one kind, sorted by destination rank, with the count per destination."""

    words: torch.Tensor   # int32 [N, W]
    counts_P: torch.Tensor  # int64 [P]

    @classmethod
    def sort(cls, dest_N: torch.Tensor, words: torch.Tensor, world_size: int) -> "Outgoing":
        order = torch.argsort(dest_N, stable=True)
        return cls(words[order], torch.bincount(dest_N, minlength=world_size))

    @classmethod
    def empty(cls, width: int, world_size: int, device: torch.device) -> "Outgoing":
        return cls(torch.zeros(0, width, dtype=WORD, device=device), torch.zeros(world_size, dtype=torch.int64, device=device))


@dataclass
class Received:
    """Records of one kind from every source, in source order."""

    words: torch.Tensor   # int32 [R, W]
    counts: list[int]     # per source rank

    def sources(self) -> torch.Tensor:
        """int64 [R]: the source rank of every record."""
        counts = torch.tensor(self.counts, device=self.words.device)
        return torch.repeat_interleave(torch.arange(len(self.counts), device=self.words.device), counts)

    def positions(self) -> torch.Tensor:
        """int64 [R]: each record's index among its source's records."""
        starts = torch.tensor([0] + self.counts[:-1], device=self.words.device).cumsum(0)
        return torch.arange(len(self.words), device=self.words.device) - starts[self.sources()]


@dataclass
class Traffic:
    """Bytes this worker sent to and received from other workers in one exchange."""

    sent: int = 0
    received: int = 0


def exchange_counts(counts_PK: torch.Tensor, traffic: Traffic, group: Group = None) -> tuple[list[list[int]], list[list[int]]]:
    """All-to-all of per-destination record counts [P, K]; returns (sent, received) on the host."""
    received = torch.empty_like(counts_PK)
    dist.all_to_all_single(received, counts_PK, group=group)
    both = torch.stack([counts_PK, received]).cpu().tolist()
    others = (counts_PK.shape[0] - 1) * counts_PK.shape[1] * 8
    traffic.sent += others
    traffic.received += others
    return both[0], both[1]


def exchange_records(kinds: list[Outgoing], traffic: Traffic, rank: int, group: Group = None) -> list[Received]:
    """One round: every kind of record to its destination, in one all_to_all_single."""
    world = len(kinds[0].counts_P)
    sent, got = exchange_counts(torch.stack([k.counts_P for k in kinds], dim=1), traffic, group)
    widths = [k.words.shape[1] for k in kinds]
    pieces = [torch.split(k.words, [row[i] for row in sent]) for i, k in enumerate(kinds)]
    send = torch.cat([pieces[i][q].reshape(-1) for q in range(world) for i in range(len(kinds))])
    send_splits = [sum(n * w for n, w in zip(row, widths)) for row in sent]
    recv_splits = [sum(n * w for n, w in zip(row, widths)) for row in got]
    recv = torch.empty(sum(recv_splits), dtype=WORD, device=send.device)
    dist.all_to_all_single(recv, send, recv_splits, send_splits, group=group)
    traffic.sent += 4 * (sum(send_splits) - send_splits[rank])
    traffic.received += 4 * (sum(recv_splits) - recv_splits[rank])
    return _split_received(recv, got, widths)


def _split_received(recv: torch.Tensor, got: list[list[int]], widths: list[int]) -> list[Received]:
    """Cut the receive buffer (source-major, kind-minor) back into one Received per kind."""
    per_kind: list[list[torch.Tensor]] = [[] for _ in widths]
    start = 0
    for row in got:
        for i, (n, w) in enumerate(zip(row, widths)):
            per_kind[i].append(recv[start : start + n * w].reshape(n, w))
            start += n * w
    return [Received(torch.cat(parts), [row[i] for row in got]) for i, parts in enumerate(per_kind)]


def gather_primaries(ids_N: torch.Tensor, values_N: torch.Tensor, num_ids: int, group: Group = None) -> torch.Tensor:
    """Assemble [E, ...] on every worker from each worker's (ids, values) of the rows it owns."""
    device = values_N.device
    count = torch.tensor([len(ids_N)], device=device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size(group))]
    dist.all_gather(counts, count, group=group)
    most = int(max(c.item() for c in counts))
    pad = most - len(ids_N)
    ids_all = [torch.empty(most, dtype=torch.int64, device=device) for _ in counts]
    vals_all = [torch.empty((most,) + values_N.shape[1:], dtype=values_N.dtype, device=device) for _ in counts]
    dist.all_gather(ids_all, torch.cat([ids_N, ids_N.new_zeros(pad)]), group=group)
    dist.all_gather(vals_all, torch.cat([values_N, values_N.new_zeros((pad,) + values_N.shape[1:])]), group=group)
    out = values_N.new_zeros((num_ids,) + values_N.shape[1:])
    for n, ids, vals in zip(counts, ids_all, vals_all):
        out[ids[: int(n.item())]] = vals[: int(n.item())]
    return out

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
That read is the round's only wait for the device, so it carries every other
number the host needs for the round (`extras`: the sizes of the index lists
the stages built on the device) in the same copy. On a GPU the counts travel
and come back on a side stream, so kernels queued after `SizeExchange` starts
run while the host waits for them.
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
    # A same-width view needs no copy, whatever the block's strides.
    parts += [(f.unsqueeze(1) if f.dim() == 1 else f).to(torch.float32).view(WORD) for f in floats]
    return torch.cat(parts, dim=1)


def from_record(words: torch.Tensor, n_ints: int, float_widths: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Inverse of to_record: (int64 columns, float32 blocks)."""
    # One copy of the int words, then a view (a copy, as a one-row slice counts as contiguous
    # but keeps the record's stride and offset).
    pairs = words[:, : 2 * n_ints].clone(memory_format=torch.contiguous_format).view(torch.int64)
    ints = [pairs[:, i] for i in range(n_ints)]
    floats, start = [], 2 * n_ints
    for width in float_widths:
        floats.append(words[:, start : start + width].view(torch.float32))
        start += width
    return ints, floats


@dataclass
class Traffic:
    """Bytes this worker sent to and received from other workers in one exchange."""

    sent: int = 0
    received: int = 0


@dataclass
class RoundSizes:
    """What the host knows of a round once the counts came back."""

    sent: list[list[int]]       # [P][K] records sent to each destination, per kind
    got: list[list[int]]        # [P][K] records received from each source, per kind
    extras: list[int]           # the numbers the stages asked the host to read
    got_PK: torch.Tensor        # the received counts, still on the device


class SizeExchange:
    """All-to-all of per-destination record counts [P, K], then ONE device->host copy of
    the counts sent, the counts received and `extras` (int64 [X]).

    On CUDA the counts travel on NCCL's stream and the copy runs on `stream`: the
    caller may queue more kernels before `wait()`, and they run during the round trip."""

    def __init__(self, counts_PK: torch.Tensor, extras: torch.Tensor, traffic: Traffic,
                 group: Group = None, stream: torch.cuda.Stream | None = None) -> None:
        others = (counts_PK.shape[0] - 1) * counts_PK.shape[1] * 8
        traffic.sent += others
        traffic.received += others
        self.shape = counts_PK.shape
        self.received = torch.empty_like(counts_PK)
        if stream is None:
            dist.all_to_all_single(self.received, counts_PK, group=group)
            self.host, self.done = torch.cat([counts_PK.reshape(-1), self.received.reshape(-1), extras]), None
            return
        work = dist.all_to_all_single(self.received, counts_PK, group=group, async_op=True)
        stream.wait_stream(torch.cuda.current_stream(counts_PK.device))
        with torch.cuda.stream(stream):
            work.wait()
            packed = torch.cat([counts_PK.reshape(-1), self.received.reshape(-1), extras])
            self.host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
            self.host.copy_(packed, non_blocking=True)
            self.done = torch.cuda.Event()
            self.done.record(stream)
        self._in_use = (counts_PK, extras, packed)  # freed only once the copy is done

    def wait(self) -> RoundSizes:
        """The host's copy of the sizes (the round's one wait for the device)."""
        if self.done is not None:
            self.done.synchronize()
            torch.cuda.current_stream(self.received.device).wait_event(self.done)
            self._in_use = None
        values = self.host.tolist()
        p, k = self.shape
        sent, got = values[: p * k], values[p * k : 2 * p * k]
        return RoundSizes([sent[q * k : (q + 1) * k] for q in range(p)], [got[q * k : (q + 1) * k] for q in range(p)],
                          values[2 * p * k :], self.received)


@dataclass
class Received:
    """Records of one kind from every source, in source order."""

    words: torch.Tensor     # int32 [R, W]
    counts: list[int]       # per source rank
    counts_P: torch.Tensor  # the same on the device (int64 [P])

    def sources(self) -> torch.Tensor:
        """int64 [R]: the source rank of every record."""
        ranks = torch.arange(len(self.counts), device=self.words.device)
        return torch.repeat_interleave(ranks, self.counts_P, output_size=len(self.words))

    def positions(self, sources: torch.Tensor) -> torch.Tensor:
        """int64 [R]: each record's index among its source's records, given `sources()`."""
        starts = torch.cumsum(self.counts_P, 0) - self.counts_P
        return torch.arange(len(self.words), device=self.words.device) - starts[sources]


def exchange_records(kinds: list[torch.Tensor], sizes: RoundSizes, traffic: Traffic, rank: int, group: Group = None) -> list[Received]:
    """One round: every kind of record (int32 [N_k, W_k], sorted by destination) to its
    destination, in one all_to_all_single whose split sizes the host already knows."""
    world, widths = len(sizes.sent), [k.shape[1] for k in kinds]
    pieces = [torch.split(k, [row[i] for row in sizes.sent]) for i, k in enumerate(kinds)]
    send = torch.cat([pieces[i][q].reshape(-1) for q in range(world) for i in range(len(kinds))])
    send_splits = [sum(n * w for n, w in zip(row, widths)) for row in sizes.sent]
    recv_splits = [sum(n * w for n, w in zip(row, widths)) for row in sizes.got]
    recv = torch.empty(sum(recv_splits), dtype=WORD, device=send.device)
    dist.all_to_all_single(recv, send, recv_splits, send_splits, group=group)
    traffic.sent += 4 * (sum(send_splits) - send_splits[rank])
    traffic.received += 4 * (sum(recv_splits) - recv_splits[rank])
    return _split_received(recv, sizes, widths)


def _split_received(recv: torch.Tensor, sizes: RoundSizes, widths: list[int]) -> list[Received]:
    """Cut the receive buffer (source-major, kind-minor) back into one Received per kind."""
    per_kind: list[list[torch.Tensor]] = [[] for _ in widths]
    start = 0
    for row in sizes.got:
        for i, (n, w) in enumerate(zip(row, widths)):
            per_kind[i].append(recv[start : start + n * w].reshape(n, w))
            start += n * w
    return [Received(_joined(parts), [row[i] for row in sizes.got], sizes.got_PK[:, i]) for i, parts in enumerate(per_kind)]


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    """One matrix of the sources' pieces; a copy only where two or more hold records."""
    filled = [p for p in parts if len(p)]
    return filled[0] if len(filled) == 1 else torch.cat(parts)


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

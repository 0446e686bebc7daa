"""Per-step traffic counters of an embedding table.

One exchange round (or several, when a forward reads synchronously) makes a
StepCounters; `emb.counters` holds those of the last training step and
`emb.totals` their running sum.

    distinct_ids:   unique ids read by this worker
    local_hits:     of those, rows this worker owns
    mirror_hits:    of those, mirrors fresh enough to read locally
    mirror_refreshes: of those, mirrors past the bound, refreshed from their owner
                    (mirror_hits + mirror_refreshes = mirrors read: a mirror saves
                    a fetch only when fresh)
    rows_fetched:   rows received from owners (refreshed mirrors + unstored ids)
    rows_pushed:    rows sent to owners (mirror deltas + gradients)
    bytes_sent / bytes_received: payload of the exchange rounds to and from
                    other workers (requests, pushes, answers and the small
                    count exchanges), as 4-byte words x 4

A field may hold a device scalar (an int64 tensor) where the host would have
to wait for the device to learn it: the sharded table's mirror hits. Sums
stay on the device; `as_dict` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class StepCounters:
    distinct_ids: int | torch.Tensor = 0
    local_hits: int | torch.Tensor = 0
    mirror_hits: int | torch.Tensor = 0
    mirror_refreshes: int | torch.Tensor = 0
    rows_fetched: int | torch.Tensor = 0
    rows_pushed: int | torch.Tensor = 0
    bytes_sent: int | torch.Tensor = 0
    bytes_received: int | torch.Tensor = 0

    def add(self, other: StepCounters) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        """Host numbers (a device scalar is read here, a wait for the device)."""
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}

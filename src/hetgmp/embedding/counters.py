"""Per-step traffic counters of an embedding table.

One exchange round (or several, when a forward reads synchronously) makes a
StepCounters; `emb.counters` holds those of the last training step and
`emb.totals` their running sum.

    distinct_ids:   unique ids read by this worker
    local_hits:     of those, rows this worker owns
    mirror_hits:    of those, mirrors fresh enough to read locally
    rows_fetched:   rows received from owners (refreshed mirrors + unstored ids)
    rows_pushed:    rows sent to owners (mirror deltas + gradients)
    bytes_sent / bytes_received: payload of the exchange rounds to and from
                    other workers (requests, pushes, answers and the small
                    count exchanges), as 4-byte words x 4
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class StepCounters:
    distinct_ids: int = 0
    local_hits: int = 0
    mirror_hits: int = 0
    rows_fetched: int = 0
    rows_pushed: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0

    def add(self, other: "StepCounters") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

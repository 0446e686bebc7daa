"""StepWindow: the per-step embedding counters it sums, read without copying them."""

from __future__ import annotations

import torch

from hetgmp.distributed import DistContext
from hetgmp.embedding.counters import StepCounters
from hetgmp.train.loop import StepWindow, _counter_items


def one_worker() -> DistContext:
    return DistContext(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"), backend=None)


def test_counter_items_read_every_field_without_a_copy():
    mirror_hits = torch.tensor(3)
    items = dict(_counter_items(StepCounters(distinct_ids=10, mirror_hits=mirror_hits, rows_fetched=4)))
    assert items["distinct_ids"] == 10 and items["rows_fetched"] == 4 and items["bytes_sent"] == 0
    assert items["mirror_hits"] is mirror_hits  # the device scalar itself, not a deep copy of it
    assert dict(_counter_items({"rows_fetched": 2, "note": "text"})) == {"rows_fetched": 2}
    assert _counter_items(None) == []


def test_window_sums_counters_over_steps_unaffected_by_later_changes():
    window = StepWindow(4, one_worker(), first=0)
    steps = [StepCounters(distinct_ids=10 + t, mirror_hits=torch.tensor(t), rows_fetched=2 * t) for t in range(3)]
    for t, counters in enumerate(steps):
        window.record(torch.tensor(0.5), torch.tensor(float(t)))
        window.add(counters)
    steps[0].mirror_hits += 100  # a table may reuse its scalars: the window's sums must not follow
    out = window.drain()
    assert out["distinct_ids"] == (10 + 11 + 12) / 3
    assert out["mirror_hits"] == (0 + 1 + 2) / 3
    assert out["rows_fetched"] == (0 + 2 + 4) / 3
    assert out["loss"] == 0.5 and out["correct"] == 1.0

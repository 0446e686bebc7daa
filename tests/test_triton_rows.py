"""The sharded fast step's per-slot stages as Triton kernels, held to their torch namesakes.

The kernels run under Triton's interpreter (set before triton is first
imported). Worker 1 of 3 (its rank lies between its peers' blocks) with a
plan-like placement: each stage runs on a copy of the same random state, the
torch stage (embedding/fixed/rows.py) on one and the kernel (triton_rows.py) on the
other, and every tensor either may write must come out equal: rows, versions,
pending counts, bases, both rounds' send buffers and the counters. Received
records are random: requests and pushes of this worker's rows (two slots
pushing the same row, as two peers may), versions around the bound, some
slots empty.

On a machine with a GPU, TRITON_INTERPRET=0 runs the same cases compiled, on the GPU.
"""

import copy
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from hetgmp.embedding import EmbeddingConfig  # noqa: E402
from hetgmp.embedding.staleness import MUST_FETCH  # noqa: E402
from hetgmp.embedding.reference import plan_like, skewed_batches  # noqa: E402
from hetgmp.embedding.store import RowStore  # noqa: E402
from hetgmp.embedding.fixed import rows as torch_rows, triton_rows  # noqa: E402
from hetgmp.embedding.fixed.exchange import ANS_ROW, NOT_ANSWERED, PUSH_DELTA, FixedExchange  # noqa: E402

WORLD, RANK, IDS, DIM, FIELDS, BATCH, CAPACITY, BOUND = 3, 1, 300, 20, 4, 24, 24, 3
DEVICE = torch.device("cuda" if os.environ["TRITON_INTERPRET"] != "1" and torch.cuda.is_available() else "cpu")


class State:
    """Everything the stages read or write, built from one seed."""

    def __init__(self, seed: int, dim: int = DIM, adagrad: bool = False):
        gen = torch.Generator().manual_seed(seed)
        ids, _ = skewed_batches(IDS, 1, WORLD * BATCH, FIELDS, seed=seed)
        placement = plan_like(ids, IDS, WORLD, store_rate=0.2)
        table = EmbeddingConfig(IDS, dim, bound=BOUND, optimizer="rowwise_adagrad" if adagrad else "sgd")
        self.exchange = FixedExchange(WORLD, RANK, CAPACITY, dim, DEVICE, None, adagrad)
        self.store = RowStore(table, placement, RANK, DEVICE, spare=self.exchange.slots)
        s = self.store
        s.rows.copy_(torch.randn(s.rows.shape, generator=gen))
        if adagrad:
            s.acc.copy_(torch.rand(s.acc.shape, generator=gen))
        s.version.copy_(torch.randint(0, 12, s.version.shape, generator=gen))
        s.pending_count.copy_(torch.randint(0, 2 * BOUND, s.pending_count.shape, generator=gen))
        self.base = torch.randn(s.num_mirrors + self.exchange.slots, dim + int(adagrad), generator=gen).to(DEVICE)
        batch = torch.as_tensor(ids[0, RANK * BATCH : (RANK + 1) * BATCH]).reshape(-1).to(DEVICE)
        self.at = torch_rows.locate(s, self.exchange, batch, RANK, IDS, distinct_capacity=len(batch) * 3 // 4)
        self._receive_records(gen, placement.owner)
        self.overflow = torch.tensor([1, 3, 5], device=DEVICE)
        self.lag = torch.tensor([1, 2], device=DEVICE)
        self.counter = torch.tensor(7, device=DEVICE)
        self.fetch_counts = torch.tensor([7, 2, 4], device=DEVICE)  # receive's (answered, refreshed, mirrors read)

    def _receive_records(self, gen: torch.Generator, owner) -> None:
        """Round A's records from the peers and round B's answers, written through a scratch
        exchange's own writers (the layouts are the ones the rounds would deliver)."""
        ex, slots = self.exchange, self.exchange.slots
        mine = torch.nonzero(torch.as_tensor(owner) == RANK).squeeze(1)
        pick = lambda: mine[torch.randint(0, len(mine), (slots,), generator=gen)]  # noqa: E731
        some = lambda p: torch.rand(slots, generator=gen) < p  # noqa: E731
        peer = FixedExchange(WORLD, RANK, CAPACITY, ex.dim, torch.device("cpu"), None, ex.adagrad)
        held = torch.randint(0, 12, (slots,), generator=gen)
        peer.write_requests(torch.where(some(0.8), pick(), -1), torch.where(some(0.3), MUST_FETCH, held))
        pushed_ids = pick()
        pushed_ids[1] = pushed_ids[0]  # two peers push one row: the adds must both land
        peer.write_pushes(torch.where(some(0.7), pushed_ids, -1), torch.randint(1, 9, (slots,), generator=gen),
                          torch.randn(slots, ex.dim, generator=gen), torch.rand(slots, generator=gen), some(0.5))
        ex.recv_a.copy_(peer.send_a)
        answered = torch.randint(0, 40, (slots,), generator=gen)
        peer.write_answers(torch.where(some(0.7), answered, NOT_ANSWERED), torch.randn(slots, ex.dim, generator=gen),
                           torch.rand(slots, generator=gen))
        ex.recv_b.copy_(peer.send_b)
        ex.send_a.copy_(torch.randint(-5, 5, ex.send_a.shape, generator=gen, dtype=torch.int32))  # stale words to overwrite
        ex.send_b.copy_(torch.randint(-5, 5, ex.send_b.shape, generator=gen, dtype=torch.int32))

    def tensors(self) -> dict[str, torch.Tensor]:
        s, ex = self.store, self.exchange
        # The records' float columns apart from their int words: on a GPU the owner's atomic adds
        # land in any order, so the rows it serves may differ in the last bit.
        acc = {"acc": s.acc} if s.acc is not None else {}
        return {**acc, "rows": s.rows, "version": s.version, "pending_count": s.pending_count, "base": self.base,
                "send_a words": ex.send_a[..., :PUSH_DELTA], "send_a deltas": ex.send_a[..., PUSH_DELTA:].view(torch.float32),
                "send_b words": ex.send_b[..., :ANS_ROW], "send_b rows": ex.send_b[..., ANS_ROW:].view(torch.float32),
                "overflow": self.overflow, "lag": self.lag, "counter": self.counter,
                "fetch_counts": self.fetch_counts}


STAGES = {
    "request": lambda m, st: m.request(st.store, st.at, st.exchange, st.overflow, CAPACITY, 14),
    "answer": lambda m, st: m.answer(st.store, st.exchange, BOUND, st.lag),
    "serve": lambda m, st: m.serve(st.store, st.exchange, BOUND, st.lag),
    "receive": lambda m, st: m.receive(st.store, st.at, st.exchange, st.base, st.fetch_counts),
    "write": lambda m, st: m.write(st.store, st.at, BOUND, st.exchange, st.base, st.counter),
}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("stage", STAGES)
def test_kernel_matches_the_torch_stage(stage, seed):
    want = State(seed)
    got = copy.deepcopy(want)
    before = {k: v.clone() for k, v in want.tensors().items()}
    STAGES[stage](torch_rows, want)
    STAGES[stage](triton_rows, got)
    changed = [k for k, v in want.tensors().items() if not torch.equal(v, before[k])]
    assert changed, f"{stage} changed nothing: the case does not test it"
    for name, expected in want.tensors().items():
        if expected.is_floating_point():
            torch.testing.assert_close(got.tensors()[name], expected, rtol=0, atol=1e-6, equal_nan=True, msg=f"{stage}: {name}")
        else:
            assert torch.equal(got.tensors()[name], expected), f"{stage}: {name}"


@pytest.mark.parametrize("dim", [DIM, 200])
@pytest.mark.parametrize("stage", ["serve", "receive"])
def test_kernel_matches_the_torch_stage_with_accumulators(stage, dim):
    """Row-wise Adagrad: answers carry the accumulator, a refresh keeps the mirror's accumulator delta."""
    want = State(4, dim=dim, adagrad=True)
    got = copy.deepcopy(want)
    acc_before, base_before = want.store.acc.clone(), want.base[:, -1].clone()
    STAGES[stage](torch_rows, want)
    STAGES[stage](triton_rows, got)
    if stage == "receive":
        assert not torch.equal(want.store.acc, acc_before) and not torch.equal(want.base[:, -1], base_before), "accumulators untouched"
    for name, expected in want.tensors().items():
        torch.testing.assert_close(got.tensors()[name], expected, rtol=0, atol=1e-6, equal_nan=True, msg=f"{stage}: {name}")


def test_wide_rows_split_into_column_blocks():
    """d = 200: two column blocks per slot; the per-slot words come from the first one only."""
    want = State(2, dim=200)
    got = copy.deepcopy(want)
    for stage in ("answer", "receive", "write"):
        STAGES[stage](torch_rows, want)
        STAGES[stage](triton_rows, got)
    for name, expected in want.tensors().items():
        torch.testing.assert_close(got.tensors()[name], expected, rtol=0, atol=1e-6, equal_nan=True, msg=name)


def test_counters_and_overflow_tallies():
    """The kernels' counters are the torch stages' (not just equal to each other: the values)."""
    st = State(3)
    start = st.fetch_counts.clone()
    triton_rows.receive(st.store, st.at, st.exchange, st.base, st.fetch_counts)
    version, _ = st.exchange.answers()
    answered = st.at.slot_has & (version != NOT_ANSWERED)
    mirrors_read = st.at.slot_has & st.at.slot_mirror
    assert 0 < int((answered & st.at.slot_mirror).sum()) < int(mirrors_read.sum()), "some mirrors refreshed, some fresh"
    assert (st.fetch_counts - start).tolist() == [int(answered.sum()), int((answered & st.at.slot_mirror).sum()), int(mirrors_read.sum())]
    triton_rows.request(st.store, st.at, st.exchange, st.overflow, CAPACITY, 14)
    assert int(st.at.ids.distinct) > 14, "the case must overflow U"
    assert st.overflow.tolist() == [2, max(3, int(st.at.per_peer.max())), int(st.at.ids.distinct)]

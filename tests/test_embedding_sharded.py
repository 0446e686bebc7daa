"""The sharded table in real Gloo process groups, held to the dense single-worker reference.

Each spawn of workers runs several checks (spawning costs seconds); the
results come back as numpy arrays and the tests assert on them here.
"""

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hetgmp.embedding import EmbeddingConfig, Placement, build_embedding
from hetgmp.embedding.batch import BatchRows
from hetgmp.embedding.exchange import gather_primaries
from hetgmp.embedding.reference import plan_like, reference_run, skewed_batches, train_toy
from hetgmp.errors import HetGMPError
from workers import run_workers

CPU = torch.device("cpu")
NUM_IDS, FIELDS, LOCAL_BATCH, STEPS, DIM = 400, 3, 24, 20, 4
DENSE_LR = 0.1
LR = {"sgd": 0.5, "rowwise_adagrad": 0.05}
EQUIVALENCE = [(opt, kind) for opt in LR for kind in ("plan", "random")]


def _data(world_size):
    return skewed_batches(NUM_IDS, STEPS, world_size * LOCAL_BATCH, FIELDS, seed=1)


def _config(optimizer, bound=0):
    return EmbeddingConfig(NUM_IDS, DIM, optimizer=optimizer, lr=LR[optimizer], bound=bound, seed=3)


def _placement(kind, ids, world_size, store_rate=0.3):
    if kind == "lopsided":  # rank 0 owns every row; the others own none, so their slot 0 is a mirror
        return Placement(np.zeros(NUM_IDS, dtype=np.int16), [np.zeros(0, dtype=np.int64)] + [np.arange(0, NUM_IDS, 7)] * (world_size - 1))
    return plan_like(ids, NUM_IDS, world_size, store_rate) if kind == "plan" else Placement.random(NUM_IDS, world_size, seed=2)


def _equivalence(ctx, cases):
    ids, labels = _data(ctx.world_size)
    out = {}
    for optimizer, kind in cases:
        emb = build_embedding(_config(optimizer), _placement(kind, ids, ctx.world_size), ctx)
        weight = train_toy(emb, ids, labels, DENSE_LR, ctx.rank, ctx.world_size, CPU)
        out[optimizer, kind] = (emb.gather_table().numpy(), weight.numpy())
    return out


def _stale_run(ctx, bound):
    """bound > 0, SGD: per-step lags of every mirror read, every delta produced, counters; then flush."""
    ids, labels = _data(ctx.world_size)
    config = _config("sgd", bound)
    emb = build_embedding(config, _placement("plan", ids, ctx.world_size, store_rate=0.5), ctx)
    store, produced, lags, counters = emb.store, torch.zeros(NUM_IDS, DIM), [], []

    def hook(t, batch, grad):
        produced.index_add_(0, batch.reshape(-1), -config.lr * grad.reshape(-1, DIM))
        counters.append(emb.counters.as_dict())
        primary_version = gather_primaries(store.ids[: store.num_primaries], store.version[: store.num_primaries], NUM_IDS)
        if emb._next is not None:  # the mirrors the next forward reads, as they stand now
            slots = store.slot[emb._next.uids_U].long()
            mirrors = slots[slots >= store.num_primaries]
            lags.extend((primary_version[store.ids[mirrors]] - store.version[mirrors]).tolist())

    train_toy(emb, ids, labels, DENSE_LR, ctx.rank, ctx.world_size, CPU, hook)
    emb.flush()
    torch.distributed.all_reduce(produced)
    table = emb.gather_table()
    sd = emb.state_dict()
    fresh = build_embedding(config, _placement("plan", ids, ctx.world_size, store_rate=0.5), ctx)
    fresh.load_state_dict(sd)
    reloaded = fresh.gather_table()
    try:
        fresh.load_state_dict({k: v[1:] for k, v in sd.items()})
        mismatch = ""
    except HetGMPError as e:
        mismatch = str(e)
    return dict(table=table.numpy(), produced=produced.numpy(), lags=lags, counters=counters,
                max_lag_served=emb.max_lag_served, reloaded=reloaded.numpy(), mismatch=mismatch)


def _setup_errors(ctx):
    """The messages of refused set-ups, each raised before anything large is allocated."""
    ids, _ = _data(ctx.world_size)
    attempts = {
        "no placement": lambda: build_embedding(_config("sgd"), None, ctx),
        "wrong parts": lambda: build_embedding(_config("sgd"), Placement.random(NUM_IDS, 3, seed=0), ctx),
        "memory": lambda: build_embedding(EmbeddingConfig(NUM_IDS, 10**9), _placement("plan", ids, ctx.world_size), ctx),
    }
    messages = {}
    for name, attempt in attempts.items():
        try:
            attempt()
        except HetGMPError as e:
            messages[name] = str(e)
    return messages


class _HostWaits(TorchDispatchMode):
    """Counts what would make the host wait for a GPU: operations whose output size depends on
    the data or that read a device value, and Tensor.tolist / Tensor.cpu / torch.tensor(list)."""

    SIZED_BY_DATA = frozenset({"nonzero", "_unique2", "unique_dim", "unique_consecutive", "bincount", "masked_select", "_local_scalar_dense"})

    def __init__(self):
        super().__init__()
        self.seen = {}
        self.saved = [(torch.Tensor, "tolist"), (torch.Tensor, "cpu"), (torch, "tensor")]

    def note(self, name):
        self.seen[name] = self.seen.get(name, 0) + 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        masked = name.startswith("index") and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else []))
        if name in self.SIZED_BY_DATA or masked or (name == "repeat_interleave" and "output_size" not in (kwargs or {})):
            self.note(name)
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self.saved = [(owner, name, getattr(owner, name)) for owner, name in self.saved]
        for owner, name, original in self.saved:
            setattr(owner, name, self._counted(name, original))
        return super().__enter__()

    def __exit__(self, *exc):
        for owner, name, original in self.saved:
            setattr(owner, name, original)
        return super().__exit__(*exc)

    def _counted(self, name, original):
        def counted(data, *args, **kwargs):
            if name != "tensor" or isinstance(data, (list, tuple)):
                self.note(name)
            return original(data, *args, **kwargs)
        return counted


def _host_waits_per_step(ctx):
    """bound 2, row-wise Adagrad, a plan with mirrors: what each step() makes the host wait for."""
    ids, _ = _data(ctx.world_size)
    emb = build_embedding(_config("rowwise_adagrad", bound=2), _placement("plan", ids, ctx.world_size, store_rate=0.5), ctx)
    rows = LOCAL_BATCH
    local = [torch.as_tensor(ids[t, ctx.rank * rows : (ctx.rank + 1) * rows]) for t in range(len(ids))]
    waits = []
    for t in range(len(local) - 1):
        emb(local[t]).sum().backward()
        with _HostWaits() as seen:
            emb.step(next_ids=local[t + 1])
        waits.append(seen.seen)
    return waits


def _bad_id_message(ctx):
    emb = build_embedding(_config("sgd"), Placement.random(NUM_IDS, ctx.world_size, seed=2), ctx)
    try:
        emb(torch.tensor([[0, NUM_IDS]]))
    except HetGMPError as e:
        return str(e)
    return ""


def _two_worker_checks(ctx):
    return (_equivalence(ctx, EQUIVALENCE + [("rowwise_adagrad", "lopsided")]), _stale_run(ctx, bound=2), _setup_errors(ctx),
            _host_waits_per_step(ctx), _bad_id_message(ctx))


@pytest.fixture(scope="module")
def two_workers():
    return run_workers(_two_worker_checks, 2)


def _assert_matches_reference(results, world_size, cases):
    ids, labels = _data(world_size)
    for optimizer, kind in cases:
        table, weight = reference_run(_config(optimizer), ids, labels, DENSE_LR, CPU)
        for rank_result in results:
            got_table, got_weight = rank_result[optimizer, kind]
            assert np.abs(got_table - table.numpy()).max() < 1e-5, (optimizer, kind)
            assert np.abs(got_weight - weight.numpy()).max() < 1e-5, (optimizer, kind)


def test_bound_zero_two_workers_equal_one_worker(two_workers):
    _assert_matches_reference([r[0] for r in two_workers], 2, EQUIVALENCE)


def test_a_worker_that_owns_no_row_still_equals_one_worker(two_workers):
    _assert_matches_reference([r[0] for r in two_workers], 2, [("rowwise_adagrad", "lopsided")])


def test_a_step_waits_for_the_device_once_per_all_to_all(two_workers):
    """The two rounds' split sizes (and every other size, in the same copy) are the only host reads."""
    for r in two_workers:
        assert r[3] and all(seen == {"tolist": 2} for seen in r[3]), r[3]


def test_ids_outside_the_table_are_refused_by_every_worker(two_workers):
    for r in two_workers:
        assert f"holds id {NUM_IDS} but the embedding table has ids 0..{NUM_IDS - 1}" in r[4]


def test_sorted_unique_matches_unique():
    ids = torch.from_numpy(np.random.default_rng(4).integers(3, 40, size=(17, 5)))
    batch, sizes = BatchRows.sorted_unique(ids, CPU)
    uids, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
    assert sizes.tolist() == [len(uids), int(ids.min()), int(ids.max())]
    assert torch.equal(batch.uids_U[: len(uids)], uids) and torch.equal(batch.inverse, inverse)
    assert torch.equal(batch.counts_U[: len(uids)], counts) and not batch.counts_U[len(uids) :].any()
    assert len(batch.uids_U) == ids.numel()


def test_bound_zero_four_workers_equal_one_worker():
    cases = [("sgd", "plan"), ("rowwise_adagrad", "plan")]
    _assert_matches_reference(run_workers(_equivalence, 4, (cases,)), 4, cases)


def test_mirrors_lag_but_never_past_the_bound(two_workers):
    lags = [lag for r in two_workers for lag in r[1]["lags"]]
    assert len(lags) > 100
    assert max(lags) <= 2 and max(lags) > 0 and min(lags) >= 0
    assert max(r[1]["max_lag_served"] for r in two_workers) == max(lags)


def test_flushed_primaries_hold_every_delta_once(two_workers):
    from hetgmp.embedding.init import initial_rows

    run = two_workers[0][1]
    initial = initial_rows(torch.arange(NUM_IDS), _config("sgd", 2), CPU).numpy()
    assert np.abs(run["table"] - (initial + run["produced"])).max() < 1e-5
    assert np.abs(run["produced"]).max() > 1e-3


def test_state_dict_round_trip_and_mismatch(two_workers):
    for r in two_workers:
        assert np.array_equal(r[1]["reloaded"], r[1]["table"])
        assert "resume with the partition plan" in r[1]["mismatch"]


def _brute_force_counters(ids, placement, bound, world_size):
    """Replay the protocol's rules on dicts: per rank and step, the counters the runtime must report."""
    rows, record = ids.shape[1] // world_size, 4 + DIM  # SGD: push and answer records carry no accumulator
    owner, mirrors = placement.owner, [set(m.tolist()) for m in placement.mirrors]
    primary_version = np.zeros(NUM_IDS, dtype=np.int64)
    mirror_version = [dict.fromkeys(m, 0) for m in mirrors]
    pending = [dict.fromkeys(m, 0) for m in mirrors]

    def one_round(writes, reads):
        c = [dict(distinct_ids=0, local_hits=0, mirror_hits=0, mirror_refreshes=0, rows_fetched=0, rows_pushed=0,
                  bytes_sent=(world_size - 1) * 32, bytes_received=(world_size - 1) * 32) for _ in range(world_size)]

        def send(src, dst, words):
            c[src]["bytes_sent"] += 4 * words
            c[dst]["bytes_received"] += 4 * words

        for r, batch in enumerate(writes):
            for e, k in zip(*np.unique(batch, return_counts=True)):
                if owner[e] == r:
                    primary_version[e] += k
                    continue
                if e in mirrors[r] and bound > 0:
                    pending[r][e] += k
                    if pending[r][e] <= bound:
                        continue
                    k, pending[r][e] = pending[r][e], 0
                    mirror_version[r][e] += k
                c[r]["rows_pushed"] += 1
                send(r, owner[e], record)
                primary_version[e] += k
        for r, batch in enumerate(reads):
            for e in np.unique(batch):
                c[r]["distinct_ids"] += 1
                if owner[e] == r:
                    c[r]["local_hits"] += 1
                    continue
                send(r, owner[e], 4)
                if e in mirrors[r] and primary_version[e] <= mirror_version[r][e] + bound:
                    c[r]["mirror_hits"] += 1
                    continue
                c[r]["rows_fetched"] += 1
                send(owner[e], r, record)
                if e in mirrors[r]:
                    c[r]["mirror_refreshes"] += 1
                    mirror_version[r][e] = primary_version[e]
        return c

    local = [[ids[t, r * rows : (r + 1) * rows] for r in range(world_size)] for t in range(ids.shape[0])]
    none = [np.zeros(0, dtype=np.int64)] * world_size
    steps = []
    first = one_round(none, local[0])  # the first forward reads synchronously
    for t in range(ids.shape[0]):
        c = one_round(local[t], local[t + 1] if t + 1 < len(local) else none)
        if t == 0:
            c = [{k: v + first[r][k] for k, v in d.items()} for r, d in enumerate(c)]
        steps.append(c)
    return [[steps[t][r] for t in range(len(steps))] for r in range(world_size)]


def test_counters_agree_with_brute_force(two_workers):
    ids, _ = _data(2)
    expected = _brute_force_counters(ids, _placement("plan", ids, 2, store_rate=0.5), bound=2, world_size=2)
    for rank, r in enumerate(two_workers):
        assert r[1]["counters"] == expected[rank]
    assert sum(d["mirror_hits"] for d in expected[0]) > 0 and sum(d["rows_pushed"] for d in expected[0]) > 0
    assert sum(d["mirror_refreshes"] for d in expected[0]) > 0


def test_setup_errors_say_what_to_change(two_workers):
    for r in two_workers:
        assert "need a placement" in r[2]["no placement"]
        assert "3 parts but 2 workers" in r[2]["wrong parts"]
        assert "GiB per worker" in r[2]["memory"] and "more workers" in r[2]["memory"]

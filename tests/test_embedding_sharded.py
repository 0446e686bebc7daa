"""The sharded table as a layer (`emb(ids)`, `emb.step(next_ids)`) in real Gloo process groups,
held to the dense single-worker reference. The fused step's use of the same table is held
to the per-row staleness reference in test_sharded_fast.py.

Each spawn of workers runs several checks (spawning costs seconds); the
results come back as numpy arrays and the tests assert on them here.
"""

import numpy as np
import pytest
import torch

from hetgmp.embedding import EmbeddingConfig, Placement, ShardedTable, build_embedding
from hetgmp.embedding.reference import plan_like, reference_run, skewed_batches, train_toy
from hetgmp.errors import HetGMPError
from workers import run_workers

CPU = torch.device("cpu")
NUM_IDS, FIELDS, LOCAL_BATCH, STEPS, DIM = 400, 3, 24, 12, 4
DENSE_LR = 0.1
LR = {"sgd": 0.5, "rowwise_adagrad": 0.05}
EQUIVALENCE = [(opt, kind) for opt in LR for kind in ("plan", "random")]


def _data(world_size, steps=STEPS):
    return skewed_batches(NUM_IDS, steps, world_size * LOCAL_BATCH, FIELDS, seed=1)


def _config(optimizer, bound=0):
    return EmbeddingConfig(NUM_IDS, DIM, optimizer=optimizer, lr=LR[optimizer], bound=bound, seed=3)


def _placement(kind, ids, world_size, store_rate=0.3):
    if kind == "lopsided":  # rank 0 owns every row; the others own none, so their slot 0 is a mirror
        return Placement(np.zeros(NUM_IDS, dtype=np.int16), [np.zeros(0, dtype=np.int64)] + [np.arange(0, NUM_IDS, 7)] * (world_size - 1))
    return plan_like(ids, NUM_IDS, world_size, store_rate) if kind in ("plan", "grown") else Placement.random(NUM_IDS, world_size, seed=2)


def _equivalence(ctx, cases, steps=STEPS):
    ids, labels = _data(ctx.world_size, steps)
    out = {}
    for optimizer, kind in cases:
        placement = _placement(kind, ids, ctx.world_size)
        # "grown": room for one id per peer to start with: the first reads grow the table
        emb = (ShardedTable(_config(optimizer), placement, ctx, capacity=1, distinct_capacity=1) if kind == "grown"
               else build_embedding(_config(optimizer), placement, ctx))
        weight = train_toy(emb, ids, labels, DENSE_LR, ctx.rank, ctx.world_size, CPU)
        emb.flush()
        out[optimizer, kind] = (emb.gather_table().numpy(), weight.numpy(), (emb.capacity, emb.distinct_capacity))
    return out


def _stale_run(ctx, bound):
    """bound > 0, SGD: every delta produced, the counters of each step; then flush, save and reload."""
    ids, labels = _data(ctx.world_size)
    config = _config("sgd", bound)
    emb = build_embedding(config, _placement("plan", ids, ctx.world_size, store_rate=0.5), ctx)
    produced, counters = torch.zeros(NUM_IDS, DIM), []

    def hook(t, batch, grad):
        produced.index_add_(0, batch.reshape(-1), -config.lr * grad.reshape(-1, DIM))
        counters.append({k: int(v) for k, v in vars(emb.counters).items()})

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
    return dict(table=table.numpy(), produced=produced.numpy(), counters=counters, max_lag_served=emb.max_lag_served,
                reloaded=reloaded.numpy(), mismatch=mismatch)


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


def _bad_id_message(ctx):
    emb = build_embedding(_config("sgd"), Placement.random(NUM_IDS, ctx.world_size, seed=2), ctx)
    try:
        emb(torch.tensor([[0, NUM_IDS]]))
    except HetGMPError as e:
        return str(e)
    return ""


def _two_worker_checks(ctx):
    return (_equivalence(ctx, EQUIVALENCE + [("rowwise_adagrad", "lopsided"), ("sgd", "grown"), ("rowwise_adagrad", "grown")]),
            _stale_run(ctx, bound=2), _setup_errors(ctx), None, _bad_id_message(ctx))


@pytest.fixture(scope="module")
def two_workers():
    return run_workers(_two_worker_checks, 2)


def _assert_matches_reference(results, world_size, cases, steps=STEPS):
    ids, labels = _data(world_size, steps)
    for optimizer, kind in cases:
        table, weight = reference_run(_config(optimizer), ids, labels, DENSE_LR, CPU)
        for rank_result in results:
            got_table, got_weight, _ = rank_result[optimizer, kind]
            assert np.abs(got_table - table.numpy()).max() < 1e-5, (optimizer, kind)
            assert np.abs(got_weight - weight.numpy()).max() < 1e-5, (optimizer, kind)


def test_bound_zero_two_workers_equal_one_worker(two_workers):
    _assert_matches_reference([r[0] for r in two_workers], 2, EQUIVALENCE)


def test_a_worker_that_owns_no_row_still_equals_one_worker(two_workers):
    _assert_matches_reference([r[0] for r in two_workers], 2, [("rowwise_adagrad", "lopsided")])


def test_a_table_too_small_grows_as_its_reads_need_and_still_equals_one_worker(two_workers):
    _assert_matches_reference([r[0] for r in two_workers], 2, [("sgd", "grown"), ("rowwise_adagrad", "grown")])
    for r in two_workers:
        capacity, distinct = r[0]["sgd", "grown"][2]
        assert capacity >= 256 and distinct >= 256, "the reads must have grown the table from 1 and 1"


def test_ids_outside_the_table_are_refused_by_every_worker(two_workers):
    for r in two_workers:
        assert f"holds id {NUM_IDS} but the embedding table has ids 0..{NUM_IDS - 1}" in r[4]


def test_bound_zero_four_workers_equal_one_worker():
    # Four steps: two ranks between their peers' blocks is what four workers add to the two-worker cases.
    cases = [("rowwise_adagrad", "plan")]
    _assert_matches_reference(run_workers(_equivalence, 4, (cases, 4)), 4, cases, steps=4)


def test_layer_counters_count_each_steps_traffic(two_workers):
    for r in two_workers:
        steps = r[1]["counters"]
        assert len(steps) == STEPS and all(c["bytes_sent"] > 0 for c in steps[:-1])  # the last step reads nothing ahead
        assert sum(c["rows_fetched"] for c in steps) > 0 and sum(c["rows_pushed"] for c in steps) > 0
        assert sum(c["mirror_hits"] for c in steps) > 0 and sum(c["mirror_refreshes"] for c in steps) > 0
        assert r[1]["max_lag_served"] <= 2


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


def test_setup_errors_say_what_to_change(two_workers):
    for r in two_workers:
        assert "need a placement" in r[2]["no placement"]
        assert "3 parts but 2 workers" in r[2]["wrong parts"]
        assert "GiB per worker" in r[2]["memory"] and "more workers" in r[2]["memory"]

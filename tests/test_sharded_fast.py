"""The sharded fast step on 2 Gloo workers, held to a single-process reference.

Ids are power-law skewed over a small table, so they repeat within and across
workers' batches; the placement is plan-like (random owners, each worker
mirrors its most-read remote ids). Worker r trains on rows r*B .. (r+1)*B-1
of every global batch, the reference on the whole global batch.
"""

import copy

import numpy as np
import pytest
import torch

from hetgmp.embedding import EmbeddingConfig, Placement
from hetgmp.embedding.init import initial_rows
from hetgmp.embedding.reference import plan_like, skewed_batches
from hetgmp.errors import HetGMPError
from hetgmp.fastpath import FastStepConfig, ReferenceStep
from hetgmp.embedding.fixed.capacity import find_capacities, unique_ids
from hetgmp.fastpath.sharded_step import ShardedFastStep, ShardedStepConfig
from hetgmp.models import build_model
from workers import run_workers

WORLD, IDS, DIM, FIELDS, DENSE, BATCH, STEPS = 2, 500, 8, 4, 3, 16, 6
LR, DENSE_LR = 0.5, 0.1  # large, so that every row and weight moves visibly in a few steps


def _data(seed=1, world=WORLD):
    ids, labels = skewed_batches(IDS, STEPS, world * BATCH, FIELDS, seed=seed)
    dense = np.random.default_rng(seed).random((STEPS, world * BATCH, DENSE)).astype(np.float32)
    return ids, labels, dense


def _model():
    torch.manual_seed(3)
    model = build_model("wdl", FIELDS, DENSE, DIM)
    with torch.no_grad():  # weights far above N(0, 0.01): a row read one update late changes the gradients visibly
        for p in model.parameters():
            p.mul_(10.0)
    return model


def _local(arrays, rank):
    rows = slice(rank * BATCH, (rank + 1) * BATCH)
    ids, labels, dense = arrays
    return [(torch.as_tensor(dense[t, rows]), torch.as_tensor(ids[t, rows]), torch.as_tensor(labels[t, rows])) for t in range(len(ids))]


def _build(ctx, placement, bound, capacity=None, arrays=None, optimizer="sgd", distinct=None, compile=False, implicit=False):
    """The step with C and U measured on the worker's batches (rounded to 4: U < the batch's 64 ids)."""
    table = EmbeddingConfig(IDS, DIM, optimizer=optimizer, lr=LR, bound=bound, init_std=0.3)
    if capacity is None:
        owner = torch.as_tensor(placement.owner.astype(np.int64))
        capacity, distinct = find_capacities([b[1] for b in _local(arrays, ctx.rank)], owner, ctx.rank, ctx.world_size, multiple=4)
        assert distinct < BATCH * FIELDS, "the per-id passes must be cut below the batch's ids, or U is not tested"
    cfg = ShardedStepConfig(capacity=capacity, distinct_capacity=distinct, dense_lr=DENSE_LR, compile=compile, implicit_row_grad=implicit)
    return ShardedFastStep.build(_model(), table, placement, ctx, cfg)


def _train_sharded(ctx, placement, bound, arrays, compile=False, ahead=False, optimizer="sgd", implicit=False):
    step = _build(ctx, placement, bound, arrays=arrays, compile=compile, optimizer=optimizer, implicit=implicit)
    batches = _local(arrays, ctx.rank)
    losses = []
    for t, b in enumerate(batches):
        if ahead:  # each step locates and reads the next batch (the last one the first: unused)
            losses.append(step.step(*b, next_ids_BF=batches[(t + 1) % len(batches)][1]).item())
            if t == 2:  # as at an evaluation: everything to the owners, then the batch read anew
                step.flush()
        else:
            losses.append(step.step(*b).item())
    step.check_overflow()
    step.flush()
    # numpy: tensors would travel back through shared memory the finished worker no longer holds
    weights = [p.detach().numpy().copy() for p in step.model.parameters()]
    return step.gather_table().numpy(), step.gather_versions().numpy(), weights, losses, step


def _bound0_worker(ctx, placement, arrays, compile, ahead, optimizer, implicit):
    table, _, weights, losses, step = _train_sharded(ctx, placement, 0, arrays, compile, ahead, optimizer, implicit)
    return table, weights, losses, step.max_lag_served


# 3 workers: one's rank lies between its peers' blocks. compile: the model and the bookkeeping
# around the rounds compiled. ahead: each batch located and read a step ahead (as the benchmarks and
# the trainer run it), with a flush and resync after the third step.
# Row-wise Adagrad: each row's one step at its owner, on every worker's gradient (embedding/fixed/adagrad.py).
# implicit: the rows' gradient made by the update from dloss/dlogit and WDL's row weights.
@pytest.mark.parametrize("world, compile, ahead, optimizer, implicit", [
    (WORLD, False, False, "sgd", False), (3, False, True, "sgd", True), (WORLD, True, True, "sgd", False),
    (WORLD, False, False, "rowwise_adagrad", False), (WORLD, True, True, "rowwise_adagrad", True),
])
def test_bound0_with_mirrors_matches_single_process(world, compile, ahead, optimizer, implicit):
    arrays = _data(world=world)
    placement = plan_like(arrays[0], IDS, world, store_rate=0.2)
    results = run_workers(_bound0_worker, world, args=(placement, arrays, compile, ahead, optimizer, implicit), timeout_s=600)
    cfg = EmbeddingConfig(IDS, DIM, lr=LR, init_std=0.3)
    start = initial_rows(torch.arange(IDS), cfg, torch.device("cpu"))
    model = _model()
    ref = ReferenceStep(model, start.clone(), FastStepConfig(lr=LR, dense_lr=DENSE_LR, sparse_optimizer=optimizer))
    ids, labels, dense = arrays
    ref_losses = [ref.step(torch.as_tensor(dense[t]), torch.as_tensor(ids[t]), torch.as_tensor(labels[t])).item() for t in range(STEPS)]
    # The global batch's mean loss is the workers' mean: a row read one update late shows here first.
    assert np.mean([r[2] for r in results], axis=0) == pytest.approx(ref_losses, rel=1e-6)
    assert not torch.allclose(ref.table_ED, start, atol=1e-3), "the reference must move the table"
    for table, weights, _, max_lag in results:
        torch.testing.assert_close(torch.from_numpy(table), ref.table_ED.detach(), rtol=0, atol=1e-5)
        for got, want in zip(weights, model.parameters()):
            torch.testing.assert_close(torch.from_numpy(got), want.detach(), rtol=0, atol=1e-5)
        assert max_lag == 0


def _bound_worker(ctx, placement, arrays, bound, optimizer, ahead):
    _, versions, _, _, step = _train_sharded(ctx, placement, bound, arrays, ahead=ahead, optimizer=optimizer)
    return versions, step.max_lag_served, step.lagging_reads_served


# ahead: pushes go out with the next batch's reads, and the flush in the middle must not send them twice.
@pytest.mark.parametrize("optimizer, ahead", [("sgd", False), ("rowwise_adagrad", False), ("sgd", True), ("rowwise_adagrad", True)])
def test_bounded_staleness_never_exceeds_bound_and_flush_counts_every_update(optimizer, ahead):
    bound = 3
    arrays = _data(seed=2)
    placement = plan_like(arrays[0], IDS, WORLD, store_rate=0.5)
    results = run_workers(_bound_worker, WORLD, args=(placement, arrays, bound, optimizer, ahead))
    occurrences = np.bincount(arrays[0].ravel(), minlength=IDS)
    lagging = 0
    for versions, max_lag, lagging_reads in results:
        assert np.array_equal(versions, occurrences)
        assert max_lag <= bound
        lagging += lagging_reads
    assert lagging > 0, "some mirror must have been read while lagging, or the test checks nothing"


def _fetch_worker(ctx, modes, arrays):
    out = {}
    for name, (placement, bound) in modes.items():
        step = _build(ctx, placement, bound, arrays=arrays)
        counts = []
        for batch in _local(arrays, ctx.rank):
            before = torch.stack([step.rows_fetched, step.mirror_refreshes, step.mirror_reads]).tolist()
            step.step(*batch)
            after = torch.stack([step.rows_fetched, step.mirror_refreshes, step.mirror_reads]).tolist()
            counts.append(tuple(a - b for a, b in zip(after, before)))
        out[name] = counts
    return out


def recount_fetches(ids, placement, bound, world):
    """Per worker and step, by replaying versions on the host: (rows fetched, mirrors refreshed,
    mirrors read): [world][steps]."""
    primary = np.zeros(IDS, dtype=np.int64)
    mirror = [dict.fromkeys(m.tolist(), 0) for m in placement.mirrors]
    pending = [dict.fromkeys(m.tolist(), 0) for m in placement.mirrors]
    out = [[] for _ in range(world)]
    for t in range(len(ids)):
        batches = [np.unique(ids[t, r * BATCH : (r + 1) * BATCH], return_counts=True) for r in range(world)]
        for r, (uids, _) in enumerate(batches):
            remote = [e for e in uids.tolist() if placement.owner[e] != r]
            stale = [e for e in remote if e not in mirror[r] or mirror[r][e] + bound < primary[e]]
            refreshed = [e for e in stale if e in mirror[r]]
            for e in refreshed:
                mirror[r][e] = primary[e]
            out[r].append((len(stale), len(refreshed), sum(e in mirror[r] for e in remote)))
        for r, (uids, counts) in enumerate(batches):
            for e, c in zip(uids.tolist(), counts.tolist()):
                if e in pending[r]:
                    pending[r][e] += c
                    if pending[r][e] > bound:
                        mirror[r][e] += pending[r][e]
                        primary[e] += pending[r][e]
                        pending[r][e] = 0
                else:
                    primary[e] += c
    return out


def test_rows_fetched_and_mirror_refreshes_match_a_host_recount():
    """Row sharding, the plan at bound 0 and above it, in one pair of workers."""
    arrays = _data(seed=3)
    plan = plan_like(arrays[0], IDS, WORLD, store_rate=0.3)
    modes = {"rows": (Placement.random(IDS, WORLD, seed=4), 0), "plan": (plan, 0), "plan+bound": (plan, 2)}
    got = run_workers(_fetch_worker, WORLD, args=(modes, arrays))
    for name, (placement, bound) in modes.items():
        want = recount_fetches(arrays[0], placement, bound, WORLD)
        assert [g[name] for g in got] == want, name
    fetched = lambda counts: sum(c[0] for per_rank in counts for c in per_rank)  # noqa: E731
    assert fetched(want) < fetched([g["rows"] for g in got]), "mirrors must save fetches"
    fresh = sum(c[2] - c[1] for per_rank in want for c in per_rank)
    assert 0 < fresh < sum(c[2] for per_rank in want for c in per_rank), "some mirror reads fresh, some refreshed"


def _bad_setup_worker(ctx, arrays):
    step = _build(ctx, Placement.random(IDS, WORLD, seed=4), 0, capacity=4)
    for batch in _local(arrays, ctx.rank):
        step.step(*batch)
    with pytest.raises(HetGMPError, match="dropped rows.*capacity >= 256"):
        step.check_overflow()
    cut = _build(ctx, Placement.random(IDS, WORLD, seed=4), 0, capacity=64, distinct=8)  # C fits, U does not
    for batch in _local(arrays, ctx.rank):
        cut.step(*batch)
    with pytest.raises(HetGMPError, match=r"dropped rows.*distinct_capacity=8\).*distinct_capacity >= 256"):
        cut.check_overflow()
    return True


def test_too_small_capacity_is_refused():
    assert all(run_workers(_bad_setup_worker, WORLD, args=(_data(),)))


def test_unique_ids_fixed_shape():
    u = unique_ids(torch.tensor([9, 5, 9, 2, 7]), 10)
    assert u.uids_N.tolist() == [2, 5, 7, 9, 0]
    assert u.valid_N.tolist() == [True, True, True, True, False]
    assert u.counts_N.tolist() == [1, 1, 1, 2, 0]
    assert torch.equal(u.uids_N[u.inverse_N], torch.tensor([9, 5, 9, 2, 7]))


def test_versions_travel_as_the_words_of_an_int64():
    from hetgmp.embedding.fixed.exchange import _from_words, _to_words

    versions = torch.tensor([-1, 0, 5, 2**31, 2**40 + 7, -(2**35), 2**63 - 1])
    assert torch.equal(_to_words(versions), versions.unsqueeze(1).view(torch.int32))
    assert torch.equal(_from_words(_to_words(versions)), versions)


LONG, FLUSH_AT, RELOAD_AT = 20, 6, 12  # steps of the bounded-staleness comparison; a flush, a checkpoint round trip


def _layer_step(table, model, dense_opt, batch, following, world):
    """One step of a plain loop over the table as a layer (the general step's way)."""
    import torch.distributed as dist
    import torch.nn.functional as F

    dense, ids, labels = batch
    loss = F.binary_cross_entropy_with_logits(model(dense, table(ids)), labels.float())
    dense_opt.zero_grad()
    (loss / world).backward()
    for p in model.parameters():
        dist.all_reduce(p.grad)
    table.step(next_ids=following)
    dense_opt.step()
    return loss.item()


def _staleness_worker(ctx, placement, arrays, bound, ahead, optimizer, layer):
    """LONG steps (a flush after FLUSH_AT, and after RELOAD_AT the state saved and loaded into a new
    step, as a resume does; read a step ahead if `ahead`), fused or through the table as a layer;
    then the mirrors' rows and versions as trained, then the flushed table, versions and weights."""
    batches = _local(arrays, ctx.rank)
    step = _build(ctx, placement, bound, arrays=arrays, optimizer=optimizer)
    dense_opt = torch.optim.SGD(step.model.parameters(), lr=DENSE_LR)
    losses = []
    for t, b in enumerate(batches):
        following = batches[(t + 1) % len(batches)][1] if ahead else None  # the last step reads batch 0: unused
        if layer:
            losses.append(_layer_step(step.table, step.model, dense_opt, b, following, ctx.world_size))
        else:
            losses.append(step.step(*b, next_ids_BF=following).item())
        if t == FLUSH_AT:
            step.table.flush()
        if t == RELOAD_AT:
            saved, weights = step.table.state_dict(), copy.deepcopy(step.model.state_dict())
            step = _build(ctx, placement, bound, arrays=arrays, optimizer=optimizer)
            step.model.load_state_dict(weights)
            step.table.load_state_dict(saved)
            dense_opt = torch.optim.SGD(step.model.parameters(), lr=DENSE_LR)
    step.check_overflow()
    s, first = step.table.store, step.table.store.num_primaries
    mirrors = (s.ids[first: first + s.num_mirrors].numpy().copy(), s.rows[first: first + s.num_mirrors].numpy().copy(),
               s.version[first: first + s.num_mirrors].numpy().copy())
    step.flush()
    weights = [p.detach().numpy().copy() for p in step.model.parameters()]
    acc = step.table._gather(s.acc).numpy() if s.acc is not None else None
    return step.gather_table().numpy(), step.gather_versions().numpy(), weights, losses, mirrors, acc


@pytest.mark.parametrize("world, bound, ahead, optimizer, layer", [
    (2, 1, False, "sgd", False), (3, 3, True, "sgd", False), (2, 100, True, "sgd", False), (3, 100, False, "sgd", True),
    (2, 1, True, "rowwise_adagrad", False), (3, 3, False, "rowwise_adagrad", False), (2, 100, False, "rowwise_adagrad", True),
    (3, 100, True, "rowwise_adagrad", False),
])
def test_bounded_staleness_equals_the_per_row_reference(world, bound, ahead, optimizer, layer):
    """SGD and row-wise Adagrad at bound 1, 3, 100 on 2 and 3 workers, the fused step and the table
    as a layer: rows, accumulators, mirrors' copies and versions, primaries' versions, dense weights
    and losses equal SPEC §3 written out per row (tests/staleness_reference.py), across a flush and
    a checkpoint round trip."""
    from staleness_reference import StalenessReference

    adagrad = optimizer == "rowwise_adagrad"
    ids, labels = skewed_batches(IDS, LONG, world * BATCH, FIELDS, seed=7)
    arrays = (ids, labels, np.random.default_rng(7).random((LONG, world * BATCH, DENSE)).astype(np.float32))
    placement = plan_like(ids, IDS, world, store_rate=0.3)
    results = run_workers(_staleness_worker, world, args=(placement, arrays, bound, ahead, optimizer, layer), timeout_s=600)
    start = initial_rows(torch.arange(IDS), EmbeddingConfig(IDS, DIM, lr=LR, init_std=0.3), torch.device("cpu"))
    model = _model()
    ref = StalenessReference(model, start, placement.mirrors, placement.owner, bound, LR, DENSE_LR, adagrad)
    ref_losses = []
    for t in range(LONG):
        ref_losses.append(ref.step(arrays[2][t], ids[t], labels[t]))
        if t in (FLUSH_AT, RELOAD_AT):
            if ahead:  # the step read the next batch before the flush; the next step reads it again after
                ref.read(ids[t + 1])
            ref.flush()
        if t == RELOAD_AT:
            ref.forget()
    if ahead:  # the last step read batch 0's rows (refreshing mirrors) for a step that never came
        ref.read(ids[0])
    refreshed_late = sum(0 <= ref.copy_version[r][e] < int(ref.version[e]) for r in range(world) for e in ref.mirrors[r])
    assert refreshed_late > 0, "some mirror must lag its primary at the end, or the bound is not tested"
    mirror_copies = {r: ref.mirror_rows(r, results[r][4][0]) for r in range(world)}
    mirror_versions = {r: [ref.copy_version[r][int(e)] for e in results[r][4][0]] for r in range(world)}
    ref.flush()
    # Row-wise Adagrad divides by sqrt(acc): sums taken in another order move the last bits more.
    tol = {"rtol": 1e-4, "atol": 1e-5} if adagrad else {"rtol": 0, "atol": 1e-5}
    for r, (table, versions, weights, losses, (mirror_ids, mirror_rows, mirror_version), acc) in enumerate(results):
        assert losses == pytest.approx([ls[r] for ls in ref_losses], rel=1e-5, abs=1e-6), r
        held = torch.as_tensor(mirror_version) >= 0  # a mirror not read since the checkpoint was loaded holds no copy
        assert held.any() and not held.all(), "the comparison must see mirrors re-read after the load, and some not"
        torch.testing.assert_close(torch.from_numpy(mirror_rows)[held], mirror_copies[r][held], **tol)
        assert mirror_version.tolist() == mirror_versions[r]
        torch.testing.assert_close(torch.from_numpy(table), ref.primary, **tol)
        assert versions.tolist() == ref.version.tolist()
        if adagrad:
            torch.testing.assert_close(torch.from_numpy(acc), ref.acc, rtol=1e-5, atol=1e-6)
        for got, want in zip(weights, model.parameters()):
            torch.testing.assert_close(torch.from_numpy(got), want.detach(), rtol=0, atol=1e-5)

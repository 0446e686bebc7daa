"""The sample pass's pieces against plain numpy: own/hot, the exact move delta, the drift bound."""

import numpy as np
import pytest
from partition_graphs import community_graph

from hetgmp.partition import refine, rescore, sample_moves
from hetgmp.partition.reference import alpha_beta
from hetgmp.partition.refine import RefineConfig
from hetgmp.partition.state import random_state

PARTS = 4


@pytest.fixture(scope="module")
def graph():
    return community_graph(4000, fields=8, vocab=500, groups=16, seed=5)


def fresh(ids, seed=0, batch=256):
    return random_state(ids, int(ids.max()) + 1 + 20, PARTS, batch, 2, seed)


def test_flat_top_and_own_dtype():
    assert sample_moves.flat_top(np.array([0.9, 0.5, 1e-8, 1e-9, 0.0])) == 2
    assert sample_moves.flat_top(np.array([0.9, 0.5, 0.0])) == 2  # none below: the last index
    assert sample_moves.own_dtype(8) == np.int8 and sample_moves.own_dtype(128) == np.int16
    assert sample_moves.own_dtype(40000) == np.int32


def test_own_marks_hot_ids_as_numpy_does():
    counts = np.array([[90, 80], [1, 0], [70, 69], [0, 0]], np.int32)
    owner = np.array([1, 0, 1, 0], np.int32)
    own = np.empty(4, np.int8)
    sample_moves.fill_own(counts, owner, 3, own)
    assert own.tolist() == [-1, 0, -1, 0]  # hot iff min over parts of c - 1 - HOT_SPARE >= T: 80 - 65 and 69 - 65 >= 3
    hot = counts.min(axis=1) - 1 - sample_moves.HOT_SPARE >= 3
    assert np.array_equal(own < 0, hot)


def test_sample_delta_is_the_exact_cost_change(graph):
    """delta * B / M equals the change of the SPEC cost when the sample moves (the cost's scale)."""
    st = fresh(graph, batch=64)
    own = np.empty(st.num_ids, np.int8)
    sample_moves.fill_own(st.counts, st.owner, sample_moves.flat_top(st.marginal), own)
    rng = np.random.default_rng(1)
    for i in rng.choice(len(st.part), size=20, replace=False):
        cur = int(st.part[i])
        k = (cur + 1 + int(rng.integers(PARTS - 1))) % PARTS
        before = st.cost()
        delta = sample_moves.sample_delta(st.ids, i, cur, k, own, st.owner, st.counts, st.marginal, st.weights)
        np.add.at(st.counts, (st.ids[i], cur), -1)
        np.add.at(st.counts, (st.ids[i], k), 1)
        st.part[i] = k
        assert st.cost() - before == pytest.approx(delta * st.batch / st.m, rel=1e-9, abs=1e-12)


def full_gaps(st, flat, own):
    """Every sample's gap against the current counts (one chunk, nothing applied)."""
    n = len(st.part)
    gap, best = np.zeros(n, np.float32), np.empty(n, np.int32)
    alpha = alpha_beta(st)[0] * RefineConfig().balance_scale
    wt = np.ascontiguousarray(st.weights.T)
    sample_moves._propose(st.ids, 0, n, st.part, own, st.counts, st.sizes, flat, wt, alpha, best, gap, np.inf)
    return gap


def test_drift_bound_never_overestimates_a_gap(graph):
    """Gaps scored against one state, lowered by the drift to a later state, stay at or below
    the gaps scored against that later state (up to float32 rounding)."""
    st = fresh(graph)
    refiner = refine.Refiner(st)
    refiner.run_round()
    flat = refiner.flat
    own = np.empty(st.num_ids, np.int8)
    sample_moves.fill_own(st.counts, st.owner, len(flat) - 1, own)
    then = (st.counts.copy(), st.owner.copy(), st.sizes.copy(), st.part.copy())
    gap = full_gaps(st, flat, own)
    refiner.run_round()
    moved = st.part != then[3]  # a moved sample's old gap is for another part: it is re-scored anyway
    drift = rescore.id_drift(st.counts, st.owner, then[0], then[1], flat, st.weights)
    alpha = alpha_beta(st)[0] * RefineConfig().balance_scale
    balance = 2 * abs(alpha) * float(np.abs(st.sizes - then[2]).max())
    lowered = gap.copy()
    rescore.lower_gaps(st.ids, drift, lowered, balance, -np.inf)  # -inf: lower every gap fully
    brute = gap - 2 * drift[st.ids].astype(np.float64).sum(axis=1) - balance
    np.testing.assert_allclose(lowered, brute, rtol=1e-5, atol=1e-6)
    now = full_gaps(st, flat, own)  # own as before: the same hot ids are skipped on both sides
    assert np.all(lowered[~moved] <= now[~moved] + 1e-5)
    assert (lowered < gap).any() and (drift > 0).any()

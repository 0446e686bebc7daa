"""The partition cost model and mirror priority against brute force (Python loops, Monte Carlo)."""

import numpy as np
import pytest
from partition_graphs import community_graph

from hetgmp.partition import cost
from hetgmp.partition.graph import count_matrix
from hetgmp.partition.priority import Ranking, candidate_lists
from hetgmp.partition.state import random_state


def brute_counts(ids, part, num_ids, parts):
    c = [[0] * num_ids for _ in range(parts)]
    for i, row in enumerate(ids.tolist()):
        for e in row:
            c[part[i]][e] += 1
    return c


def brute_cost(ids, part, owner, parts, batch, weights):
    """comm[p][q] and the weighted total straight from SPEC §2, with Python loops."""
    n = len(ids)
    m = n / parts
    c = brute_counts(ids, part, len(owner), parts)
    comm = [[0.0] * parts for _ in range(parts)]
    for p in range(parts):
        for e in range(len(owner)):
            soft = (m / batch) * (1 - max(0.0, 1 - c[p][e] / m) ** batch)
            comm[p][owner[e]] += (batch * parts / n) * soft
    total = sum(weights[p][q] * comm[p][q] for p in range(parts) for q in range(parts) if p != q)
    return np.array(comm), total


def test_docstring_example():
    ids = np.array([[0, 1], [0, 2], [1, 2], [1, 2]], dtype=np.int32)
    part, owner = np.array([0, 0, 1, 1], np.int32), np.array([0, 0, 1], np.int32)
    counts = count_matrix(ids, part, 3, 2)
    assert counts.tolist() == [[2, 0], [1, 2], [1, 2]]
    soft = cost.soft_table(4, 2.0, 2)
    comm = cost.traffic_matrix(counts, owner, soft, 2.0, 2)
    assert comm[0, 1] == pytest.approx(0.75) and comm[1, 0] == pytest.approx(1.0)
    assert cost.total_cost(comm, cost.link_weights(2, 8)) == pytest.approx(0.175)


@pytest.mark.parametrize("seed,parts,gpn,batch", [(0, 4, 2, 16), (1, 3, 8, 7), (2, 6, 4, 50)])
def test_cost_matches_brute_force(seed, parts, gpn, batch):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 30, size=(120, 4)).astype(np.int32)
    st = random_state(ids, 35, parts, batch, gpn, seed)  # ids 30..34 unseen
    assert st.counts.T.tolist() == brute_counts(ids, st.part, 35, parts)
    comm, total = brute_cost(ids, st.part, st.owner, parts, batch, st.weights)
    np.testing.assert_allclose(st.traffic(), comm, rtol=1e-12, atol=1e-12)
    assert st.cost() == pytest.approx(total, rel=1e-12)


def test_link_weights():
    w = cost.link_weights(4, 2)
    assert w.tolist() == [[0, 0.1, 1, 1], [0.1, 0, 1, 1], [1, 1, 0, 0.1], [1, 1, 0.1, 0]]
    assert set(cost.link_weights(8, 8)[~np.eye(8, dtype=bool)].tolist()) == {0.1}


def test_soft_table_is_exact_and_flat_past_m():
    m, batch = 37.5, 8
    table = cost.soft_table(10**6, m, batch)
    c = np.arange(len(table))
    np.testing.assert_allclose(table, (m / batch) * (1 - np.clip(1 - c / m, 0, None) ** batch), rtol=1e-12, atol=1e-15)
    assert table[-1] == pytest.approx(m / batch) and len(table) == 40
    np.testing.assert_allclose(cost.marginal_table(table)[:-1], np.diff(table))


def test_remote_rows_formula_matches_monte_carlo():
    """Expected distinct (and remote) rows of a random batch of B samples of a part."""
    ids = community_graph(4000, fields=5, vocab=300, groups=8, seed=3)
    parts, batch = 4, 64
    st = random_state(ids, int(ids.max()) + 1, parts, batch, 1, 0)
    comm = st.traffic()
    rng = np.random.default_rng(0)
    for p in range(parts):
        members = np.flatnonzero(st.part == p)
        distinct, remote = [], []
        for _ in range(400):
            # batches drawn with replacement: the soft count's independence assumption
            rows = np.unique(ids[rng.choice(members, size=batch)])
            distinct.append(len(rows))
            remote.append(int((st.owner[rows] != p).sum()))
        assert np.mean(distinct) == pytest.approx(comm[p].sum(), rel=0.03)
        assert np.mean(remote) == pytest.approx(comm[p].sum() - comm[p, p], rel=0.03)
    count, frac = cost.remote_rows(comm)
    assert frac == pytest.approx(3 / 4, abs=0.03)  # random owners: 1 - 1/P of the rows are remote
    assert count == pytest.approx(np.mean([comm[p].sum() - comm[p, p] for p in range(parts)]))


def _brute_priority(kind, w, s, c, deg, rate, bound):
    if kind == "original":
        return w * s * s * (1 / deg + 1 / c)
    pi, others = s * rate, (deg - c) * rate
    if others == 0:
        return w * pi
    fresh = (bound + 1) / others  # steps a refreshed mirror stays within the bound
    return w * (pi - pi / (pi * fresh + 1))


@pytest.mark.parametrize("kind,bound", [("original", 100), ("staleness", 0), ("staleness", 3)])
def test_priority_lists_match_brute_force(kind, bound):
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 40, size=(200, 3)).astype(np.int32)
    parts, num_ids = 4, 45  # ids 40..44 are read by nobody
    st = random_state(ids, num_ids, parts, 16, 2, 1)
    lists, prios = candidate_lists(st.counts, st.owner, st.deg, st.soft, st.weights, Ranking(kind, bound, 16 / st.m))
    for p in range(parts):
        read, never = [], []
        for e in range(num_ids):
            c = int(st.counts[e, p])
            if st.owner[e] == p:
                continue
            if c == 0:
                never.append(e)
                continue
            s = (st.m / 16) * (1 - (1 - c / st.m) ** 16)
            read.append((-_brute_priority(kind, st.weights[p, st.owner[e]], s, c, st.deg[e], 16 / st.m, bound), e))
        read.sort()
        # every id p does not own: read ids by descending priority (ties by id), then the never-read ids by id
        assert lists[p].tolist() == [e for _, e in read] + never
        assert len(lists[p]) == num_ids - int((st.owner == p).sum())
        np.testing.assert_allclose(prios[p], [-v for v, _ in read], rtol=1e-12)


def test_staleness_ranking_puts_rows_others_update_often_last():
    # part 0 reads id 1 more often than id 0, but part 1 updates id 1 four times a step (40 of its
    # 1000 samples, batch 100): at bound 1 a mirror of id 1 is refreshed at almost every read
    counts = np.array([[3, 0, 0], [10, 40, 0], [0, 0, 1], [0, 0, 1]], np.int32)
    owner = np.array([2, 2, 0, 1], np.int32)
    deg = counts.sum(1).astype(np.int64)
    soft, w = cost.soft_table(int(deg.max()), 1000.0, 100), cost.link_weights(3, 8)
    original, _ = candidate_lists(counts, owner, deg, soft, w, Ranking("original"))
    stale, _ = candidate_lists(counts, owner, deg, soft, w, Ranking("staleness", 1, 100 / 1000.0))
    assert original[0].tolist() == [1, 0, 3]
    assert stale[0].tolist() == [0, 1, 3]


def test_priority_ties_break_by_id():
    # samples [[0, 1], [2, 3]] in parts 0 and 1: ids 0..3 are each read once
    counts = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], np.int32)
    owner = np.array([1, 1, 0, 0], np.int32)
    soft = cost.soft_table(1, 1.0, 2)
    lists, _ = candidate_lists(counts, owner, counts.sum(1).astype(np.int64), soft, cost.link_weights(2, 1))
    assert lists[0].tolist() == [0, 1] and lists[1].tolist() == [2, 3]

"""The single-worker table against the dense reference, initial rows, placement, memory check."""

import numpy as np
import pytest
import torch

from hetgmp.distributed import DistContext
from hetgmp.embedding import EmbeddingConfig, LocalEmbedding, Placement, build_embedding
from hetgmp.embedding.init import CHUNK_IDS, initial_rows
from hetgmp.embedding.reference import reference_run, skewed_batches, train_toy
from hetgmp.errors import HetGMPError

CPU = torch.device("cpu")
SINGLE = DistContext(0, 1, 0, 1, CPU, None)


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.5), ("rowwise_adagrad", 0.05)])
def test_single_worker_matches_dense_reference(optimizer, lr):
    config = EmbeddingConfig(num_ids=300, dim=4, optimizer=optimizer, lr=lr, seed=3)
    ids, labels = skewed_batches(300, steps=20, rows=32, fields=3, seed=1)
    emb = build_embedding(config, None, SINGLE)
    assert isinstance(emb, LocalEmbedding)
    weight = train_toy(emb, ids, labels, 0.1, 0, 1, CPU)
    ref_table, ref_weight = reference_run(config, ids, labels, 0.1, CPU)
    assert torch.allclose(emb.gather_table(), ref_table, atol=1e-5, rtol=0)
    assert torch.allclose(weight, ref_weight, atol=1e-5, rtol=0)
    assert not torch.equal(ref_table, initial_rows(torch.arange(300), config, CPU))  # it did train
    assert int(emb.version.sum()) == ids.size  # one version per occurrence


def test_initial_rows_do_not_depend_on_which_ids_are_drawn():
    config = EmbeddingConfig(num_ids=3 * CHUNK_IDS, dim=3, seed=7, init_std=0.5)
    some = torch.tensor([CHUNK_IDS * 2 + 5, 3, CHUNK_IDS + 1, 3])
    whole = initial_rows(torch.cat([some, torch.arange(10)]), config, CPU)
    assert torch.equal(whole[:4], initial_rows(some, config, CPU))
    assert torch.equal(whole[1], whole[4 + 3])
    assert 0.3 < float(initial_rows(torch.arange(2000), config, CPU).std()) < 0.7
    other = EmbeddingConfig(num_ids=3 * CHUNK_IDS, dim=3, seed=8, init_std=0.5)
    assert not torch.equal(initial_rows(some, other, CPU), whole[:4])


def test_state_dict_round_trip():
    config = EmbeddingConfig(num_ids=50, dim=4, optimizer="rowwise_adagrad", lr=0.1)
    emb = LocalEmbedding(config, CPU)
    emb(torch.tensor([[1, 2], [2, 3]])).sum().backward()
    emb.step()
    fresh = LocalEmbedding(config, CPU)
    fresh.load_state_dict(emb.state_dict())
    assert torch.equal(fresh.gather_table(), emb.gather_table())
    assert torch.equal(fresh.acc, emb.acc) and torch.equal(fresh.version, emb.version)
    sgd_state = {k: v for k, v in emb.state_dict().items() if k != "accumulator"}
    with pytest.raises(HetGMPError, match="lacks accumulator"):
        fresh.load_state_dict(sgd_state)
    with pytest.raises(HetGMPError, match="4 wide"):
        fresh.load_state_dict({**emb.state_dict(), "values": torch.zeros(50, 5)})


def test_ids_outside_the_table_are_refused():
    emb = LocalEmbedding(EmbeddingConfig(num_ids=50, dim=4), CPU)
    with pytest.raises(HetGMPError, match="holds id 50 .* ids 0..49"):
        emb(torch.tensor([[1, 50]]))
    with pytest.raises(HetGMPError, match="holds id -1"):
        emb.read(torch.tensor([[-1, 3]]))


def test_memory_check_says_how_much_and_what_to_change():
    with pytest.raises(HetGMPError, match=r"needs [0-9.]+ GiB per worker .* more workers"):
        LocalEmbedding(EmbeddingConfig(num_ids=10**12, dim=128), CPU)


def test_placement_from_plan_takes_the_top_of_each_list():
    owner = np.array([0, 1, 1, 0, 1, 0])
    lists = [np.array([4, 2, 1]), np.array([0, 5, 3])]
    placement = Placement.from_plan(owner, lists, store_rate=0.5)
    assert [m.tolist() for m in placement.mirrors] == [[4], [0]]
    placement.validate(6, 2)
    with pytest.raises(HetGMPError, match="3 workers were started"):
        placement.validate(6, 3)
    with pytest.raises(HetGMPError, match="owns"):
        Placement(owner, [np.array([0]), np.array([])]).validate(6, 2)
    rand = Placement.random(1000, 4, seed=0)
    assert set(np.unique(rand.owner)) == {0, 1, 2, 3} and all(len(m) == 0 for m in rand.mirrors)


@pytest.mark.parametrize("store_rate", [0.0, 0.01, 1.0])
def test_memory_check_counts_the_mirrors_a_plan_gives(monkeypatch, store_rate):
    from hetgmp.embedding import memory
    from hetgmp.embedding.store import RowStore
    from hetgmp.partition.plan import PartitionPlan

    num_ids, world = 4000, 2
    owner = (np.arange(num_ids) % world).astype(np.int32)
    lists = [np.flatnonzero(owner != p).astype(np.int32) for p in range(world)]  # every id p does not own
    plan = PartitionPlan(owner, np.zeros(10, np.int32), lists, {"parts": world})
    placement = Placement.from_partition(plan, store_rate)
    mirrors = int(np.floor(store_rate * 2000 + 1e-9))
    assert [len(m) for m in placement.mirrors] == [mirrors, mirrors]
    config = EmbeddingConfig(num_ids=num_ids, dim=8, ids_per_batch=64)
    need = memory.memory_bytes(config, world, 2000, mirrors)
    assert need - memory.memory_bytes(config, world, 2000, 0) == mirrors * (2 * 4 * 8 + 24)  # rows + pending per mirror
    monkeypatch.setattr(memory, "available_bytes", lambda device: need)
    store = RowStore(config, placement, 0, CPU)
    assert store.num_mirrors == mirrors and len(store.ids) == 2000 + mirrors
    monkeypatch.setattr(memory, "available_bytes", lambda device: need - 1)
    with pytest.raises(HetGMPError, match=f"2000 primaries \\+ {mirrors} mirrors"):
        RowStore(config, placement, 0, CPU)

"""Re-placing a checkpoint's rows for another worker count or plan (train/reshard.py), on rank files written here.

The CLI runs that resume for real on 1 and 3 workers are in test_train_reshard_runs.py.
"""

import json
import weakref

import numpy as np
import pytest
import torch

from hetgmp.embedding import Placement
from hetgmp.errors import HetGMPError
from hetgmp.train import checkpoint as ckpt
from hetgmp.train import reshard
from hetgmp.train.checkpoint import DamagedCheckpoint, check_meta

NUM_IDS, WIDTH = 50, 4


def _table(seed=0):
    """Global rows, versions and row-wise Adagrad accumulators, one per id."""
    gen = torch.Generator().manual_seed(seed)
    return {"values": torch.randn(NUM_IDS, WIDTH, generator=gen), "versions": torch.randint(0, 99, (NUM_IDS,), generator=gen),
            "accumulator": torch.rand(NUM_IDS, generator=gen)}


def _write_checkpoint(folder, owner, table, step=30, steps_per_epoch=35):
    """A checkpoint folder as save_checkpoint leaves it: rank r holds the ids it owns (ascending), a dense weight r."""
    folder.mkdir(parents=True)
    world = int(owner.max()) + 1
    for rank in range(world):
        ids = torch.from_numpy(np.flatnonzero(owner == rank))
        state = {"step": step, "epoch": 0, "model": {"w": torch.full((2,), float(rank))}, "dense_optimizer": {"state": {}, "param_groups": []},
                 "rng": {"torch": torch.get_rng_state()}, "embedding": {"ids": ids, **{k: v[ids] for k, v in table.items()}}}
        torch.save(state, folder / f"rank-{rank}.pt")
    meta = {"world_size": world, "plan": f"random(seed={world})", "num_ids": NUM_IDS, "step": step, "steps_per_epoch": steps_per_epoch}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def _owners(world, seed):
    return np.random.default_rng(seed).integers(0, world, NUM_IDS).astype(np.int16)


def _placement(owner):
    return Placement(owner, [np.zeros(0, dtype=np.int64)] * (int(owner.max()) + 1))


@pytest.mark.parametrize("saved_world, new_world", [(2, 3), (3, 1), (1, 2)])
def test_rows_accumulators_and_versions_follow_their_global_id(tmp_path, saved_world, new_world):
    table = _table()
    folder = _write_checkpoint(tmp_path / "ck", _owners(saved_world, seed=1), table)
    new_owner = _owners(new_world, seed=2)
    placement = _placement(new_owner) if new_world > 1 else None
    covered = torch.zeros(NUM_IDS, dtype=torch.int64)
    for rank in range(new_world):
        state = reshard.replaced_state(folder, saved_world, reshard.primary_ids(placement, rank, NUM_IDS), NUM_IDS)
        emb = state["embedding"]
        assert torch.equal(emb["ids"], torch.from_numpy(np.flatnonzero(new_owner == rank)))  # ascending, this rank's own
        for key, rows in table.items():
            assert emb[key].dtype == rows.dtype and torch.equal(emb[key], rows[emb["ids"]]), key
        assert torch.equal(state["model"]["w"], torch.zeros(2))  # the dense state is rank 0's
        covered[emb["ids"]] += 1
    assert torch.equal(covered, torch.ones(NUM_IDS, dtype=torch.int64))


def test_rank_files_are_read_one_at_a_time(tmp_path, monkeypatch):
    folder = _write_checkpoint(tmp_path / "ck", _owners(4, seed=1), _table())
    earlier: list[weakref.ref] = []
    alive_at_load: list[int] = []
    load = ckpt.load_rank_state

    def counting_load(folder, rank):
        alive_at_load.append(sum(ref() is not None for ref in earlier))
        state = load(folder, rank)
        earlier.append(weakref.ref(state["embedding"]["values"]))
        return state

    monkeypatch.setattr(ckpt, "load_rank_state", counting_load)
    reshard.replaced_state(folder, 4, torch.arange(NUM_IDS), NUM_IDS)
    assert alive_at_load == [0, 0, 0, 0]


def _rewrite_embedding(path, **changes):
    state = torch.load(path, weights_only=True)
    state["embedding"].update(changes)
    torch.save(state, path)


def test_an_id_no_file_holds_or_two_files_hold_is_refused(tmp_path):
    owner, table = _owners(2, seed=1), _table()
    folder = _write_checkpoint(tmp_path / "missing", owner, table)
    ids = np.flatnonzero(owner == 1)
    kept = torch.from_numpy(ids[1:])
    _rewrite_embedding(folder / "rank-1.pt", ids=kept, **{k: v[kept] for k, v in table.items()})
    with pytest.raises(DamagedCheckpoint, match=rf"1 ids \(e.g. \[{ids[0]}\]\) have a row in none of the rank files of .*missing"):
        reshard.replaced_state(folder, 2, torch.arange(NUM_IDS), NUM_IDS)

    folder = _write_checkpoint(tmp_path / "twice", owner, table)
    stolen = int(np.flatnonzero(owner == 0)[0])
    both = torch.from_numpy(np.sort(np.append(ids, stolen)))
    _rewrite_embedding(folder / "rank-1.pt", ids=both, **{k: v[both] for k, v in table.items()})
    # Only the rank that owns the id under the new placement reads it: each id is checked by exactly one rank.
    with pytest.raises(DamagedCheckpoint, match=rf"id {stolen} has a row in both rank-0.pt and rank-1.pt of .*twice"):
        reshard.replaced_state(folder, 2, torch.tensor([stolen]), NUM_IDS)
    assert len(reshard.replaced_state(folder, 2, torch.tensor([stolen + 1]), NUM_IDS)["embedding"]["ids"]) == 1
    assert reshard.replaced_state(folder, 2, torch.tensor([], dtype=torch.int64), NUM_IDS)["embedding"]["values"].shape == (0, WIDTH)

    _rewrite_embedding(folder / "rank-1.pt", ids=both.flip(0))
    with pytest.raises(DamagedCheckpoint, match=r"rank-1.pt holds ids that are not ascending within the vocabulary 0..49"):
        reshard.replaced_state(folder, 2, torch.arange(NUM_IDS), NUM_IDS)


def test_the_step_keeps_the_epoch_position(tmp_path):
    saved = {"step": 30, "steps_per_epoch": 35, "world_size": 2, "plan": "p"}
    assert reshard.resume_step(tmp_path, saved, 70) == 60  # 1 worker, the same batch: twice the steps per epoch
    assert reshard.resume_step(tmp_path, saved, 24) == 21  # 3 workers: 30 * 24 / 35 = 20.6
    assert reshard.resume_step(tmp_path, {**saved, "step": 70}, 24) == 48  # an epoch's end stays an epoch's end
    assert reshard.resume_step(tmp_path, {**saved, "step": 1}, 10) == 1  # never before the first step
    with pytest.raises(HetGMPError, match=r"lacks steps_per_epoch\): resume it on 2 worker\(s\) with the plan it was written with \(p\)"):
        reshard.resume_step(tmp_path, {"step": 30, "world_size": 2, "plan": "p"}, 70)


def test_only_the_worker_count_and_plan_may_differ(tmp_path):
    folder = tmp_path / "ck"
    folder.mkdir()
    saved = {"model": "wdl", "embed_dim": 16, "table_width": 16, "num_fields": 2, "num_dense": 1, "num_ids": 7, "fields": [3, 4],
             "optimizer": "adam", "sparse_optimizer": "rowwise_adagrad", "world_size": 2, "plan": "random(seed=0)", "step": 4}
    (folder / "meta.json").write_text(json.dumps(saved))
    assert check_meta(folder, {**saved, "world_size": 3, "plan": "0123456789abcdef"}) == saved
    with pytest.raises(HetGMPError, match=r"fields: checkpoint \[3, 4\], this run \[4, 3\]\): resume with the same --model, --embed-dim, "
                                          r"layer sizes, optimizers and dataset \(the worker count and plan may differ\)"):
        check_meta(folder, {**saved, "fields": [4, 3]})
    older = {k: v for k, v in saved.items() if k != "fields"}  # written before checkpoints recorded the field sizes
    (folder / "meta.json").write_text(json.dumps(older))
    assert check_meta(folder, saved) == older

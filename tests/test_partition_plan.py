"""The plan file, PartitionPlan.check, bad input, and `hetgmp partition` end to end."""

import json
import re

import numpy as np
import pytest
from partition_graphs import community_graph, write_dataset

from hetgmp.cli import main
from hetgmp.data.arrays import DatasetMeta
from hetgmp.errors import HetGMPError
from hetgmp.partition.plan import PartitionPlan
from hetgmp.partition.run import PartitionConfig, partition_dataset

SUMMARY_KEYS = {
    "parts", "rounds", "batch_size", "cost_random", "cost_partitioned", "remote_rows_per_batch",
    "remote_rows_per_batch_with_mirrors", "store_rate", "seconds",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    ids = community_graph(3000, fields=6, vocab=300, groups=12, seed=2)
    return write_dataset(tmp_path_factory.mktemp("ds") / "data", ids, num_ids=int(ids.max()) + 1 + 40)


def quiet(_line):
    pass


def test_cli_end_to_end(dataset, tmp_path, capsys):
    out = tmp_path / "plans" / "plan.npz"
    plot = tmp_path / "traffic.png"
    argv = [str(dataset), "-n", "4", "-o", str(out), "-r", "2", "-b", "128", "-g", "2", "--store_rate", "0.05", "--plot", str(plot)]
    assert main(["partition", *argv]) == 0
    printed = capsys.readouterr().out
    assert "round 2/2: cost" in printed and "traffic matrix" in printed
    assert "remote rows per batch: random" in printed and "-> with 5% mirrors" in printed
    mirrors = [int(0.05 * (300 * 6 + 40 - rows)) for rows in json.loads(out.with_suffix(".json").read_text())["rows_per_part"]]
    assert f"mirrors per part {min(mirrors):,}..{max(mirrors):,} of 1,840 ids (staleness ranking for bound 100)" in printed
    assert "plan: " in printed and "candidate lists" in printed
    summary = json.loads(out.with_suffix(".json").read_text())
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["mirrors_per_part"] == mirrors and summary["list_lengths"] == [1840 - r for r in summary["rows_per_part"]]
    assert summary["parts"] == 4 and summary["rounds"] == 2 and summary["batch_size"] == 128 and summary["gpus_per_node"] == 2
    rr = summary["remote_rows_per_batch"]
    assert rr["partitioned"]["fraction"] < rr["random"]["fraction"] and rr["partitioned"]["count"] < rr["random"]["count"]
    assert summary["remote_rows_per_batch_with_mirrors"]["fraction"] <= rr["partitioned"]["fraction"]
    assert summary["cost_partitioned"] < summary["cost_random"]
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:4] == b"\x89PNG"
    with np.load(out, allow_pickle=False) as z:
        assert {"embed_partition", "data_partition", "0", "1", "2", "3", "meta_json", "parts", "costs"} <= set(z.files)
        assert z["embed_partition"].dtype == np.int32 and len(z["embed_partition"]) == 300 * 6 + 40
        assert int(z["parts"]) == 4 and len(z["costs"]) == 3
    assert sorted(p.name for p in out.parent.iterdir()) == ["plan.json", "plan.npz"]


def test_original_spelling_and_algorithm(dataset, tmp_path):
    out = tmp_path / "orig.npz"
    assert main(["partition", str(dataset), "--nrank", "2", "--output", str(out), "--rerun", "1", "--batch_size", "64", "--ngpus", "1", "--algorithm", "original"]) == 0
    plan = PartitionPlan.load(out)
    assert plan.parts == 2 and plan.meta["algorithm"] == "original" and plan.meta["rounds"] == 1


def test_plan_round_trip_and_lists(dataset, tmp_path):
    result = partition_dataset(dataset, PartitionConfig(parts=3, rounds=1, batch_size=64, seed=7), out=quiet)
    path = tmp_path / "p.npz"
    result.plan.save(path)
    plan = PartitionPlan.load(path)
    np.testing.assert_array_equal(plan.embed_partition, result.plan.embed_partition)
    np.testing.assert_array_equal(plan.data_partition, result.plan.data_partition)
    assert plan.meta == json.loads(json.dumps(result.plan.meta))
    ids = np.load(dataset / "train_sparse_feats.npy")
    num_ids = len(plan.embed_partition)
    for p in range(3):
        lst = plan.candidates(p)
        read = np.unique(ids[plan.data_partition == p])
        read_remote = read[plan.embed_partition[read] != p]
        # every id p does not own, the ids it reads first, then the rest by id
        assert sorted(lst.tolist()) == np.flatnonzero(plan.embed_partition != p).tolist()
        assert set(lst[: len(read_remote)].tolist()) == set(read_remote.tolist())
        assert lst[len(read_remote):].tolist() == sorted(set(range(num_ids)) - set(read.tolist()) - set(np.flatnonzero(plan.embed_partition == p).tolist()))
        assert plan.meta["read_candidates"][p] == len(read_remote) and plan.meta["list_lengths"][p] == len(lst)
        for rate, expected in ((0.0, 0), (0.01, int(0.01 * len(lst))), (0.1, int(0.1 * len(lst))), (1.0, len(lst))):
            np.testing.assert_array_equal(plan.mirror_ids(p, rate), lst[:expected])
    unseen = np.setdiff1d(np.arange(num_ids), np.unique(ids))
    assert len(unseen) >= 40 and set(np.unique(plan.embed_partition[unseen])) <= {0, 1, 2}
    with pytest.raises(HetGMPError, match="outside"):
        plan.mirror_ids(0, 1.5)


def _original_script_plan(path, owner: np.ndarray, data_partition: np.ndarray, priority: np.ndarray) -> list[np.ndarray]:
    """What HET-GMP's partition.py writes: per part, argsort of the whole priority row with the owned
    ids set to -1, the owned ones dropped, reversed (int64 lists); no metadata."""
    arrays = {"embed_partition": owner, "data_partition": data_partition}
    for i in range(priority.shape[0]):
        row = priority[i].copy()
        owned = np.where(owner == i)[0]
        row[owned] = -1
        arrays[str(i)] = np.argsort(row)[len(owned):][::-1]
    np.savez(path, **arrays)
    return [arrays[str(i)] for i in range(priority.shape[0])]


def test_an_original_format_plan_loads_with_the_same_mirror_count(tmp_path):
    rng = np.random.default_rng(3)
    parts, num_ids = 3, 500
    owner = rng.integers(0, parts, num_ids).astype(np.int32)
    priority = np.where(rng.random((parts, num_ids)) < 0.3, rng.random((parts, num_ids)), 0.0)  # 70% never read
    lists = _original_script_plan(tmp_path / "orig.npz", owner, rng.integers(0, parts, 100).astype(np.int32), priority)
    plan = PartitionPlan.load(tmp_path / "orig.npz")
    from hetgmp.embedding.placement import Placement

    for rate in (0.0, 0.01, 0.05, 1.0):
        placement = Placement.from_partition(plan, rate)
        for p in range(parts):
            expected = int(np.floor(rate * (num_ids - (owner == p).sum()) + 1e-9))
            assert len(placement.mirrors[p]) == len(plan.mirror_ids(p, rate)) == expected
            np.testing.assert_array_equal(placement.mirrors[p], lists[p][:expected])
        placement.validate(num_ids, parts)
    assert plan.candidates(0).dtype == np.int64 and len(plan.candidates(0)) == num_ids - (owner == 0).sum()


def test_compact_lists_rebuild_the_whole_list(dataset, tmp_path):
    full = partition_dataset(dataset, PartitionConfig(parts=3, rounds=1, batch_size=64, seed=7), out=quiet).plan
    compact = partition_dataset(dataset, PartitionConfig(parts=3, rounds=1, batch_size=64, seed=7, compact_lists=True), out=quiet).plan
    full.save(tmp_path / "full.npz")
    compact.save(tmp_path / "compact.npz")
    assert (tmp_path / "compact.npz").stat().st_size < (tmp_path / "full.npz").stat().st_size
    loaded = PartitionPlan.load(tmp_path / "compact.npz")
    for p in range(3):
        assert len(loaded.lists[p]) == loaded.meta["read_candidates"][p] < loaded.list_length(p)
        np.testing.assert_array_equal(loaded.candidates(p), full.lists[p])
        for rate in (0.01, 0.5, 1.0):
            np.testing.assert_array_equal(loaded.mirror_ids(p, rate), full.mirror_ids(p, rate))


def test_same_seed_same_plan(dataset):
    a = partition_dataset(dataset, PartitionConfig(parts=2, rounds=1, batch_size=64, seed=3), out=quiet).plan
    b = partition_dataset(dataset, PartitionConfig(parts=2, rounds=1, batch_size=64, seed=3), out=quiet).plan
    np.testing.assert_array_equal(a.data_partition, b.data_partition)
    np.testing.assert_array_equal(a.embed_partition, b.embed_partition)
    assert all(np.array_equal(x, y) for x, y in zip(a.lists, b.lists))


def test_check_against_run(dataset, tmp_path):
    plan = partition_dataset(dataset, PartitionConfig(parts=4, rounds=0, batch_size=64, gpus_per_node=4), out=quiet).plan
    meta_json = json.loads((dataset / "meta.json").read_text())
    meta = DatasetMeta.from_json(meta_json)
    ids = np.load(dataset / "train_sparse_feats.npy")
    plan.check(meta, 4, gpus_per_node=4, train_ids=ids)
    with pytest.raises(HetGMPError, match=r"partition has 4 parts but 2 workers were started: re-run `hetgmp partition .* --parts 2 --output .*` .* or start 4 workers"):
        plan.check(meta, 2)
    bigger = DatasetMeta.from_json({**meta_json, "fields": meta.fields[:-1] + [meta.fields[-1] + 1], "num_ids": meta.num_ids + 1})
    with pytest.raises(HetGMPError, match="vocabulary size"):
        plan.check(bigger, 4)
    with pytest.raises(HetGMPError, match="train rows"):
        plan.check(DatasetMeta.from_json({**meta_json, "train_rows": 5}), 4)
    with pytest.raises(HetGMPError, match="GPUs per node"):
        plan.check(meta, 4, gpus_per_node=8)
    changed = ids.copy()
    changed[0, 0] = (changed[0, 0] + 1) % meta.num_ids
    with pytest.raises(HetGMPError, match="fingerprint"):
        plan.check(meta, 4, train_ids=changed)


def test_bare_folder_uses_max_id(tmp_path, capsys):
    ids = community_graph(500, fields=3, vocab=50, groups=4, seed=1)
    folder = write_dataset(tmp_path / "bare", ids, meta=False)
    assert main(["partition", str(folder), "-n", "2", "-o", str(tmp_path / "b.npz"), "-r", "1"]) == 0
    assert "num_ids from max id + 1" in capsys.readouterr().out
    assert len(PartitionPlan.load(tmp_path / "b.npz").embed_partition) == int(ids.max()) + 1


def bad_folder(tmp_path, ids, num_ids=None):
    return write_dataset(tmp_path / "bad", ids, num_ids=num_ids)


@pytest.mark.parametrize(
    "make,flags,message",
    [
        (lambda t: bad_folder(t, np.array([[0, 1], [2, 9]], np.int32), num_ids=5), [], r"id 9 at row 1, column 1 is outside the vocabulary of 5"),
        (lambda t: bad_folder(t, np.array([[0, 1], [-3, 2]], np.int32), num_ids=5), [], r"ids must be >= 0, found -3 at row 1, column 0"),
        (lambda t: bad_folder(t, np.array([[0.5, 1.0]]), num_ids=2), [], r"ids must be integers, found dtype float64"),
        (lambda t: bad_folder(t, np.array([[0, 1], [1, 0]], np.int32)), ["-n", "3"], r"--parts 3 is more than the 2 train samples"),
        (lambda t: bad_folder(t, np.array([[0, 1], [1, 0]], np.int32)), ["-n", "0"], r"argument --parts/-n/--nrank: must be at least 1, got 0"),
        (lambda t: bad_folder(t, np.array([[0, 1], [1, 0]], np.int32)), ["--store-rate", "1.5"], r"argument --store-rate/--store_rate: must be in \[0, 1\], got 1.5"),
        (lambda t: bad_folder(t, np.array([[0, 1], [1, 0]], np.int32)), ["--store-rate", "-0.1"], r"argument --store-rate/--store_rate: must be in \[0, 1\], got -0.1"),
        (lambda t: t / "missing", [], r"is not a directory"),
    ],
)
def test_bad_input(tmp_path, capsys, make, flags, message):
    folder = make(tmp_path)
    out = tmp_path / "x.npz"
    assert main(["partition", str(folder), "-o", str(out), "-n", "2", *flags, "-r", "1"]) == 2
    err = capsys.readouterr().err
    assert "hetgmp partition: error:" in err
    assert re.search(message, err), err
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_missing_plan_file(tmp_path):
    with pytest.raises(HetGMPError, match="run `hetgmp partition"):
        PartitionPlan.load(tmp_path / "none.npz")

"""`hetgmp synth`: format, compaction against a reference encoder, determinism,
planted labels, community structure, and the command line."""

import json
import subprocess
import sys

import numpy as np
import pytest

from hetgmp.data.arrays import array_name, load_dataset
from hetgmp.data.synth_kernels import _zipf
from hetgmp.data.synth_world import SynthConfig, build_world, group_probabilities, sample_chunk, zipf_rank, zipf_span
from hetgmp.data.synthetic import generate_synthetic, solve_bias

SMALL = dict(rows=20_000, seed=7, scale=0.01, chunk_rows=7_000)  # 3 chunks; the split falls inside the last


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    generate_synthetic(out, save_groups=True, **SMALL)
    return out


def _all_rows(ds, kind):
    return np.concatenate([np.asarray(getattr(ds.train, kind)), np.asarray(getattr(ds.test, kind))])


def test_format_and_meta_round_trip(small):
    ds = load_dataset(small)
    meta = ds.meta
    assert (meta.train_rows, meta.test_rows, meta.num_fields, meta.num_dense) == (18_000, 2_000, 26, 13)
    assert ds.train.sparse.dtype == np.int32 and ds.train.dense.dtype == np.float32
    on_disk = json.loads((small / "meta.json").read_text())
    assert on_disk["dataset"] == "synthetic" and on_disk["generator"]["chunk_rows"] == 7_000
    assert {"planted_auc", "planted_auc_train", "click_rate", "vocab_caps", "planted_bias"} <= on_disk.keys()
    labels = _all_rows(ds, "labels")
    assert set(np.unique(labels)) == {0.0, 1.0} and on_disk["click_rate"] == pytest.approx(labels.mean())
    dense = _all_rows(ds, "dense")
    assert dense.min() == 0.0 and (dense == 0).mean() > 0.05 and dense.max() > 5 * dense.mean()


def test_ids_compacted_like_an_encoder(small):
    """Redraw the raw ids chunk by chunk and encode them by sorted unique per field."""
    ds = load_dataset(small)
    config = SynthConfig(**{k: v for k, v in SMALL.items()})
    world = build_world(config)
    raw = np.concatenate([sample_chunk(world, np.random.default_rng([config.seed, 0, c]), n)[0]
                          for c, n in enumerate((7_000, 7_000, 6_000))])
    sparse = _all_rows(ds, "sparse")
    assert np.array_equal(np.unique(sparse), np.arange(ds.meta.num_ids))  # every id used
    for f, (size, offset, cap) in enumerate(zip(ds.meta.fields, ds.meta.offsets, ds.meta.extra["vocab_caps"])):
        uniques, local = np.unique(raw[:, f], return_inverse=True)
        assert len(uniques) == size <= cap
        assert np.array_equal(sparse[:, f], local.reshape(-1) + offset)


def test_same_seed_same_bytes_other_seed_other_data(small, tmp_path):
    again = tmp_path / "again"
    generate_synthetic(again, save_groups=True, **SMALL)
    names = [array_name(s, k) for s in ("train", "test") for k in ("dense", "sparse", "labels")]
    for name in names + ["train_groups.npy"]:
        assert (again / name).read_bytes() == (small / name).read_bytes(), name
    other = tmp_path / "other"
    generate_synthetic(other, **{**SMALL, "seed": 8})
    assert (other / names[1]).read_bytes() != (small / names[1]).read_bytes()


def test_click_rate_and_planted_auc_at_100k(tmp_path):
    meta = generate_synthetic(tmp_path / "ds", rows=100_000, scale=0.05)
    assert abs(meta.extra["click_rate"] - 0.25) < 0.02
    assert 0.77 <= meta.extra["planted_auc"] <= 0.83
    assert 0.77 <= meta.extra["planted_auc_train"] <= 0.83


def test_bias_solver_hits_the_click_rate():
    z = np.random.default_rng(0).normal(0.3, 1.7, 100_000).astype(np.float32)
    b = solve_bias(z, 0.25)
    assert abs(np.mean(1 / (1 + np.exp(-(z.astype(np.float64) + b)))) - 0.25) < 1e-8


def test_zipf_kernel_matches_reference_and_law():
    u = np.random.default_rng(0).random(200_000)
    for n, s in ((3, 1.05), (1_000, 1.0), (10_131_227, 1.05), (50, 0.8)):
        span, inv_a = zipf_span(n, s)
        fast = np.array([_zipf(x, n, float(span), inv_a) for x in u[:2_000]])
        assert np.array_equal(fast, zipf_rank(u[:2_000], n, s))
    ranks = zipf_rank(u, 50, 0.8)
    freq = np.bincount(ranks, minlength=50) / len(u)
    assert np.abs(freq - group_probabilities(50, 0.8)).max() < 0.005
    assert freq[0] > 5 * freq[-1]  # skewed even with few values


def test_community_structure(small):
    """Whole communities per part leave far fewer distinct large-field ids than
    random parts, yet communities still share ids (not all private)."""
    ds = load_dataset(small)
    groups = np.load(small / "train_groups.npy")
    large = [f for f, cap in enumerate(ds.meta.extra["vocab_caps"]) if cap > SynthConfig(rows=2).large_field]
    assert len(large) == 5  # C3, C4, C12, C16, C21 at scale 0.01
    ids = np.asarray(ds.train.sparse)[:, large]

    def distinct_per_part(part):
        return sum(len(np.unique(ids[part == p])) for p in range(8))

    by_group = groups % 8
    random = np.random.default_rng(0).integers(0, 8, len(groups))
    assert distinct_per_part(by_group) < 0.75 * distinct_per_part(random)
    pairs = np.unique(np.stack([np.repeat(groups, ids.shape[1]), ids.ravel()]), axis=1)
    groups_per_id = np.bincount(np.unique(pairs[1], return_inverse=True)[1])
    assert 0.02 < (groups_per_id > 1).mean() < 0.5


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "hetgmp.cli", "synth", *args], capture_output=True, text=True)


def test_cli_end_to_end_and_force(tmp_path):
    out = tmp_path / "cli"
    done = _cli("--rows", "3000", "--output", str(out), "--scale", "0.001", "--seed", "1")
    assert done.returncode == 0, done.stderr
    assert "planted AUC" in done.stdout and load_dataset(out).meta.train_rows == 2_700
    before = (out / "train_sparse_feats.npy").read_bytes()
    refused = _cli("--rows", "3000", "--output", str(out), "--seed", "2")
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert (out / "train_sparse_feats.npy").read_bytes() == before
    forced = _cli("--rows", "3000", "--output", str(out), "--scale", "0.001", "--seed", "2", "--force")
    assert forced.returncode == 0 and (out / "train_sparse_feats.npy").read_bytes() != before
    bad = _cli("--rows", "1", "--output", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "argument --rows: must be at least 2, got 1" in bad.stderr and not (tmp_path / "bad").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli"]


def test_a_split_left_empty_is_refused(tmp_path, capsys):
    from hetgmp.cli import main

    assert main(["synth", "--rows", "10", "--test-fraction", "0.01", "--output", str(tmp_path / "ds")]) == 2
    assert "--rows 10 with --test-fraction 0.01 leaves an empty split: raise --rows" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()

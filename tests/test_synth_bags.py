"""`hetgmp synth --multi-hot-sizes`: the bags' layout and padding, the planted logit
against a numpy reference, labels a bag-aware fit predicts, and bad flags refused."""

import numpy as np
import pytest
from scipy import sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from hetgmp.cli import main
from hetgmp.data.arrays import array_name, load_dataset
from hetgmp.data.synth_world import PAIRS, SynthConfig, build_world, parse_bag_sizes, sample_chunk
from hetgmp.data.synthetic import generate_synthetic

MLPERF_BAGS = (3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1)
ROWS = 24_000
KNOBS = dict(rows=ROWS, seed=3, scale=0.0005, chunk_rows=10_000, bag_sizes=MLPERF_BAGS)


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    out = tmp_path_factory.mktemp("bags") / "ds"
    generate_synthetic(out, **KNOBS)
    return load_dataset(out)


def _bag_columns(meta):
    return np.concatenate([[0], np.cumsum(meta.bag_sizes)])


def test_bags_layout_meta_and_padding(bags):
    meta = bags.meta
    assert meta.bag_sizes == list(MLPERF_BAGS) and meta.id_columns == sum(MLPERF_BAGS) == 214
    assert bags.train.sparse.shape == (meta.train_rows, 214) and bags.test.sparse.shape == (meta.test_rows, 214)
    assert meta.padding_ids == [0 if k > 1 else None for k in MLPERF_BAGS]
    ids = np.concatenate([bags.train.sparse, bags.test.sparse])
    pad = ids == meta.padding_columns()
    starts = _bag_columns(meta)
    for f, k in enumerate(MLPERF_BAGS):
        field_ids, field_pad = ids[:, starts[f] : starts[f + 1]], pad[:, starts[f] : starts[f + 1]]
        assert ((field_ids >= meta.offsets[f]) & (field_ids < meta.offsets[f] + meta.fields[f])).all(), f
        assert not field_pad[:, 0].any(), f  # every bag holds at least one id
        assert (np.diff(field_pad.astype(np.int8), axis=1) >= 0).all(), f  # the padding follows the ids
        if k > 1:  # lengths uniform over 1..k: a fraction (k - 1) / 2k of the slots is padding
            assert field_pad.mean() == pytest.approx((k - 1) / (2 * k), abs=0.02), f


def _masked_mean(values_NKR, keep_NK):
    return (values_NKR.astype(np.float64) * keep_NK[..., None]).sum(1) / keep_NK.sum(1)[:, None]


def _reference_logit(world, raw, dense):
    """The planted logit written out: per field, the mean weight over the bag's ids (padding left
    out); the dense part; for each pair of PAIRS, the dot product of the bags' mean factors."""
    pad_raw = np.where(world.padded == 1, world.raw_offsets, -1)
    bag = lambda f: raw[:, world.bag_start[f] : world.bag_start[f + 1]]  # noqa: E731
    keep = lambda f: bag(f) != pad_raw[f]  # noqa: E731
    z = sum(_masked_mean(world.weights[bag(f)][..., None], keep(f))[:, 0] for f in range(len(world.caps)))
    z = z + dense.astype(np.float64) @ world.dense[4]
    for a, b in PAIRS:
        mean_a = _masked_mean(world.factors[world.factor_base[a] + bag(a)], keep(a))
        mean_b = _masked_mean(world.factors[world.factor_base[b] + bag(b)], keep(b))
        z = z + (mean_a * mean_b).sum(1)
    return z


def test_planted_logit_mean_pools_the_bags():
    config = SynthConfig(**{**KNOBS, "rows": 3_000})
    world = build_world(config)
    raw, dense, z, _ = sample_chunk(world, np.random.default_rng(0), 3_000)
    assert raw.shape == (3_000, 214)
    np.testing.assert_allclose(z, _reference_logit(world, raw, dense), rtol=1e-5, atol=1e-5)
    assert (world.weights[world.raw_offsets[world.padded == 1]] == 0).all()


def _pooled_indicators(split, meta, first_only):
    """CSR (rows, num_ids): each field's ids with weight 1 / (ids in its bag), padding left out;
    with first_only, each bag's first id alone (weight 1)."""
    ids = np.asarray(split.sparse)
    keep = ids != meta.padding_columns()
    if first_only:
        keep = np.zeros_like(keep)
        keep[:, _bag_columns(meta)[:-1]] = True
    field_of_column = np.repeat(np.arange(meta.num_fields), meta.bag_sizes)
    counts = np.zeros((len(ids), meta.num_fields))
    np.add.at(counts, (np.arange(len(ids))[:, None].repeat(ids.shape[1], 1)[keep], field_of_column[None].repeat(len(ids), 0)[keep]), 1)
    weights = (keep / np.maximum(counts[:, field_of_column], 1))[keep]
    rows = np.nonzero(keep)[0]
    pooled = sp.csr_matrix((weights, (rows, ids[keep])), shape=(len(ids), meta.num_ids))
    return sp.hstack([pooled, sp.csr_matrix(np.asarray(split.dense))]).tocsr()


def test_labels_follow_the_bags(bags):
    """The planted logits rank the test labels well, and a logistic fit on the mean-pooled bags beats
    one on each bag's first id alone: the labels depend on every id of a bag."""
    meta = bags.meta
    assert meta.extra["planted_auc"] > 0.7
    aucs = {}
    for first_only in (False, True):
        train, test = (_pooled_indicators(s, meta, first_only) for s in (bags.train, bags.test))
        fit = LogisticRegression(C=0.3, max_iter=2000).fit(train, np.asarray(bags.train.labels))
        aucs[first_only] = roc_auc_score(np.asarray(bags.test.labels), fit.decision_function(test))
    assert aucs[False] > meta.extra["planted_auc"] - 0.06, aucs
    assert aucs[False] > aucs[True] + 0.02, aucs


def test_sizes_of_one_are_the_one_hot_rows(tmp_path):
    one_hot = generate_synthetic(tmp_path / "a", rows=2_000, seed=1, scale=0.001)
    ones = generate_synthetic(tmp_path / "b", rows=2_000, seed=1, scale=0.001, bag_sizes=(1,) * 26)
    for split in ("train", "test"):
        for kind in ("sparse", "dense", "labels"):
            name = array_name(split, kind)
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert ones.bag_sizes == one_hot.bag_sizes == [1] * 26 and ones.padding_ids == [None] * 26


@pytest.mark.parametrize("text,message", [
    ("3,2", "--multi-hot-sizes has 2 sizes, but there are 26 fields"),
    ("0", "--multi-hot-sizes 0: 0 is not a bag size"),
    ("2," * 25 + "-1", "-1 is not a bag size"),
    ("2,x", "--multi-hot-sizes '2,x': expected integers separated by commas"),
    ("1.5", "expected integers"),
    ("", "expected integers"),
])
def test_bad_multi_hot_sizes_are_refused(text, message, tmp_path, capsys):
    assert main(["synth", "--rows", "100", "--output", str(tmp_path / "ds"), "--multi-hot-sizes", text]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hetgmp synth: error: --multi-hot-sizes") and message in err, err
    assert not (tmp_path / "ds").exists()


def test_one_size_for_all_fields():
    assert parse_bag_sizes("4") == (4,) * 26 and parse_bag_sizes(",".join(map(str, MLPERF_BAGS))) == MLPERF_BAGS

"""`prepare criteo` against a plain-Python reference on small raw files with the format's quirks."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from hetgmp.data.arrays import load_dataset
from hetgmp.data.criteo import CRITEO, prepare_criteo
from hetgmp.data.encode import PrepareConfig, split_sizes
from hetgmp.data.vocab import decode_ids, load_vocab
from prepare_reference import criteo_text, encode_reference, shuffled_order

SMALL_BLOCK = 4096  # bytes per parsed batch: many batches even for small files


def _prepare(tmp_path: Path, text: str | bytes, name: str = "train.txt", **kwargs) -> Path:
    raw = tmp_path / name
    raw.write_bytes(text.encode() if isinstance(text, str) else text)
    out = tmp_path / f"out-{name}"
    kwargs.setdefault("block_size", SMALL_BLOCK)
    prepare_criteo(PrepareConfig(raw, out, progress=False, **kwargs))
    return out


def _all_rows(out: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ds = load_dataset(out)
    return tuple(np.concatenate([getattr(ds.train, k), getattr(ds.test, k)]) for k in ("dense", "sparse", "labels"))


def _assert_matches_reference(out: Path, text: str, seed: int = 0) -> None:
    rows = [line.split("\t") for line in text.splitlines()]
    ref = encode_reference(rows, 13)
    order = shuffled_order(len(rows), seed)
    dense, sparse, labels = _all_rows(out)
    ds = load_dataset(out)
    assert ds.meta.fields == ref["fields"]
    assert ds.meta.num_ids == sum(ref["fields"]) and ds.meta.seed == seed
    assert ds.train.sparse.dtype == np.int32 and ds.train.dense.dtype == np.float32
    np.testing.assert_array_equal(sparse, ref["sparse"][order])
    np.testing.assert_array_equal(labels, ref["labels"][order])
    np.testing.assert_allclose(dense, ref["dense"][order], rtol=1e-6, atol=1e-7)
    vocab = load_vocab(out)
    assert [[s.decode() for s in vocab[f"C{f + 1}"]] for f in range(26)] == ref["vocabs"]


@pytest.mark.parametrize(
    "crlf, trailing, odd_from",
    [(False, True, None), (True, False, None), (False, False, 150), (True, True, 0)],
    ids=["lf", "crlf-no-final-newline", "non-hex-values-from-row-150", "crlf-non-hex"],
)
def test_matches_reference_encoder(tmp_path, crlf, trailing, odd_from):
    text = criteo_text(400, seed=7, crlf=crlf, trailing_newline=trailing, odd_from=odd_from)
    _assert_matches_reference(_prepare(tmp_path, text), text.replace("\r\n", "\n"))


def test_quirks_row_by_row(tmp_path):
    """Empty fields, negatives, missing categoricals, CRLF and no final newline in one hand-written file."""
    rows = [
        ["1", "", "-3", "0", "-1", "5", "", "", "", "", "", "", "", "7", "68fd1e64", "", *["-1"] * 24],
        ["0", "2", "-1", "", "", "", "", "", "", "", "", "", "", "", "", "80e26c9b", *["00000000"] * 24],
    ]
    text = "\r\n".join("\t".join(r) for r in rows)
    out = _prepare(tmp_path, text, val_fraction=0.0)
    dense, sparse, labels = _all_rows(out)
    by_label = {int(lab): i for i, lab in enumerate(labels)}
    first, second = by_label[1], by_label[0]
    np.testing.assert_allclose(dense[first, :5], [0.0, -1.0, 0.0, -1.0, np.log(6)], rtol=1e-6)
    np.testing.assert_allclose(dense[second, :3], [np.log(3), -1.0, 0.0], rtol=1e-6)
    assert decode_ids(out, sparse[[first]], list(CRITEO.categorical), load_dataset(out).meta.offsets)[0][:3] == ["68fd1e64", "-1", "-1"]
    # C1: "-1" (missing) sorts before the hex value, so it gets local id 0.
    assert sparse[second, 0] == 0 and sparse[first, 0] == 1


def test_decode_ids_gives_back_the_raw_strings(tmp_path):
    text = criteo_text(300, seed=3, odd_from=100)
    out = _prepare(tmp_path, text)
    meta = load_dataset(out).meta
    _, sparse, _ = _all_rows(out)
    order = shuffled_order(300, 0)
    raw = [[v or "-1" for v in line.split("\t")[14:]] for line in text.splitlines()]
    decoded = decode_ids(out, sparse, list(CRITEO.categorical), meta.offsets)
    assert decoded == [raw[i] for i in order]
    assert meta.extra["vocab"]["file"] == "vocab.npz" and meta.extra["dataset"] == "criteo"


def test_gzip_and_tar_inputs_give_the_same_dataset(tmp_path):
    text = criteo_text(250, seed=11, crlf=True).encode()
    plain = _prepare(tmp_path, text, "train.txt")
    gz = _prepare(tmp_path, gzip.compress(text), "train.txt.gz")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name, data in (("readme.txt", b"not data\n"), ("test.txt", b"x\ty\n"), ("train.txt", text)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tgz = _prepare(tmp_path, archive.getvalue(), "dac.tar.gz")
    for other in (gz, tgz):
        for a, b in zip(_all_rows(plain), _all_rows(other)):
            np.testing.assert_array_equal(a, b)
    assert load_dataset(tgz).meta.extra["source"].endswith("dac.tar.gz")


def test_tar_without_train_txt_is_an_error(tmp_path):
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        info = tarfile.TarInfo("readme.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    from hetgmp.errors import HetGMPError

    with pytest.raises(HetGMPError, match="no file named train.txt.*readme.txt"):
        _prepare(tmp_path, archive.getvalue(), "dac.tar.gz")
    assert not (tmp_path / "out-dac.tar.gz").exists()


@pytest.mark.parametrize("rows, fraction", [(1000, 0.1), (999, 0.1), (10, 0.25), (50, 0.0)])
def test_split_sizes(tmp_path, rows, fraction):
    out = _prepare(tmp_path, criteo_text(rows, seed=rows), val_fraction=fraction, block_size=1 << 20)
    meta = load_dataset(out).meta
    train, test = split_sizes(rows, fraction)
    assert (meta.train_rows, meta.test_rows) == (train, test)
    assert test == -(-rows * fraction // 1) and train + test == rows
    assert load_dataset(out).test.sparse.shape == (test, 26)


def test_seed_determinism(tmp_path):
    text = criteo_text(300, seed=5)
    a = _all_rows(_prepare(tmp_path, text, "a.txt", seed=1))
    b = _all_rows(_prepare(tmp_path, text, "b.txt", seed=1, block_size=1 << 20))  # batches do not matter
    c = _all_rows(_prepare(tmp_path, text, "c.txt", seed=2))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], c[1])
    # Same rows, other order.
    assert sorted(map(tuple, a[1].tolist())) == sorted(map(tuple, c[1].tolist()))
    _assert_matches_reference(tmp_path / "out-c.txt", text, seed=2)

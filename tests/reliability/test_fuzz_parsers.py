"""Scenario 5: fuzzing the Criteo and Avazu readers with hypothesis.

Random bytes and mutated valid files must either prepare a dataset or raise
HetGMPError (never another exception, never a partial output directory), and
valid rows drawn by hypothesis must encode exactly as the plain-Python
reference encoder (tests/prepare_reference.py) says.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hetgmp.data.arrays import load_dataset
from hetgmp.data.avazu import prepare_avazu
from hetgmp.data.criteo import prepare_criteo
from hetgmp.data.encode import PrepareConfig
from hetgmp.errors import HetGMPError
from prepare_reference import criteo_text, encode_reference, shuffled_order

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
PREPARE = {"criteo": prepare_criteo, "avazu": prepare_avazu}
AVAZU_HEADER = ("id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,device_id,"
                "device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21")


def _prepare(dataset: str, raw: bytes, name: str = "train.txt") -> Path | None:
    """Prepare `raw`; returns the dataset folder, or None after a HetGMPError (which must leave nothing)."""
    root = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        (root / name).write_bytes(raw)
        out = root / "out"
        try:
            PREPARE[dataset](PrepareConfig(root / name, out, progress=False, block_size=1024))
        except HetGMPError:
            assert sorted(p.name for p in root.iterdir()) == [name], "a failed prepare left output behind"
            return None
        kept = Path(tempfile.mkdtemp(prefix="fuzz-out-")) / "out"
        shutil.move(out, kept)
        return kept
    finally:
        shutil.rmtree(root)


def _valid_avazu(rows: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = [AVAZU_HEADER]
    for i in range(rows):
        cells = [str(i), str(rng.randint(0, 1))] + [rng.choice(["", "1005", "a1b2", f"{rng.randint(0, 99)}"]) for _ in range(22)]
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


SEEDS = {"criteo": criteo_text(30, seed=11).encode(), "avazu": _valid_avazu(30, seed=11).encode()}
NOISE = st.sampled_from([b"\t", b"\n", b"\r\n", b",", b'"', b"\x00", b"\xff\xfe", b"-", b"1", b"", b"abc", b"\t\t\t", b"\xe9"])


# pyarrow decodes a wrong-width row's text as UTF-8 before calling the reader's
# invalid-row handler; for invalid UTF-8 that decode fails inside pyarrow, which
# reports it as "ignored" and stops the parse (a HetGMPError here). Known, see RELIABILITY.md.
ARROW_DECODE = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@ARROW_DECODE
@FUZZ
@given(dataset=st.sampled_from(sorted(PREPARE)), raw=st.binary(max_size=3000))
def test_random_bytes_prepare_or_raise_our_error(dataset, raw):
    _check_accepted(_prepare(dataset, raw))


@ARROW_DECODE
@FUZZ
@given(
    dataset=st.sampled_from(sorted(PREPARE)),
    edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 6), NOISE), min_size=1, max_size=6),
)
def test_mutated_valid_files_prepare_or_raise_our_error(dataset, edits):
    raw = bytearray(SEEDS[dataset])
    for where, cut, insert in edits:
        at = int(where * len(raw))
        raw[at: at + cut] = insert  # replace `cut` bytes at `at` with a byte sequence the formats care about
    _check_accepted(_prepare(dataset, bytes(raw)))


def _check_accepted(out: Path | None) -> None:
    """Whatever a reader accepted is a well-formed dataset (then removed); None means it refused."""
    if out is None:
        return
    ds = load_dataset(out)
    assert ds.meta.train_rows + ds.meta.test_rows > 0
    assert set(np.unique(ds.train.labels)) <= {0.0, 1.0}
    shutil.rmtree(out.parent)


CRITEO_CELL = st.text(st.characters(blacklist_characters="\t\n\r", blacklist_categories=("Cs",)), max_size=6)
AVAZU_CELL = st.text(st.characters(blacklist_characters=',"\n\r', blacklist_categories=("Cs",)), max_size=6)
DENSE = st.one_of(st.just(""), st.integers(-5, 10**12).map(str))


def _criteo_rows(n: int) -> st.SearchStrategy:
    row = st.tuples(st.sampled_from(["0", "1"]), st.lists(DENSE, min_size=13, max_size=13), st.lists(CRITEO_CELL, min_size=26, max_size=26))
    return st.lists(row.map(lambda r: [r[0], *r[1], *r[2]]), min_size=n, max_size=n)


def _assert_matches(out: Path, rows: list[list[str]], dense_columns: int) -> None:
    ref = encode_reference(rows, dense_columns)
    order = shuffled_order(len(rows), 0)
    ds = load_dataset(out)
    assert ds.meta.fields == ref["fields"]
    np.testing.assert_array_equal(np.concatenate([ds.train.sparse, ds.test.sparse]), ref["sparse"][order])
    np.testing.assert_array_equal(np.concatenate([ds.train.labels, ds.test.labels]), ref["labels"][order])
    if dense_columns:
        np.testing.assert_allclose(np.concatenate([ds.train.dense, ds.test.dense]), ref["dense"][order], rtol=1e-6)


@FUZZ
@given(rows=st.integers(10, 16).flatmap(_criteo_rows))
def test_valid_criteo_rows_match_the_reference(rows):
    out = _prepare("criteo", ("\n".join("\t".join(r) for r in rows) + "\n").encode())
    assert out is not None
    _assert_matches(out, rows, 13)
    shutil.rmtree(out.parent)


@FUZZ
@given(rows=st.lists(st.tuples(st.sampled_from(["0", "1"]), st.lists(AVAZU_CELL, min_size=22, max_size=22)), min_size=10, max_size=16))
def test_valid_avazu_rows_match_the_reference(rows):
    lines = [AVAZU_HEADER] + [",".join([str(i), label, *cells]) for i, (label, cells) in enumerate(rows)]
    out = _prepare("avazu", ("\n".join(lines) + "\n").encode(), name="train.csv")
    assert out is not None
    _assert_matches(out, [[label, *cells] for label, cells in rows], 0)
    shutil.rmtree(out.parent)

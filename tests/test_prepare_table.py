"""`hetgmp prepare table`: CSV/TSV and Parquet inputs against a plain-Python reference encoding."""

from __future__ import annotations

import gzip
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hetgmp.data.arrays import load_dataset
from hetgmp.data.encode import PrepareConfig
from hetgmp.data.table import TableSpec, prepare_from_table
from hetgmp.data.table_input import CsvOptions
from hetgmp.data.vocab import load_vocab
from prepare_reference import shuffled_order

ROWS = 400


def make_rows(rows: int = ROWS, seed: int = 0) -> list[dict]:
    """Rows with strings, integers, floats, missing values and variable-length bags."""
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        out.append({
            "click": rng.randint(0, 1),
            "price": None if rng.random() < 0.1 else round(rng.uniform(-3, 500), 3),
            "user": None if rng.random() < 0.1 else f"u{int(rng.paretovariate(1.2)) % 60}",
            "item": None if rng.random() < 0.1 else rng.choice([7, 12, 100, 3, 2500, -4]),
            "tags": None if rng.random() < 0.05 else [rng.choice("abcdefg") + rng.choice("xyz") for _ in range(rng.randint(0, 5))],
        })
    return out


def _text(value) -> str:
    return "" if value is None else str(value)


def write_csv(path: Path, rows: list[dict], delimiter: str = ",", header: bool = True) -> None:
    lines = [delimiter.join(rows[0])] if header else []
    for r in rows:
        cells = [_text(r["click"]), _text(r["price"]), _text(r["user"]), _text(r["item"]), "" if r["tags"] is None else "|".join(r["tags"])]
        lines.append(delimiter.join(cells))
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def parquet_table(rows: list[dict]) -> pa.Table:
    return pa.table({
        "click": pa.array([r["click"] for r in rows], pa.int8()),
        "price": pa.array([r["price"] for r in rows], pa.float64()),
        "user": pa.array([r["user"] for r in rows], pa.string()),
        "item": pa.array([r["item"] for r in rows], pa.int64()),
        "tags": pa.array([r["tags"] for r in rows], pa.list_(pa.string())),
    })


def reference(rows: list[dict], bag: int | None = None, min_count: int = 1, text: bool = False) -> dict:
    """Sorted string label encoding per field, missing "-1"; bags padded with local id 0.

    In text (`text`) an empty bag and a missing one are both an empty cell, read as missing."""
    user = ["-1" if r["user"] is None else r["user"] for r in rows]
    item = ["-1" if r["item"] is None else str(r["item"]) for r in rows]
    tags = [["-1"] if r["tags"] is None or (text and not r["tags"]) else r["tags"] for r in rows]
    size = bag or max(len(t) for t in tags)
    tags = [t[:size] for t in tags]
    fields, columns = [], []
    for values, multi in ((user, False), (item, False), (tags, True)):
        flat = [v for bag_ in values for v in bag_] if multi else values
        counts = {v: flat.count(v) for v in set(flat)}
        kept = sorted(v for v, c in counts.items() if c >= min_count)
        specials = int(multi) + int(min_count > 1)
        rare = int(multi) if min_count > 1 else None
        local = {v: specials + i for i, v in enumerate(kept)}
        code = lambda v: local.get(v, rare)  # noqa: E731
        base = sum(fields)
        if multi:
            columns += [[base + (code(t[j]) if j < len(t) else 0) for t in values] for j in range(size)]
        else:
            columns.append([base + code(v) for v in values])
        fields.append(specials + len(kept))
    dense = [0.0 if r["price"] is None else r["price"] for r in rows]
    dense = [math.log(x + 1) if x > -1 else -1.0 for x in dense]
    return {"fields": fields, "sparse": np.array(columns).T, "dense": np.array(dense, np.float32)[:, None],
            "labels": np.array([r["click"] for r in rows], np.float32), "bag": size}


def prepare(inputs, out: Path, **spec) -> Path:
    spec.setdefault("dense", ("price",))
    spec.setdefault("sparse", ("user", "item"))
    spec.setdefault("multi_hot", ("tags",))
    prepare_from_table(TableSpec(inputs=list(inputs), label="click", **spec),
                       PrepareConfig(Path(inputs[0]), out, seed=3, val_fraction=0.25, progress=False, block_size=2048))
    return out


def assert_matches(out: Path, ref: dict) -> None:
    ds = load_dataset(out)
    assert ds.meta.fields == ref["fields"]
    assert ds.meta.extra["bag_sizes"] == [1, 1, ref["bag"]]
    order = shuffled_order(len(ref["labels"]), 3)
    sparse = np.concatenate([ds.train.sparse, ds.test.sparse])
    np.testing.assert_array_equal(sparse, ref["sparse"][order])
    np.testing.assert_allclose(np.concatenate([ds.train.dense, ds.test.dense]), ref["dense"][order], rtol=1e-6)
    np.testing.assert_array_equal(np.concatenate([ds.train.labels, ds.test.labels]), ref["labels"][order])


def test_csv_strings_integers_missing_and_bags_match_the_reference(tmp_path):
    rows = make_rows()
    write_csv(tmp_path / "a.csv", rows)
    assert_matches(prepare([tmp_path / "a.csv"], tmp_path / "ds"), reference(rows, text=True))


def test_parquet_files_and_folder_match_the_csv(tmp_path):
    rows = make_rows()
    (tmp_path / "parts").mkdir()
    pq.write_table(parquet_table(rows[:150]), tmp_path / "parts" / "part-0.parquet", row_group_size=40)
    pq.write_table(parquet_table(rows[150:]), tmp_path / "parts" / "part-1.parquet", row_group_size=64)
    ref = reference(rows)
    assert_matches(prepare([tmp_path / "parts"], tmp_path / "from_folder"), ref)
    files = [tmp_path / "parts" / "part-0.parquet", tmp_path / "parts" / "part-1.parquet"]
    assert_matches(prepare(files, tmp_path / "from_files"), ref)


def test_gzipped_tsv_without_header_and_parquet_integer_lists(tmp_path):
    rows = make_rows(200, seed=1)
    write_csv(tmp_path / "a.tsv.gz", rows, delimiter="\t", header=False)
    names = ("click", "price", "user", "item", "tags")
    prepare([tmp_path / "a.tsv.gz"], tmp_path / "ds", csv=CsvOptions(column_names=names))
    assert_matches(tmp_path / "ds", reference(rows, text=True))
    # Integer lists are encoded by their decimal strings, like integer columns.
    table = parquet_table(rows).set_column(4, "tags", pa.array([None if r["tags"] is None else [len(t) for t in r["tags"]] for r in rows], pa.list_(pa.int32())))
    pq.write_table(table, tmp_path / "ints.parquet")
    as_text = [{**r, "tags": None if r["tags"] is None else [str(len(t)) for t in r["tags"]]} for r in rows]
    assert_matches(prepare([tmp_path / "ints.parquet"], tmp_path / "ints"), reference(as_text))


def test_vocab_decodes_every_id_back_to_its_value(tmp_path):
    rows = make_rows()
    pq.write_table(parquet_table(rows), tmp_path / "a.parquet")
    ds = load_dataset(prepare([tmp_path / "a.parquet"], tmp_path / "ds", bag_sizes={"tags": 3}))
    vocab, info = load_vocab(tmp_path / "ds"), ds.meta.extra["vocab"]["field_info"]
    assert [f["name"] for f in info] == ["user", "item", "tags"] and info[2]["padding_id"] == 0
    assert ds.meta.padding_ids == [None, None, 0]
    assert ds.meta.padding_columns().tolist() == [-1, -1] + [ds.meta.offsets[2]] * 3
    assert info[2]["truncated_bags"] == sum(1 for r in rows if r["tags"] and len(r["tags"]) > 3)
    sparse = np.concatenate([ds.train.sparse, ds.test.sparse])
    source = [rows[i] for i in shuffled_order(len(rows), 3)]
    off = ds.meta.offsets
    for ids, row in zip(sparse, source):
        assert vocab["user"][ids[0] - off[0]].decode() == (row["user"] or "-1")
        assert vocab["item"][ids[1] - off[1]].decode() == ("-1" if row["item"] is None else str(row["item"]))
        bag = [vocab["tags"][i - off[2]].decode() for i in ids[2:] if i != off[2] + info[2]["padding_id"]]
        assert bag == (["-1"] if row["tags"] is None else row["tags"][:3])
    for name, values in vocab.items():
        assert list(values) == sorted(values), name


def test_min_count_sends_rare_values_to_one_rare_id(tmp_path):
    rows = make_rows()
    write_csv(tmp_path / "a.csv", rows)
    ref = reference(rows, min_count=5, text=True)
    assert_matches(prepare([tmp_path / "a.csv"], tmp_path / "ds", min_count=5), ref)
    info = load_dataset(tmp_path / "ds").meta.extra["vocab"]["field_info"]
    assert [f.get("rare_id") for f in info] == [0, 0, 1]
    assert ref["fields"][0] < len({r["user"] for r in rows}) + 1  # some users were rare


def fnv1a(text: str, buckets: int) -> int:
    h = 0xCBF29CE484222325
    for byte in (text or "-1").encode():
        h = ((h ^ byte) * 0x100000001B3) % 2**64
    return h % buckets


def test_hash_buckets_for_all_or_one_column(tmp_path):
    rows = make_rows()
    write_csv(tmp_path / "a.csv", rows)
    ds = load_dataset(prepare([tmp_path / "a.csv"], tmp_path / "all", hash_buckets=50, multi_hot=()))
    assert ds.meta.fields == [50, 50] and load_vocab(tmp_path / "all") == {}  # hashed fields need no vocabulary
    order = shuffled_order(len(rows), 3)
    expected = np.array([[fnv1a(_text(rows[i]["user"]), 50), 50 + fnv1a(_text(rows[i]["item"]), 50)] for i in order])
    np.testing.assert_array_equal(np.concatenate([ds.train.sparse, ds.test.sparse]), expected)
    ds = load_dataset(prepare([tmp_path / "a.csv"], tmp_path / "one", hash_columns={"tags": 7}))
    ref = reference(rows)
    assert ds.meta.fields == ref["fields"][:2] + [1 + 7]  # padding + 7 buckets
    tags = np.concatenate([ds.train.sparse, ds.test.sparse])[:, 2:] - ds.meta.offsets[2]
    for bag, i in zip(tags, order):
        values = rows[i]["tags"] or ["-1"]  # an empty cell is a missing bag
        assert list(bag) == [1 + fnv1a(v, 7) for v in values] + [0] * (ref["bag"] - len(values))


ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}


def cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hetgmp.cli", *args], capture_output=True, text=True, env=ENV, timeout=timeout)


@pytest.mark.slow
def test_one_hot_and_multi_hot_tables_train(tmp_path):
    rows = make_rows(3000, seed=2)
    write_csv(tmp_path / "a.csv", rows)
    made = cli("prepare", "table", "-i", str(tmp_path / "a.csv"), "--label", "click", "--dense", "price", "--sparse", "user,item,tags",
               "-o", str(tmp_path / "ds"), "--no-progress")
    assert made.returncode == 0, made.stderr
    assert "3,000" not in made.stdout and "2,700 train + 300 test rows" in made.stdout
    trained = cli("train", "--data", str(tmp_path / "ds"), "--iter", "4", "--batch-size", "256", "--device", "cpu", "--val", "--no-progress",
                  "--metrics", str(tmp_path / "m.jsonl"), timeout=300)
    assert trained.returncode == 0, trained.stderr
    assert '"phase": "eval"' in (tmp_path / "m.jsonl").read_text()
    bags = cli("prepare", "table", "-i", str(tmp_path / "a.csv"), "--label", "click", "--multi-hot", "tags", "-o", str(tmp_path / "bags"), "--no-progress")
    assert bags.returncode == 0, bags.stderr
    trained = cli("train", "--data", str(tmp_path / "bags"), "--iter", "4", "--batch-size", "256", "--device", "cpu", "--val",
                  "--no-progress", "--metrics", str(tmp_path / "bags.jsonl"), timeout=300)
    assert trained.returncode == 0, trained.stderr
    assert '"phase": "eval"' in (tmp_path / "bags.jsonl").read_text()


def test_parquet_types_encode_like_their_strings(tmp_path):
    """Dictionary, large-string, unsigned and boolean columns give the ids of the same values as text."""
    rows = make_rows(120, seed=5)
    base = parquet_table(rows)
    pq.write_table(base, tmp_path / "plain.parquet")
    users = base.column("user").combine_chunks()
    typed = pa.table({
        "click": pa.array([bool(r["click"]) for r in rows]),
        "price": pa.array([None if r["price"] is None else str(r["price"]) for r in rows]),
        "user": users.dictionary_encode(),
        "item": pa.array([None if r["item"] is None else str(r["item"]) for r in rows], pa.large_string()),
        "tags": pa.array([r["tags"] for r in rows], pa.large_list(pa.string())),
    })
    pq.write_table(typed, tmp_path / "typed.parquet")
    plain, other = (load_dataset(prepare([tmp_path / f"{n}.parquet"], tmp_path / n)) for n in ("plain", "typed"))
    for split in ("train", "test"):
        for kind in ("sparse", "dense", "labels"):
            np.testing.assert_array_equal(getattr(getattr(plain, split), kind), getattr(getattr(other, split), kind))
    assert load_vocab(tmp_path / "plain")["item"].tolist() == load_vocab(tmp_path / "typed")["item"].tolist()


@pytest.mark.parametrize("transform, expected", [
    ("criteo", [math.log(3.5), 0.0, -1.0, math.log(1e6 + 1)]),
    ("log", [math.log(3.5), 0.0, -math.log(6), math.log(1e6 + 1)]),
    ("none", [2.5, 0.0, -5.0, 1e6]),
])
def test_dense_transforms_and_a_quoted_delimiter(tmp_path, transform, expected):
    (tmp_path / "a.txt").write_text('click;x;city\n1;2.5;"Paris; France"\n0;;Rome\n1;-5;Rome\n0;1e6;\n')
    prepare([tmp_path / "a.txt"], tmp_path / "ds", dense=("x",), sparse=("city",), multi_hot=(), dense_transform=transform,
            csv=CsvOptions(delimiter=";"))
    ds = load_dataset(tmp_path / "ds")
    order = shuffled_order(4, 3)
    np.testing.assert_allclose(np.concatenate([ds.train.dense, ds.test.dense])[:, 0], np.array(expected, np.float32)[order], rtol=1e-6)
    assert load_vocab(tmp_path / "ds")["city"].tolist() == [b"-1", "Paris; France".encode(), b"Rome"]

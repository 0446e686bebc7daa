"""Bad input for `hetgmp prepare table`: a clear error, exit 2, nothing left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hetgmp.cli import main
from hetgmp.data.arrays import load_dataset
from test_prepare_table import ENV, make_rows, parquet_table, write_csv


def run(tmp_path: Path, capsys, *args: str) -> str:
    """Run the command; it must fail with exit 2 and leave only the inputs in tmp_path."""
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["prepare", "table", "--output", str(tmp_path / "ds"), "--no-progress", *args]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    err = capsys.readouterr().err
    assert err.startswith("hetgmp prepare table: error: ") and "Traceback" not in err
    return err


@pytest.fixture
def csv(tmp_path) -> Path:
    write_csv(tmp_path / "a.csv", make_rows(50))
    return tmp_path / "a.csv"


@pytest.mark.parametrize("flags, message", [
    (["--sparse", "user,user"], "column user is named more than once"),
    (["--dense", "price", "--sparse", "user,price"], "column price is named more than once"),
    (["--sparse", "user,nosuch"], "has no column nosuch; its columns are: click, price, user, item, tags"),
    (["--label", "clicked"], "has no column clicked; its columns are: click, price"),
    (["--hash-buckets", "0"], "--hash-buckets is 0; a hashed field needs at least 1 bucket"),
    (["--hash-buckets", "user=0"], "--hash-buckets user= is 0"),
    (["--hash-buckets", "many"], "--hash-buckets 'many': expected an integer N or COLUMN=N"),
    (["--multi-hot", "tags", "--bag-size", "tags=0"], "--bag-size tags=0; a bag holds at least 1 value"),
    (["--multi-hot", "tags", "--bag-size", "tags"], "--bag-size 'tags': expected COLUMN=INTEGER"),
    (["--sparse", "user", "--bag-size", "user=2"], "--bag-size names user, a --sparse column"),
    (["--dense", "user"], "line 2 of"),
    (["--delimiter", ";;"], "--delimiter is ';;'; give one character"),
])
def test_bad_flags_and_columns(tmp_path, capsys, csv, flags, message):
    flags = flags if "--label" in flags else ["--label", "click", *flags]
    assert message in run(tmp_path, capsys, "--input", str(csv), *flags)


def test_csv_label_not_0_or_1_names_line_and_value(tmp_path, capsys):
    text = "click,user\n1,a\n0,b\n" + "1,c\n" * 3000 + "yes,d\n2.0,e\n"
    (tmp_path / "a.csv").write_text(text)
    err = run(tmp_path, capsys, "--input", str(tmp_path / "a.csv"), "--label", "click", "--block-size", "4096")
    assert f"line 3004 of {tmp_path / 'a.csv'}: label column click is 'yes'; labels must be 0 or 1" in err


def test_csv_row_with_wrong_column_count(tmp_path, capsys):
    (tmp_path / "a.csv").write_text("click,user\n1,a\n0,b,extra\n")
    err = run(tmp_path, capsys, "--input", str(tmp_path / "a.csv"), "--label", "click")
    assert "line 3 of" in err and "has 3 columns, expected 2" in err


def test_parquet_label_and_unsupported_types(tmp_path, capsys):
    rows = make_rows(30)
    table = parquet_table(rows)
    bad_label = table.set_column(0, "click", pa.array([0] * 20 + [2] + [1] * 9, pa.int64()))
    pq.write_table(bad_label, tmp_path / "label.parquet", row_group_size=8)
    err = run(tmp_path, capsys, "--input", str(tmp_path / "label.parquet"), "--label", "click", "--sparse", "user")
    assert f"row 21 of {tmp_path / 'label.parquet'}: label column click is 2" in err
    odd = table.append_column("where", pa.array([{"x": 1}] * 30)).append_column("score", pa.array([0.5] * 30))
    odd = odd.append_column("floats", pa.array([[0.5]] * 30))
    pq.write_table(odd, tmp_path / "odd.parquet")
    for flags, message in (
        (["--sparse", "where"], "column where of"),
        (["--sparse", "score"], "has type double, which --sparse cannot take"),
        (["--sparse", "user", "--multi-hot", "floats"], "has type list<element: double>, which --multi-hot cannot take"),
    ):
        assert message in run(tmp_path, capsys, "--input", str(tmp_path / "odd.parquet"), "--label", "click", *flags)


def test_empty_inputs(tmp_path, capsys):
    (tmp_path / "header.csv").write_text("click,user\n")
    assert "holds no rows" in run(tmp_path, capsys, "--input", str(tmp_path / "header.csv"), "--label", "click")
    pq.write_table(parquet_table(make_rows(5)).slice(0, 0), tmp_path / "empty.parquet")
    assert "holds no rows" in run(tmp_path, capsys, "--input", str(tmp_path / "empty.parquet"), "--label", "click", "--sparse", "user")
    (tmp_path / "folder").mkdir()
    assert "holds no data files" in run(tmp_path, capsys, "--input", str(tmp_path / "folder"), "--label", "click")
    assert "does not exist" in run(tmp_path, capsys, "--input", str(tmp_path / "nothing.csv"), "--label", "click")


def test_cli_exit_2_without_traceback_and_existing_output_kept(tmp_path, csv):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "keep.txt").write_text("mine")
    cmd = [sys.executable, "-m", "hetgmp.cli", "prepare", "table", "-i", str(csv), "--label", "click", "--hash-buckets", "0",
           "-o", str(tmp_path / "ds"), "--force"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "--hash-buckets is 0" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "ds"] and (tmp_path / "ds" / "keep.txt").read_text() == "mine"


def test_text_labels_may_be_written_as_floats(tmp_path, capsys):
    (tmp_path / "a.csv").write_text("click,user\n1.0,a\n0.0,b\n1,c\n0,d\n")
    assert main(["prepare", "table", "-i", str(tmp_path / "a.csv"), "--label", "click", "-o", str(tmp_path / "ok"), "--no-progress"]) == 0
    ds = load_dataset(tmp_path / "ok")
    assert sorted([*ds.train.labels, *ds.test.labels]) == [0, 0, 1, 1]
    (tmp_path / "b.csv").write_text("click,user\n1.0,a\n2.0,b\n")
    err = run(tmp_path, capsys, "--input", str(tmp_path / "b.csv"), "--label", "click")
    assert f"line 3 of {tmp_path / 'b.csv'}: label column click is '2.0'" in err

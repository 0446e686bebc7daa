"""Bad input for `prepare`: errors name line, column and value; output stays atomic."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest

from hetgmp.data.arrays import load_dataset
from hetgmp.data.criteo import CRITEO, prepare_criteo
from hetgmp.data.encode import PrepareConfig
from hetgmp.data.reader import BatchReader
from hetgmp.errors import HetGMPError
from prepare_reference import criteo_line, criteo_text


def _lines(rows: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [criteo_line(rng) for _ in range(rows)]


def _run(tmp_path: Path, lines: list[str], end: str = "\n", **kwargs) -> Path:
    raw = tmp_path / "train.txt"
    raw.write_text(end.join(lines) + end)
    out = tmp_path / "out"
    prepare_criteo(PrepareConfig(raw, out, progress=False, block_size=4096, **kwargs))
    return out


def _leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name != "train.txt")


def _with_cell(line: str, column: int, value: str) -> str:
    cells = line.split("\t")
    cells[column] = value
    return "\t".join(cells)


@pytest.mark.parametrize(
    "line_no, column, value, expected",
    [
        (3, 3, "abc", "column I3 is 'abc', expected an integer or empty"),
        (117, 0, "2", "column label is '2', expected 0 or 1"),
        (200, 13, "1.5", "column I13 is '1.5', expected an integer"),
        (250, 0, "", "column label is '', expected 0 or 1"),
    ],
)
def test_bad_value_names_line_column_value(tmp_path, line_no, column, value, expected):
    lines = _lines(300)
    lines[line_no - 1] = _with_cell(lines[line_no - 1], column, value)
    with pytest.raises(HetGMPError, match=f"line {line_no} of .*train.txt: {expected}.*--skip-bad-rows"):
        _run(tmp_path, lines, end="\r\n")
    assert _leftovers(tmp_path) == []  # no dataset, no temporary directory


def test_wrong_column_count_and_empty_line(tmp_path):
    lines = _lines(300)
    lines[149] = "\t".join(lines[149].split("\t")[:38])
    with pytest.raises(HetGMPError, match="line 150 of .*has 38 columns, expected 40"):
        _run(tmp_path, lines)
    lines = _lines(300)
    lines[40] = ""  # an empty line is a row of empty values: its label is bad
    with pytest.raises(HetGMPError, match="line 41 of .*column label is ''"):
        _run(tmp_path, lines)
    assert _leftovers(tmp_path) == []


def test_skip_bad_rows_counts_and_reports(tmp_path):
    lines = _lines(400)
    lines[9] = "\t".join(lines[9].split("\t")[:20])  # width, line 10
    lines[299] = _with_cell(lines[299], 5, "x7")  # I5, line 300
    lines[349] = lines[349] + "\textra"  # width, line 350
    lines[389] = _with_cell(lines[389], 0, "yes")  # label, line 390
    out = _run(tmp_path, lines, skip_bad_rows=True)
    meta = load_dataset(out).meta
    assert meta.extra["bad_rows_skipped"] == 4
    assert meta.train_rows + meta.test_rows == 396
    assert meta.extra["first_bad_row"].startswith("line 10 of")


def test_line_numbers_count_skipped_rows():
    """Emitted rows shift by one for every skipped (wrong-width) row on an earlier line."""
    reader = BatchReader(source=None, layout=CRITEO, block_size=1)  # type: ignore[arg-type]
    reader.invalid_lines.extend([2, 5, 6])
    # Physical lines 1, 3, 4, 7, 8 are emitted rows 0..4.
    assert [reader.line_of(k) for k in range(5)] == [1, 3, 4, 7, 8]


def test_existing_output_needs_force_and_survives_errors(tmp_path):
    raw = tmp_path / "train.txt"
    raw.write_text(criteo_text(100, seed=1))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(HetGMPError, match="already exists.*--force"):
        prepare_criteo(PrepareConfig(raw, out, progress=False))
    # --force replaces only a dataset hetgmp wrote, never a folder of the user's own files.
    with pytest.raises(HetGMPError, match="folder without meta.json, so not a dataset hetgmp wrote"):
        prepare_criteo(PrepareConfig(raw, out, progress=False, force=True))
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    prepare_criteo(PrepareConfig(raw, tmp_path / "ds", progress=False))
    before = {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()}
    bad = tmp_path / "bad.txt"
    bad.write_text(criteo_text(100, seed=1) + "1\t2\n")
    with pytest.raises(HetGMPError, match="line 101"):
        prepare_criteo(PrepareConfig(bad, tmp_path / "ds", progress=False, force=True))
    assert {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()} == before
    prepare_criteo(PrepareConfig(raw, tmp_path / "ds", progress=False, force=True, seed=3))
    assert load_dataset(tmp_path / "ds").meta.seed == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "ds", "out", "train.txt"]


def test_truncated_gzip_is_reported(tmp_path):
    raw = tmp_path / "train.txt.gz"
    data = gzip.compress(criteo_text(2000, seed=2).encode())
    raw.write_bytes(data[: len(data) // 2])
    with pytest.raises(HetGMPError, match="truncated or damaged"):
        prepare_criteo(PrepareConfig(raw, tmp_path / "out", progress=False, block_size=4096))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "kwargs, message", [({"val_fraction": 1.0}, "--val-fraction"), ({"seed": -1}, "--seed"), ({"block_size": 0}, "--block-size")]
)
def test_bad_settings(tmp_path, kwargs, message):
    raw = tmp_path / "train.txt"
    raw.write_text(criteo_text(10, seed=1))
    with pytest.raises(HetGMPError, match=message):
        prepare_criteo(PrepareConfig(raw, tmp_path / "out", progress=False, **kwargs))


def test_missing_input_and_no_rows(tmp_path):
    with pytest.raises(HetGMPError, match="does not exist"):
        prepare_criteo(PrepareConfig(tmp_path / "nope.txt", tmp_path / "out", progress=False))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(HetGMPError, match="0 usable rows|cannot be parsed"):
        prepare_criteo(PrepareConfig(empty, tmp_path / "out", progress=False))
    assert not (tmp_path / "out").exists()


def test_input_inside_output_is_refused_even_with_force(tmp_path):
    out = tmp_path / "criteo"
    out.mkdir()
    raw = out / "train.txt"
    raw.write_text(criteo_text(50, seed=1))
    with pytest.raises(HetGMPError, match="lies inside --output"):
        prepare_criteo(PrepareConfig(raw, out, progress=False, force=True))
    assert raw.read_text() == criteo_text(50, seed=1)

"""`prepare avazu` and the `hetgmp prepare` command line, end to end."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

from hetgmp.cli import main
from hetgmp.data.arrays import load_dataset
from hetgmp.data.avazu import AVAZU, prepare_avazu
from hetgmp.data.criteo import prepare_criteo
from hetgmp.data.encode import PrepareConfig
from hetgmp.data.vocab import decode_ids
from prepare_reference import criteo_text, encode_reference, shuffled_order

HEADER = "id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21"


def avazu_text(rows: int, seed: int) -> str:
    rng = random.Random(seed)
    hexes = lambda n: f"{rng.randint(0, n):08x}"  # noqa: E731
    lines = [HEADER]
    for _ in range(rows):
        cells = [str(rng.randint(10**18, 10**19)), str(rng.randint(0, 1)), f"141021{rng.randint(0, 23):02d}"]
        cells += [str(rng.choice([1001, 1005, 1010])), str(rng.randint(0, 7))]
        cells += [hexes(30) for _ in range(6)] + [hexes(10), hexes(5000), hexes(9)]  # site_*, app_*, device_id/ip/model
        cells += [str(rng.randint(0, 5)), str(rng.choice([0, 2, 3]))]
        cells += [str(rng.choice([375, 9, 24052, 15706, 100])), "320", "50", str(rng.randint(100, 2500)), "0", "35", rng.choice(["-1", "100084"]), "79"]
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def test_avazu_matches_reference(tmp_path):
    text = avazu_text(300, seed=4)
    raw = tmp_path / "train.gz"
    raw.write_bytes(gzip.compress(text.encode()))
    out = tmp_path / "avazu"
    prepare_avazu(PrepareConfig(raw, out, progress=False, block_size=4096))
    rows = [line.split(",") for line in text.splitlines()[1:]]
    ref = encode_reference([r[1:] for r in rows], dense_columns=0)  # drop id; click is the label
    ds = load_dataset(out)
    order = shuffled_order(300, 0)
    assert ds.meta.num_dense == 0 and ds.train.dense.shape == (270, 0) and ds.test.dense.shape == (30, 0)
    assert ds.meta.fields == ref["fields"] and ds.meta.num_fields == 22
    np.testing.assert_array_equal(np.concatenate([ds.train.sparse, ds.test.sparse]), ref["sparse"][order])
    np.testing.assert_array_equal(np.concatenate([ds.train.labels, ds.test.labels]), ref["labels"][order])
    # String order, not numeric: C14's "100" < "15706" < "24052" < "375" < "9".
    c14 = AVAZU.categorical.index("C14")
    assert ref["vocabs"][c14] == ["100", "15706", "24052", "375", "9"]
    decoded = decode_ids(out, ds.train.sparse[:5], list(AVAZU.categorical), ds.meta.offsets)
    assert decoded == [[r[2:][f] for f in range(22)] for r in (rows[i] for i in order[:5])]


def test_avazu_bad_header_and_bad_row(tmp_path):
    from hetgmp.errors import HetGMPError

    raw = tmp_path / "train.csv"
    raw.write_text("id,label,hour\n1,0,14102100\n")
    with pytest.raises(HetGMPError, match="cannot be parsed as avazu.*click"):
        prepare_avazu(PrepareConfig(raw, tmp_path / "out", progress=False))
    lines = avazu_text(50, seed=1).splitlines()
    lines[20] = lines[20].replace(",", ",2,", 1).rsplit(",", 1)[0]  # click "2", same width
    raw.write_text("\n".join(lines))
    with pytest.raises(HetGMPError, match="line 21 of .*column click is '2'"):
        prepare_avazu(PrepareConfig(raw, tmp_path / "out", progress=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.csv"]


def test_cli_prepare_criteo_and_avazu(tmp_path, capsys):
    raw = tmp_path / "train.txt"
    raw.write_text(criteo_text(200, seed=9) + "1\t2\n")
    out = tmp_path / "criteo"
    argv = ["prepare", "criteo", "--input", str(raw), "--output", str(out), "--seed", "3", "--val_fraction", "0.2", "--no-progress"]
    assert main(argv) == 2
    assert "line 201" in capsys.readouterr().err and not out.exists()
    assert main([*argv, "--skip_bad_rows"]) == 0
    captured = capsys.readouterr()
    assert "160 train + 40 test rows" in captured.out and "skipped 1 bad rows" in captured.err
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["seed"], meta["train_rows"], meta["test_rows"], meta["bad_rows_skipped"]) == (3, 160, 40, 1)
    assert main([*argv, "--skip-bad-rows"]) == 2 and "--force" in capsys.readouterr().err
    assert main([*argv, "--skip-bad-rows", "--force"]) == 0
    avazu_raw = tmp_path / "train.csv"
    avazu_raw.write_text(avazu_text(40, seed=2))
    assert main(["prepare", "avazu", "--input", str(avazu_raw), "--output", str(tmp_path / "avazu"), "--no_progress"]) == 0
    assert load_dataset(tmp_path / "avazu").meta.extra["dataset"] == "avazu"


def test_cli_help_explains_every_flag(capsys):
    assert main(["prepare", "criteo", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--input", "--output", "--seed", "--val-fraction", "--skip-bad-rows", "--force", "--block-size"):
        assert flag in text
    assert "default: 0.1" in text.replace("(default: 0.1)", "default: 0.1")


def test_progress_bar_reports_rows(tmp_path, capsys):
    raw = tmp_path / "train.txt"
    raw.write_text(criteo_text(50, seed=1))
    prepare_criteo(PrepareConfig(raw, tmp_path / "out", progress=True))
    err = capsys.readouterr().err
    assert "criteo 1/2 read" in err and "50 rows" in err and "rows/s" in err and "criteo 2/2 write" in err

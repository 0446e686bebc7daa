"""`hetgmp predict --input RAW --format criteo|avazu --vocab DIR`: raw rows encoded with the training vocabulary.

A plain-Python reference encodes the rows (a dict per field from vocab.npz, the
field's out-of-vocabulary id num_ids + f for an unseen value) and scores them
through the checkpoint's scorer; predict must agree row by row.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hetgmp.cli import main
from hetgmp.data.vocab import load_vocab
from hetgmp.serve import load_trained
from prepare_reference import criteo_text
from test_prepare_avazu import avazu_text


def _train(data: Path, ckpt: Path) -> None:
    assert main(["train", "--data", str(data), "--iter", "4", "--batch-size", "100", "--device", "cpu", "--checkpoint-dir", str(ckpt),
                 "--no-progress", "--sparse-lr", "1.0"]) == 0


def reference_scores(ckpt: Path, vocab_dir: Path, rows: list[list[str]], dense_columns: int) -> tuple[np.ndarray, int]:
    """Probabilities of split raw rows (no label column) and how many values were out of vocabulary."""
    trained = load_trained(ckpt)
    vocabs = list(load_vocab(vocab_dir).values())
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in vocabs])[:-1]])
    ids, unseen = [], 0
    for row in rows:
        cats = [v or "-1" for v in row[dense_columns:]]
        positions = [{w.decode(): i for i, w in enumerate(vocab)}.get(v) for vocab, v in zip(vocabs, cats)]
        unseen += sum(p is None for p in positions)
        ids.append([trained.oov_id(f) if p is None else int(offsets[f]) + p for f, p in enumerate(positions)])
    dense = [[math.log(x + 1) if x > -1 else -1.0 for x in (int(v) if v else 0 for v in row[:dense_columns])] for row in rows]
    dense_t = torch.tensor(dense, dtype=torch.float32).reshape(len(rows), dense_columns)
    with torch.no_grad():
        return trained.scorer()(dense_t, torch.tensor(ids)).numpy(), unseen


@pytest.fixture(scope="module")
def criteo(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    (root / "train.txt").write_text(criteo_text(600, seed=1))
    assert main(["prepare", "criteo", "--input", str(root / "train.txt"), "--output", str(root / "ds"), "--no-progress"]) == 0
    _train(root / "ds", root / "ck")
    return root


def test_criteo_rows_with_and_without_labels_score_as_the_reference(criteo, tmp_path, capsys):
    lines = criteo_text(300, seed=2).splitlines()  # new rows: many values seen in training, many not
    (tmp_path / "new.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "nolabel.txt").write_text("\n".join(line.split("\t", 1)[1] for line in lines) + "\n")
    rows = [line.split("\t")[1:] for line in lines]
    expected, unseen = reference_scores(criteo / "ck", criteo / "ds", rows, 13)
    assert 300 < unseen < 300 * 26 - 300  # both kinds of value occur
    base = ["predict", "--checkpoint", str(criteo / "ck"), "--format", "criteo", "--vocab", str(criteo / "ds"), "--device", "cpu", "--no-progress"]
    capsys.readouterr()
    assert main(base + ["--input", str(tmp_path / "new.txt"), "--output", str(tmp_path / "a.npy")]) == 0
    assert "auc " in capsys.readouterr().out  # labelled rows: metrics
    assert main(base + ["--input", str(tmp_path / "nolabel.txt"), "--output", str(tmp_path / "b.npy")]) == 0
    assert "auc " not in capsys.readouterr().out
    for name in ("a.npy", "b.npy"):
        got = np.load(tmp_path / name)
        assert got.dtype == np.float32 and got.shape == (300,)
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


def test_criteo_raw_rows_of_the_test_split_score_as_the_prepared_arrays(criteo, tmp_path):
    """Rows prepare put in the test split, given raw, get the ids (and so the scores) of the arrays."""
    assert main(["predict", "--checkpoint", str(criteo / "ck"), "--data", str(criteo / "ds"), "--output", str(tmp_path / "arrays.npy"),
                 "--device", "cpu", "--no-progress"]) == 0
    sparse = np.load(criteo / "ds" / "test_sparse_feats.npy")
    vocabs = list(load_vocab(criteo / "ds").values())
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in vocabs])[:-1]])
    raw = ["\t".join(["0"] * 14 + [vocabs[f][i - offsets[f]].decode().replace("-1", "") for f, i in enumerate(row)]) for row in sparse]
    (tmp_path / "test.txt").write_text("\n".join(raw) + "\n")
    assert main(["predict", "--checkpoint", str(criteo / "ck"), "--input", str(tmp_path / "test.txt"), "--format", "criteo",
                 "--vocab", str(criteo / "ds"), "--output", str(tmp_path / "raw.npy"), "--device", "cpu", "--no-progress"]) == 0
    trained = load_trained(criteo / "ck")
    with torch.no_grad():  # zero dense features (log(0 + 1) = 0), the arrays' ids
        expected = trained.scorer()(torch.zeros(len(sparse), 13), torch.from_numpy(sparse.astype(np.int64))).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "raw.npy"), expected, atol=1e-6, rtol=0)


def test_avazu_rows_without_click_score_as_the_reference(tmp_path):
    text = avazu_text(300, seed=3)
    (tmp_path / "train.csv").write_text(text)
    assert main(["prepare", "avazu", "--input", str(tmp_path / "train.csv"), "--output", str(tmp_path / "ds"), "--no-progress"]) == 0
    _train(tmp_path / "ds", tmp_path / "ck")
    lines = avazu_text(100, seed=4).splitlines()
    cut = [",".join(c for j, c in enumerate(line.split(",")) if j != 1) for line in lines]  # no click column
    (tmp_path / "new.csv").write_text("\n".join(cut) + "\n")
    assert main(["predict", "--checkpoint", str(tmp_path / "ck"), "--input", str(tmp_path / "new.csv"), "--format", "avazu",
                 "--vocab", str(tmp_path / "ds"), "--output", str(tmp_path / "p.npy"), "--device", "cpu", "--no-progress"]) == 0
    rows = [line.split(",")[1:] for line in cut[1:]]  # drop id
    expected, unseen = reference_scores(tmp_path / "ck", tmp_path / "ds", rows, 0)
    assert unseen > 0
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), expected, atol=1e-6, rtol=0)


def test_bad_raw_input_is_refused_naming_both_sides_and_writes_nothing(criteo, tmp_path, capsys):
    lines = criteo_text(20, seed=5).splitlines()
    out = tmp_path / "p.npy"
    base = ["predict", "--checkpoint", str(criteo / "ck"), "--format", "criteo", "--output", str(out), "--device", "cpu", "--no-progress"]

    def refused(text: str, *expected: str, vocab: Path = criteo / "ds") -> None:
        (tmp_path / "in.txt").write_text(text)
        assert main(base + ["--input", str(tmp_path / "in.txt"), "--vocab", str(vocab)]) == 2
        err = capsys.readouterr().err
        for part in expected:
            assert part in err, err
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    short = lines[:2] + ["\t".join(lines[2].split("\t")[:38])] + lines[3:]
    refused("\n".join(short) + "\n", "line 3 of", "has 38 columns, expected 40", "fix or delete that row")
    refused("a\tb\n", "line 1 of", "has 2 columns, but criteo rows have 40", "or 39 (without label)")
    bad_int = lines[:4] + ["\t".join([lines[4].split("\t")[0], "1.5", *lines[4].split("\t")[2:]])] + lines[5:]
    refused("\n".join(bad_int) + "\n", "line 5 of", "column I1 is '1.5', expected an integer or empty")
    (tmp_path / "other.txt").write_text(criteo_text(200, seed=9))
    assert main(["prepare", "criteo", "--input", str(tmp_path / "other.txt"), "--output", str(tmp_path / "other"), "--no-progress"]) == 0
    refused("\n".join(lines) + "\n", str(tmp_path / "other"), "but the checkpoint", "was trained on", "pass --vocab the dataset folder",
            vocab=tmp_path / "other")
    refused("\n".join(lines) + "\n", "no vocab.npz", vocab=tmp_path)

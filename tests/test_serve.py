"""Using a trained model: every run saves it, predict scores it like the run's EVAL line, export serves it without hetgmp.

The runs are real `hetgmp train` processes (one worker, and two Gloo workers with a
partition plan and mirrors), whose last line names the folder their model went to.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from hetgmp.cli import main
from hetgmp.errors import HetGMPError
from hetgmp.train.rundir import new_run_folder
from tinydata import read_metrics, write_plan, write_planted

SAVED = re.compile(r"^model saved to (\S+); score it with hetgmp predict --checkpoint (\S+) --data (\S+) --output preds\.npy$")
METRICS = re.compile(r"^auc (\S+) logloss (\S+) acc \S+ rows (\d+)$", re.M)


def hetgmp(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the CI machine's two cores are shared
    return subprocess.run([sys.executable, "-m", "hetgmp.cli", *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished runs on one dataset: {"one": (model folder, metrics), "two": ...}."""
    root = tmp_path_factory.mktemp("serve")
    write_planted(root / "ds", train_rows=2000, test_rows=500)
    write_plan(root / "ds", root / "plan.npz", parts=2)
    common = ["train", "--data", root / "ds", "--batch-size", 100, "--iter", 12, "--val", "--log-every", 6, "--device", "cpu", "--no-progress"]
    found = {}
    for name, extra in (("one", []), ("two", ["--nproc", 2, "--partition", root / "plan.npz", "--store-rate", 0.2])):
        done = hetgmp(*common, "--metrics", root / f"{name}.jsonl", *extra)
        assert done.returncode == 0, done.stderr
        last = done.stdout.strip().splitlines()[-1]
        saved = SAVED.match(last)
        assert saved, last
        assert saved[1] == saved[2] and saved[3] == str(root / "ds")
        found[name] = (saved[1], read_metrics(root / f"{name}.jsonl", "eval")[-1])
    return root, found


def test_every_run_saves_its_model_in_a_new_run_folder(runs, tmp_path, monkeypatch):
    root, found = runs
    folder, _ = found["two"]
    assert folder.startswith(os.environ["HETGMP_RUNS_DIR"])
    step = os.path.join(folder, "step-000012")
    assert sorted(os.listdir(step)) == ["meta.json", "rank-0.pt", "rank-1.pt"]  # all ranks
    assert open(os.path.join(folder, "latest")).read().strip() == "step-000012"
    # Two runs of one second get two folders.
    monkeypatch.setenv("HETGMP_RUNS_DIR", str(tmp_path))
    first, second = new_run_folder("wdl"), new_run_folder("wdl")
    assert first != second and first.is_dir() and second.is_dir()
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("HETGMP_RUNS_DIR", str(tmp_path / "file"))
    with pytest.raises(HetGMPError, match="cannot create the run folder .*pass --checkpoint-dir DIR, or set HETGMP_RUNS_DIR"):
        new_run_folder("wdl")


@pytest.mark.parametrize("workers", ["one", "two"])
def test_predict_prints_the_runs_eval_line_and_writes_one_probability_per_row(runs, workers, tmp_path):
    root, found = runs
    folder, evaluated = found[workers]
    done = hetgmp("predict", "--checkpoint", folder, "--data", root / "ds", "--output", tmp_path / "preds.npy", "--device", "cpu", "--batch-size", 128)
    assert done.returncode == 0, done.stderr
    auc, logloss, rows = METRICS.search(done.stdout).groups()
    assert int(rows) == 500 == evaluated["test_rows"]
    assert abs(float(auc) - evaluated["auc"]) < 2e-6 and abs(float(logloss) - evaluated["logloss"]) < 2e-6
    assert "500/500" in done.stderr and "rows/s" in done.stderr  # the progress bar
    preds = np.load(tmp_path / "preds.npy")
    assert preds.dtype == np.float32 and preds.shape == (500,) and ((preds > 0) & (preds < 1)).all()
    labels = np.load(root / "ds" / "test_labels.npy")
    logits = np.log(preds) - np.log1p(-preds)
    assert abs(float(torch.nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(logits).double(), torch.from_numpy(labels).double())) - evaluated["logloss"]) < 1e-5


def test_predict_scores_the_train_split_in_row_order(runs, tmp_path):
    root, found = runs
    folder, _ = found["two"]
    assert main(["predict", "--checkpoint", folder, "--data", str(root / "ds"), "--split", "train", "--output", str(tmp_path / "t.npy"),
                 "--device", "cpu", "--batch-size", "333", "--no-progress"]) == 0
    assert main(["predict", "--checkpoint", folder, "--data", str(root / "ds"), "--split", "train", "--output", str(tmp_path / "u.npy"),
                 "--device", "cpu", "--batch-size", "2000", "--no-progress"]) == 0
    by_333, whole = np.load(tmp_path / "t.npy"), np.load(tmp_path / "u.npy")
    assert by_333.shape == (2000,)
    np.testing.assert_allclose(by_333, whole, atol=1e-6, rtol=0)  # batching does not reorder rows


LOAD_WITHOUT_HETGMP = textwrap.dedent("""
    import importlib.abc, sys
    class NoHetgmp(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "hetgmp" or name.startswith("hetgmp."):
                raise ImportError("hetgmp is not installed here")
    sys.meta_path.insert(0, NoHetgmp())
    import numpy as np, torch
    try:
        import hetgmp
        raise SystemExit("hetgmp is importable")
    except ImportError:
        pass
    program, data, out = sys.argv[1:]
    exported = torch.export.load(program)
    table = [v for k, v in {**exported.state_dict, **exported.constants}.items() if k.endswith("table")][0]
    print("table dtype", table.dtype)
    model = exported.module()
    dense = torch.from_numpy(np.load(data + "/test_dense_feats.npy")).float()
    ids = torch.from_numpy(np.load(data + "/test_sparse_feats.npy")).long()
    parts = [model(dense[a:b], ids[a:b]) for a, b in ((0, 1), (1, 8), (8, len(ids)))]  # batch sizes 1, 7 and the rest
    np.save(out, torch.cat(parts).detach().numpy())
""")


def test_export_serves_the_same_probabilities_as_predict_without_hetgmp(runs, tmp_path):
    root, found = runs
    folder, _ = found["two"]
    assert main(["predict", "--checkpoint", folder, "--data", str(root / "ds"), "--output", str(tmp_path / "preds.npy"), "--device", "cpu", "--no-progress"]) == 0
    for dtype in ("float32", "bfloat16"):
        assert main(["export", "--checkpoint", folder, "--output", str(tmp_path / f"{dtype}.pt2"), "--table-dtype", dtype]) == 0
    (tmp_path / "loader.py").write_text(LOAD_WITHOUT_HETGMP)
    preds = np.load(tmp_path / "preds.npy")
    for dtype, tol in (("float32", 1e-5), ("bfloat16", 2e-2)):
        done = subprocess.run([sys.executable, tmp_path / "loader.py", tmp_path / f"{dtype}.pt2", root / "ds", tmp_path / f"{dtype}.npy"],
                              capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert done.returncode == 0, done.stderr
        assert f"table dtype torch.{dtype}" in done.stdout
        served = np.load(tmp_path / f"{dtype}.npy")
        assert served.shape == preds.shape
        assert np.abs(served - preds).max() < tol
    assert np.abs(np.load(tmp_path / "bfloat16.npy") - preds).max() > 0  # the bf16 table is really bf16


def _refused(argv, capsys, *expected):
    assert main(argv) == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err
    assert "Traceback" not in err
    return err


def test_bad_inputs_are_refused_naming_both_sides_and_write_nothing(runs, tmp_path, capsys):
    root, found = runs
    folder, _ = found["two"]
    out = tmp_path / "p.npy"
    write_planted(tmp_path / "other", train_rows=200, test_rows=50, fields=(40, 30, 20, 11))
    predict = ["predict", "--checkpoint", folder, "--output", str(out), "--device", "cpu", "--no-progress"]
    _refused(predict + ["--data", str(tmp_path / "other")], capsys, "fields of [40, 30, 20, 11]", "fields of [40, 30, 20, 10]", "training vocabulary")
    _refused(["export", "--checkpoint", folder, "--output", str(tmp_path / "no" / "m.pt2")], capsys, "no does not exist", "mkdir -p")
    _refused(predict + ["--data", str(root / "ds"), "--input", "x.txt"], capsys, "either --data")

    # Rank files of a checkpoint that do not belong together.
    broken = tmp_path / "broken"
    shutil.copytree(os.path.join(folder, "step-000012"), broken)
    predict_broken = ["predict", "--checkpoint", str(broken), "--data", str(root / "ds"), "--output", str(out), "--no-progress"]
    shutil.copy(broken / "rank-0.pt", broken / "rank-1.pt")
    _refused(predict_broken, capsys, "has a row in both rank-0.pt and rank-1.pt")
    (broken / "rank-1.pt").unlink()
    _refused(predict_broken, capsys, "rank-1.pt is missing")
    narrow = tmp_path / "narrow"
    assert main(["train", "--data", str(root / "ds"), "--iter", "2", "--batch-size", "100", "--embed-dim", "8", "--device", "cpu",
                 "--checkpoint-dir", str(narrow), "--no-progress"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"model saved to {narrow}; score it with hetgmp predict --checkpoint {narrow} --data {root / 'ds'} --output preds.npy"
    one_worker = tmp_path / "one"
    shutil.copytree(os.path.join(found["one"][0], "step-000012"), one_worker)
    shutil.copy(narrow / "step-000002" / "rank-0.pt", one_worker / "rank-0.pt")
    _refused(["export", "--checkpoint", str(one_worker), "--output", str(tmp_path / "m.pt2")], capsys,
             "rows of shape (100, 8)", "model wdl d=16, rows 16 wide")
    assert not out.exists() and not (tmp_path / "m.pt2").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers

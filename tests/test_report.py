"""`hetgmp report` on synthetic metrics files: the PNG, the summary, the errors."""

import json

import numpy as np
import pytest
from matplotlib.image import imread

from hetgmp.cli import main
from hetgmp.plots import read_metrics


def _train(step, loss, per_worker=5e5, world=2):
    return {"phase": "train", "step": step, "epoch": 0, "samples": step * 1024, "loss": loss, "accuracy": 0.7,
            "samples_per_s": per_worker * world, "samples_per_s_per_worker": per_worker, "world_size": world, "time_s": step / 10}


def _eval(step, auc, logloss):
    return {"phase": "eval", "step": step, "epoch": 0, "samples": step * 1024, "auc": auc, "logloss": logloss,
            "accuracy": 0.7, "test_rows": 1000, "time_s": step / 10}


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_report_writes_png_and_summary(tmp_path, capsys):
    records = [_train(10 * i, 0.7 - 0.01 * i, per_worker=1e5 if i == 0 else 4e5 + 1e4 * i) for i in range(1, 21)]
    records[5:5] = [_eval(50, 0.71, 0.55)]
    records += [_eval(200, 0.79, 0.47), _eval(210, 0.785, 0.48), {"phase": "checkpoint", "step": 210}]
    _write(tmp_path / "metrics.jsonl", records)
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    image = imread(tmp_path / "report.png")
    assert image.ndim == 3 and image.shape[0] > 500 and image.shape[1] > 500
    assert image[..., :3].std() > 0.05  # drawn, not blank
    assert "20 train lines, 3 eval lines" in out
    assert "best AUC 0.790000 at step 200 (204,800 samples)" in out
    assert "final eval at step 210: AUC 0.785000, logloss 0.480000" in out
    assert "final train loss 0.500000 at step 200" in out
    steady = np.mean([4e5 + 1e4 * i for i in range(2, 21)])  # the first line (start-up) left out
    assert f"mean samples/s per worker {steady:.4g}" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "report.png"]


def test_report_accepts_a_jsonl_path_and_runs_without_eval(tmp_path, capsys):
    path = _write(tmp_path / "wdl.jsonl", [_train(1, 0.69), _train(2, 0.68)])
    assert main(["report", str(path)]) == 0
    assert (tmp_path / "wdl_report.png").is_file()
    assert "no eval lines" in capsys.readouterr().out
    assert main(["report", str(path), "--output", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").is_file()


def test_resumed_run_lines_replace_the_redone_steps(tmp_path):
    losses = [(100, 0.5), (200, 0.4), (300, 0.3), (200, 0.41), (300, 0.31), (400, 0.2)]
    metrics = read_metrics(_write(tmp_path / "metrics.jsonl", [_train(s, l) for s, l in losses]))
    assert [(r["step"], r["loss"]) for r in metrics.train] == [(100, 0.5), (200, 0.41), (300, 0.31), (400, 0.2)]


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "no train or eval lines"),
        ("\n\n", "no train or eval lines"),
        (json.dumps(_train(1, 0.5)) + "\n{\"phase\": \"train\", \"step\n", "metrics.jsonl, line 2 is not valid JSON"),
        (json.dumps(_train(1, 0.5)) + "\n[1, 2]\n", "line 2: every line must be a JSON object"),
        (json.dumps({**_train(1, 0.5), "loss": "high"}) + "\n", "line 1: train lines need a number under 'loss', found 'high'"),
        (json.dumps({"phase": "eval", "step": 3, "samples": 9}) + "\n", "line 1: eval lines need a number under 'auc', found None"),
    ],
    ids=["empty", "blank", "truncated", "not-object", "non-number", "missing-key"],
)
def test_bad_metrics_files_are_clear_errors(tmp_path, capsys, content, message):
    (tmp_path / "metrics.jsonl").write_text(content)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "report.png").exists()


def test_missing_inputs_are_clear_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no metrics.jsonl" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl does not exist" in capsys.readouterr().err


def test_report_takes_any_metrics_file_name(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    _write(run / "wdl-criteo.jsonl", [_train(1, 0.69), _train(2, 0.6)])
    assert main(["report", str(run)]) == 0  # the folder's only .jsonl file
    assert (run / "wdl-criteo_report.png").is_file()
    _write(tmp_path / "metrics.log", [_train(1, 0.69)])
    assert main(["report", str(tmp_path / "metrics.log"), "-o", str(tmp_path / "log.png")]) == 0
    _write(run / "dcn.jsonl", [_train(1, 0.7)])
    capsys.readouterr()
    assert main(["report", str(run)]) == 2
    assert "holds several .jsonl files (dcn.jsonl, wdl-criteo.jsonl): pass the metrics file itself" in capsys.readouterr().err

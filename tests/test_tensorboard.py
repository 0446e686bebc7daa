"""`hetgmp train --tensorboard DIR`: the metrics file's scalars, read back from the event files."""

from __future__ import annotations

import importlib.util

import pytest

from hetgmp.cli import main
from hetgmp.train.config import TrainConfig
from hetgmp.train.loop import train
from tinydata import read_metrics, write_planted


def test_tensorboard_scalars_equal_the_metrics_file(tmp_path, monkeypatch):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    write_planted(tmp_path / "ds", train_rows=2000, test_rows=500)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    train(TrainConfig(data=str(tmp_path / "ds"), batch_size=200, iter=20, log_every=5, val=True, eval_every=10, device="cpu",
                      metrics=str(tmp_path / "m.jsonl"), tensorboard=str(tmp_path / "tb"), progress=False))
    events = accumulator.EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/samples_per_s", "train/rows_fetched", "train/rows_pushed", "eval/auc", "eval/logloss"} <= tags
    assert not tags & {"train/step", "train/epoch", "eval/test_rows"}
    for record in read_metrics(tmp_path / "m.jsonl"):
        keys = ("loss", "samples_per_s", "rows_fetched", "rows_pushed") if record["phase"] == "train" else ("auc", "logloss", "accuracy")
        for key in keys:
            points = {e.step: e.value for e in events.Scalars(f"{record['phase']}/{key}")}
            assert points[record["step"]] == pytest.approx(record[key], rel=1e-6), (record["phase"], key)
    assert sorted({e.step for e in events.Scalars("eval/auc")}) == [10, 20]


def test_missing_tensorboard_is_a_clear_error(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    write_planted(tmp_path / "ds", train_rows=200, test_rows=50)
    assert main(["train", "--data", str(tmp_path / "ds"), "--iter", "1", "--device", "cpu", "--tensorboard", str(tmp_path / "tb")]) == 2
    err = capsys.readouterr().err
    assert "--tensorboard needs the tensorboard package" in err and "pip install 'hetgmp[tensorboard]'" in err
    assert not (tmp_path / "tb").exists()

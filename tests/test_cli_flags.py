"""Every numeric flag of every subcommand states its range and is checked as the command line is
parsed: an invalid value exits 2 with one `error:` line naming the flag, no traceback, no file written."""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess

import pytest

from cli_runs import assert_clean_error, cli_env, hetgmp_command
from hetgmp.cli import build_parser, main
from hetgmp.cliflags import Range


def numeric_flags(parser: argparse.ArgumentParser | None = None, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str, argparse.Action]]:
    """(subcommand path, flag, action) for every flag of every (nested) subcommand whose value is a number."""
    parser = parser or build_parser()
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += numeric_flags(sub, (*path, name))
        elif action.option_strings and action.type is not None and action.type not in (str,) and getattr(action.type, "__name__", "") in ("int", "float"):
            found.append((path, action.option_strings[0], action))
    return found


def invalid_values(bounds: Range, kind: str) -> list[str]:
    """Values the range refuses: out of range on each side, not a number, NaN, infinities, a fraction for an integer."""
    values = ["abc", "nan", "inf", "-inf", ""]
    if kind == "int":
        values.append("2.5")
    step = 1 if kind == "int" else 0.5
    if bounds.low is not None:
        values.append(str(bounds.low if bounds.low_open else bounds.low - step))
    if bounds.high is not None:
        values.append(str(bounds.high if bounds.high_open else bounds.high + step))
    return [v if kind == "float" or "." not in v or v == "2.5" else v.split(".")[0] for v in values]


FLAGS = numeric_flags()


def test_every_numeric_flag_states_its_range():
    assert len(FLAGS) > 40  # train, partition, prepare criteo/avazu/table, synth, demo, predict
    missing = [f"{' '.join(path)} {flag}" for path, flag, action in FLAGS if not isinstance(getattr(action.type, "range", None), Range)]
    assert not missing
    commands = {path[0] for path, _, _ in FLAGS}
    assert commands == {"train", "partition", "prepare", "synth", "demo", "predict"}


@pytest.mark.parametrize("path,flag,action", FLAGS, ids=[f"{' '.join(p)} {f}" for p, f, _ in FLAGS])
def test_invalid_values_are_refused_in_process(path, flag, action, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for value in invalid_values(action.type.range, action.type.__name__):
        assert main([*path, f"{flag}={value}"]) == 2, (flag, value)
        err = capsys.readouterr().err
        assert f"hetgmp {' '.join(path)}: error: argument {flag}" in err, err
        assert "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_invalid_values_are_refused_by_the_cli_as_a_subprocess(tmp_path):
    """One real `hetgmp ...` process per numeric flag, the value just out of range (or NaN where the
    range is open above and below), four at a time: exit 2, the error line, nothing written."""
    runs = []
    for path, flag, action in FLAGS:
        bad = invalid_values(action.type.range, action.type.__name__)
        runs.append((path, flag, bad[-1] if len(bad) > 6 else "nan"))
    pending = list(runs)
    running: list[tuple[tuple, subprocess.Popen]] = []
    results = []
    while pending or running:
        while pending and len(running) < 4:
            path, flag, value = pending.pop()
            proc = subprocess.Popen(hetgmp_command(*path, flag, value), cwd=tmp_path,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
            running.append(((path, flag, value), proc))
        (key, proc), running = running[0], running[1:]
        out, err = proc.communicate(timeout=60)
        results.append((key, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)))
    for (path, flag, value), done in results:
        assert_clean_error(done, " ".join(path), f"argument {flag}")
        assert done.stdout == ""
    assert not list(tmp_path.iterdir())


def test_learning_rates_default_to_the_models_own_and_flags_win():
    from hetgmp.train.config import TrainConfig, add_config_flags, config_from_args

    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    rates = {m: (c.lr, c.sparse_lr) for m in ("wdl", "dlrm", "dcnv2")
             for c in [config_from_args(parser.parse_args(["--data", "ds", "--model", m]))]}
    assert rates == {"wdl": (1e-3, 0.1), "dlrm": (1e-3, 0.01), "dcnv2": (1e-4, 0.02)}
    given = config_from_args(parser.parse_args(["--data", "ds", "--model", "dcnv2", "--lr", "0.01", "--sparse-lr", "0.2"]))
    assert (given.lr, given.sparse_lr) == (0.01, 0.2)
    assert TrainConfig(data="ds", model="dlrm", sparse_lr=0.0).sparse_lr == 0.0  # 0 freezes the table, not "default"


def test_layer_sizes_start_from_a_preset_and_models_without_them_refuse_the_flags():
    from hetgmp.errors import HetGMPError
    from hetgmp.models import DCNV2_DEFAULT, DCNV2_MLPERF, DLRM_MLPERF
    from hetgmp.train.config import add_config_flags, config_from_args

    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    parse = lambda *flags: config_from_args(parser.parse_args(["--data", "ds", *flags]))  # noqa: E731
    assert parse("--model", "dcnv2").shape() is None  # the model's default shape
    assert parse("--model", "dcnv2", "--model-shape", "mlperf").shape() == DCNV2_MLPERF
    assert parse("--model", "dlrm", "--model-shape", "mlperf", "--top-mlp", "64,32").shape() == dataclasses.replace(DLRM_MLPERF, top=(64, 32))
    assert parse("--model", "dcnv2", "--top-mlp", "", "--cross-layers", "1").shape() == dataclasses.replace(DCNV2_DEFAULT, top=(), cross_layers=1)
    # --model-shape's help states MLPerf's sizes as the preset holds them.
    help_text = " ".join(next(a.help for a in parser._actions if "--model-shape" in a.option_strings).split())
    mlperf = f"bottom {'-'.join(map(str, DCNV2_MLPERF.bottom))}-d, top {'-'.join(map(str, DCNV2_MLPERF.top))}-1, " \
             f"{DCNV2_MLPERF.cross_layers} cross layers of rank {DCNV2_MLPERF.cross_rank}"
    assert mlperf in help_text and DLRM_MLPERF.bottom == DCNV2_MLPERF.bottom and DLRM_MLPERF.top == DCNV2_MLPERF.top
    for flags, message in [
        (["--model", "wdl", "--top-mlp", "64"], "--top-mlp sets the layer sizes of dlrm and dcnv2, and the model is wdl"),
        (["--model", "dfm", "--model-shape", "mlperf", "--bottom-mlp", "8"], "--model-shape and --bottom-mlp set the layer sizes"),
        (["--model", "dlrm", "--cross-layers", "2"], "--cross-layers sets dcnv2's cross layers, and the model is dlrm"),
        (["--model", "dlrm", "--bottom-mlp", "64,x"], "--bottom-mlp '64,x': expected layer widths separated by commas"),
        (["--model", "dcnv2", "--top-mlp", "64,0"], "--top-mlp '64,0': every layer width must be >= 1"),
    ]:
        with pytest.raises(HetGMPError, match=re.escape(message)):
            parse(*flags)

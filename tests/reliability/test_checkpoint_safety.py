"""Checkpoints that cannot be lost, through the real `hetgmp train`: one run per folder (a lock naming
the other run's host and pid), no silent start over existing checkpoints, a damaged latest checkpoint or
a missing `latest` pointer resumed past, and Ctrl-C ending with the last checkpoint and the command to resume."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import time

import pytest

from cli_runs import assert_clean_error, error_lines
from jobs import finish, hetgmp, start, wait_for
from tinydata import write_planted


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    write_planted(root / "ds", train_rows=600, test_rows=60)
    return root / "ds"


def _argv(ds, ck, *extra):
    return ["train", "--data", str(ds), "--batch-size", "50", "--device", "cpu", "--log-every", "2", "--checkpoint-dir", str(ck), *extra]


def snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _latest(ck) -> str:
    return (ck / "latest").read_text().strip()


def test_a_second_run_into_a_folder_in_use_is_refused_naming_the_first(ds, tmp_path):
    ck = tmp_path / "ck"
    first = start(*_argv(ds, ck, "--iter", "100000", "--checkpoint-every", "2"))
    try:
        wait_for(lambda: (ck / "latest").exists() or first.poll() is not None, what="the first run's first checkpoint")
        for extra in ([], ["--resume"], ["--force"]):
            second = hetgmp(*_argv(ds, ck, "--iter", "4", *extra))
            assert_clean_error(second, "train", f"--checkpoint-dir {ck} is in use by another training run",
                               f"host {socket.gethostname()}, pid {first.pid}", "choose another --checkpoint-dir")
        assert first.poll() is None  # the first run goes on, untouched
    finally:
        first.kill()
        finish([first], timeout=30)
    # A killed run leaves no lock behind: resuming takes the folder over.
    resumed = hetgmp(*_argv(ds, ck, "--iter", "2", "--resume"))
    assert resumed.returncode == 0 and "resumed at step" in resumed.stdout, resumed.stderr[-3000:]
    assert not (ck / ".lock").exists()


def test_a_new_run_over_existing_checkpoints_needs_resume_or_force(ds, tmp_path):
    ck = tmp_path / "ck"
    assert hetgmp(*_argv(ds, ck, "--iter", "6", "--checkpoint-every", "2")).returncode == 0
    before = snapshot(ck)
    again = hetgmp(*_argv(ds, ck, "--iter", "2"))
    assert_clean_error(again, "train", f"--checkpoint-dir {ck} already holds checkpoints (2 step folder(s), newest step-000006)",
                       "pass --resume to continue from them, --force to start over")
    assert snapshot(ck) == before
    forced = hetgmp(*_argv(ds, ck, "--iter", "2", "--force"))
    assert forced.returncode == 0, forced.stderr[-3000:]
    # The new run's checkpoint replaces the old run's later ones: `latest` and the folders agree.
    assert sorted(p.name for p in ck.iterdir()) == ["latest", "step-000002"] and _latest(ck) == "step-000002"


def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(ds, tmp_path):
    ck = tmp_path / "ck"
    assert hetgmp(*_argv(ds, ck, "--iter", "4", "--checkpoint-every", "2")).returncode == 0
    rank_file = ck / "step-000004" / "rank-0.pt"
    rank_file.write_bytes(rank_file.read_bytes()[:1000])
    resumed = hetgmp(*_argv(ds, ck, "--iter", "6", "--resume"))
    assert resumed.returncode == 0 and "resumed at step 2" in resumed.stdout, resumed.stderr[-3000:]
    warning = [line for line in resumed.stderr.splitlines() if "warning:" in line]
    assert len(warning) == 1 and f"{rank_file} is not a loadable checkpoint" in warning[0], resumed.stderr
    assert f"the file is truncated or corrupt; resuming from the newest intact checkpoint, {ck / 'step-000002'} " in warning[0]
    assert "(set aside as .step-000004.damaged: hidden, ignored, yours to inspect or delete)" in warning[0]
    assert sorted(p.name for p in ck.iterdir()) == [".step-000004.damaged", "latest", "step-000002", "step-000006"]
    assert _latest(ck) == "step-000006"


def test_step_folders_are_found_when_latest_is_missing(ds, tmp_path):
    ck = tmp_path / "ck"
    assert hetgmp(*_argv(ds, ck, "--iter", "4", "--checkpoint-every", "2")).returncode == 0
    (ck / "latest").unlink()
    refused = hetgmp(*_argv(ds, ck, "--iter", "6"))
    assert_clean_error(refused, "train", "already holds checkpoints (2 step folder(s), newest step-000004)")
    resumed = hetgmp(*_argv(ds, ck, "--iter", "6", "--resume"))
    assert resumed.returncode == 0 and "resumed at step 4" in resumed.stdout, resumed.stderr[-3000:]


def _interrupt(proc, group: bool) -> tuple[int, str, float]:
    """A terminal's Ctrl-C: SIGINT to the whole process group (launcher and workers) or the one process."""
    began = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT) if group else proc.send_signal(signal.SIGINT)
    [(code, err)] = finish([proc], timeout=60)
    return code, err, time.monotonic() - began


@pytest.mark.parametrize("nproc", [1, 2])
def test_ctrl_c_prints_once_the_last_checkpoint_and_the_command_that_resumes(ds, tmp_path, nproc):
    ck = tmp_path / "ck"
    argv = _argv(ds, ck, "--iter", "100000", "--checkpoint-every", "2", *(["--nproc", "2"] if nproc > 1 else []))
    proc = start(*argv, session=True)
    wait_for(lambda: (ck / "latest").exists() or proc.poll() is not None, what="the first checkpoint")
    code, err, seconds = _interrupt(proc, group=nproc > 1)
    assert code == 130 and "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and lines[0].startswith("hetgmp train: interrupted; the last checkpoint is "), err[-3000:]
    assert seconds < 15 and not error_lines(err), err[-3000:]
    kept = lines[0].split("the last checkpoint is ", 1)[1].split(";", 1)[0]
    assert kept == str(ck / _latest(ck))
    command = shlex.split(lines[0].split("continue with: ", 1)[1])
    assert command == ["hetgmp", *argv, "--resume"]
    step = int(kept.rsplit("-", 1)[1])
    resumed = hetgmp(*[a if a != "100000" else str(step + 2) for a in command[1:]])
    assert resumed.returncode == 0 and f"resumed at step {step}" in resumed.stdout, resumed.stderr[-3000:]


def test_ctrl_c_without_checkpoints_says_how_to_keep_one(ds, tmp_path):
    metrics = tmp_path / "m.jsonl"
    proc = start("train", "--data", str(ds), "--batch-size", "50", "--device", "cpu", "--iter", "100000", "--log-every", "2",
                 "--metrics", str(metrics))
    wait_for(lambda: (metrics.exists() and metrics.stat().st_size > 0) or proc.poll() is not None, what="the first TRAIN line")
    code, err, _ = _interrupt(proc, group=False)
    assert code == 130 and err.strip().splitlines()[-1] == (
        "hetgmp train: interrupted; no checkpoint was kept (pass --checkpoint-dir DIR --checkpoint-every N to keep one)"), err


def test_an_error_every_worker_hits_is_printed_once_with_the_ranks(ds, tmp_path):
    ck = tmp_path / "ck"
    assert hetgmp(*_argv(ds, ck, "--iter", "2")).returncode == 0
    again = hetgmp(*_argv(ds, ck, "--iter", "2", "--nproc", "2"))
    line = assert_clean_error(again, "train", "already holds checkpoints")
    assert line.endswith("(all 2 workers)")

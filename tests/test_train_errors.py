"""Bad input to `hetgmp train` and a dying worker: clear errors, not tracebacks or hangs."""

import subprocess
import sys
import time

import pytest

from hetgmp.cli import main
from hetgmp.train.launch import watch
from tinydata import write_planted


def test_missing_array_is_named(tmp_path, capsys):
    write_planted(tmp_path / "ds", train_rows=200, test_rows=50)
    (tmp_path / "ds" / "test_labels.npy").unlink()
    assert main(["train", "--data", str(tmp_path / "ds"), "--iter", "1", "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "test_labels.npy is missing" in err and "Traceback" not in err


def test_bad_flag_values_are_refused(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path), "--batch-size", "0"]) == 2
    assert "argument --batch-size/--batch_size: must be at least 1, got 0" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--resume"]) == 2
    assert "--resume needs --checkpoint-dir" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--autotune"]) == 2
    assert "--autotune picks the compiled model's matmul kernels: add --compile" in capsys.readouterr().err


def test_a_dying_worker_stops_the_others_and_is_named(capsys):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dying = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    began = time.monotonic()
    assert watch([sleeper, dying]) == 2
    err = capsys.readouterr().err
    assert "hetgmp train: error: worker rank 1 of 2 exited with code 3 without an error of its own" in err, err
    assert "the other workers were stopped; no checkpoint was kept (pass --checkpoint-dir DIR --checkpoint-every N" in err
    assert sleeper.poll() is not None and time.monotonic() - began < 30

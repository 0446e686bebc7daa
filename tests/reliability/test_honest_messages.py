"""Honest messages and quiet logs, through the real `hetgmp` command: a fix that names the user's own
--data, raw-file errors that name the field, progress bars only on a terminal, and a first compile said once."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import termios

from cli_runs import assert_clean_error, cli_env, hetgmp, hetgmp_command
from test_new_user import snapshot
from tinydata import write_planted


def test_a_plan_for_another_dataset_names_the_runs_data_in_its_fix(tmp_path):
    write_planted(tmp_path / "a", train_rows=300, test_rows=50)
    write_planted(tmp_path / "b", train_rows=300, test_rows=50, fields=(40, 30, 20, 11))
    made = hetgmp("partition", str(tmp_path / "a"), "--parts", "1", "--rounds", "0", "-o", str(tmp_path / "plan.npz"), timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    proc = hetgmp("train", "--data", str(tmp_path / "b"), "--partition", str(tmp_path / "plan.npz"), "--iter", "1", "--device", "cpu")
    assert_clean_error(proc, "train", "vocabulary size (num_ids) is 100 but the run has 101",
                       f"re-run `hetgmp partition {tmp_path / 'b'} --parts 1 --output PLAN.npz` (the plan was made for {tmp_path / 'a'})")


def _criteo_with_bad_bytes(path, rows: int = 200, bad_line: int = 51) -> None:
    from prepare_reference import criteo_text

    lines = criteo_text(rows, seed=1).encode().split(b"\n")
    fields = lines[bad_line - 1].split(b"\t")
    fields[20] = b"ab\xffcd"  # C7: Latin-1, not UTF-8
    lines[bad_line - 1] = b"\t".join(fields)
    path.write_bytes(b"\n".join(lines))


def test_invalid_utf8_names_the_line_and_field_and_can_be_skipped(tmp_path):
    raw = tmp_path / "train.txt"
    _criteo_with_bad_bytes(raw)
    before = snapshot(tmp_path)
    proc = hetgmp("prepare", "criteo", "--input", str(raw), "--output", str(tmp_path / "ds"))
    assert_clean_error(proc, "prepare criteo", f"line 51 of {raw}: column C7 is b'ab\\xffcd', which is not valid UTF-8 text",
                       "re-encode the file as UTF-8", "--skip-bad-rows")
    assert snapshot(tmp_path) == before
    skipped = hetgmp("prepare", "criteo", "--input", str(raw), "--output", str(tmp_path / "ds"), "--skip-bad-rows")
    assert skipped.returncode == 0, skipped.stderr
    assert "skipped 1 bad rows; the first: line 51" in skipped.stderr and "199 rows" not in skipped.stdout
    assert "179 train + 20 test rows" in skipped.stdout


def _train_argv(ds, *extra):
    return ["train", "--data", str(ds), "--batch-size", "50", "--device", "cpu", "--iter", "6", "--log-every", "3", *extra]


def _on_a_terminal(argv: list[str]) -> str:
    """Run `hetgmp ARGV` with its stderr on a pseudo-terminal; return what the terminal showed."""
    main, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide: no room for a bar
    proc = subprocess.Popen(hetgmp_command(*argv), env=cli_env(OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(main, 1 << 16)
        except OSError:  # EIO: the terminal's last writer is gone
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    assert proc.wait(timeout=120) == 0
    return shown.decode(errors="replace")


def test_progress_bars_only_on_a_terminal_or_when_asked(tmp_path):
    write_planted(tmp_path / "ds", train_rows=300, test_rows=50)
    logged = hetgmp(*_train_argv(tmp_path / "ds"))
    # (text mode reads a bar's "\r" as a line end: "step/s", the bar's rate, is what marks one)
    assert logged.returncode == 0 and "step/s" not in logged.stderr, logged.stderr
    assert logged.stdout.count("TRAIN step") == 2  # the periodic plain lines
    several = hetgmp(*_train_argv(tmp_path / "ds", "--nproc", "2"))
    assert several.returncode == 0 and "step/s" not in several.stderr, several.stderr
    forced = hetgmp(*_train_argv(tmp_path / "ds", "--progress"))
    assert forced.returncode == 0 and "step/s" in forced.stderr and "6/6" in forced.stderr
    assert "6/6" in _on_a_terminal(_train_argv(tmp_path / "ds"))
    assert "6/6" in _on_a_terminal(_train_argv(tmp_path / "ds", "--nproc", "2"))  # drawn by rank 0, through the launcher


def test_a_first_compile_is_said_once(tmp_path):
    cache = tmp_path / "numba-cache"
    argv = ["synth", "--rows", "1000", "--scale", "0.001", "--output", str(tmp_path / "s"), "--force"]
    first = hetgmp(*argv, NUMBA_CACHE_DIR=str(cache), timeout=300)
    assert first.returncode == 0, first.stderr
    notes = [line for line in first.stderr.splitlines() if "compiling" in line]
    assert notes == ["hetgmp synth: compiling kernels, once per install (up to a minute; later runs load them from numba's cache)"]
    again = hetgmp(*argv, NUMBA_CACHE_DIR=str(cache), timeout=300)
    assert again.returncode == 0 and "compiling" not in again.stderr, again.stderr

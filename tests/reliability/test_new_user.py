"""What a new user hits first, through the real `hetgmp` command: clear errors (exit 2, one
`error:` line, no traceback), no kill without a message, and no file of theirs moved or changed."""

from __future__ import annotations

import resource
import subprocess

from cli_runs import assert_clean_error, cli_env, hetgmp, hetgmp_command
from prepare_reference import criteo_text
from tinydata import write_planted


def snapshot(folder) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones included) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_partition_into_one_part_works_and_trains(tmp_path):
    write_planted(tmp_path / "ds", train_rows=600, test_rows=100)
    made = hetgmp("partition", str(tmp_path / "ds"), "--parts", "1", "--rounds", "2", "-o", str(tmp_path / "plan.npz"), timeout=300)
    assert made.returncode == 0 and "Traceback" not in made.stderr, made.stderr
    assert "no remote rows to save" in made.stdout and (tmp_path / "plan.json").is_file()
    trained = hetgmp("train", "--data", str(tmp_path / "ds"), "--partition", str(tmp_path / "plan.npz"), "--iter", "2",
                     "--batch-size", "64", "--device", "cpu")
    assert trained.returncode == 0 and "TRAIN step 2" in trained.stdout, trained.stderr


def test_negative_learning_rates_are_refused_before_anything_runs(tmp_path):
    write_planted(tmp_path / "ds", train_rows=200, test_rows=50)
    for flag in ("--lr", "--sparse-lr"):
        proc = hetgmp("train", "--data", str(tmp_path / "ds"), flag, "-1", "--metrics", str(tmp_path / "m.jsonl"))
        assert_clean_error(proc, "train", f"argument {flag}", "must be at least 0, got -1.0")
    assert not (tmp_path / "m.jsonl").exists()


def test_force_never_moves_or_replaces_a_users_file(tmp_path):
    raw = tmp_path / "train.txt"
    raw.write_text(criteo_text(50, seed=1))
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes")
    before = snapshot(tmp_path)
    proc = hetgmp("prepare", "criteo", "--input", str(raw), "--output", str(mine), "--force", "--no-progress")
    assert_clean_error(proc, "prepare criteo", f"--output {mine} is an existing file", "never replaces a file")
    proc = hetgmp("synth", "--rows", "100", "--output", str(mine), "--force", "--scale", "0.001")
    assert_clean_error(proc, "synth", "never replaces a file")
    assert snapshot(tmp_path) == before  # no hidden .notes.txt.old-PID, nothing new


def _limit_file_size() -> None:
    limit = 200_000  # bytes: any file written past this fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_full_disk_during_prepare_names_the_folder_and_the_space(tmp_path):
    raw = tmp_path / "train.txt"
    raw.write_text(criteo_text(3000, seed=2))
    before = snapshot(tmp_path)
    proc = subprocess.run(hetgmp_command("prepare", "criteo", "--input", str(raw), "--output", str(tmp_path / "ds"), "--no-progress"),
                          env=cli_env(), capture_output=True, text=True, timeout=120, preexec_fn=_limit_file_size)
    line = assert_clean_error(proc, "prepare criteo", f"no room to write {tmp_path / 'ds'}", "MB of it were written",
                              f"free on the disk holding {tmp_path}", "write to another disk", "partial output was removed")
    assert "File too large" in line
    assert snapshot(tmp_path) == before  # no output, no hidden leftovers


def test_a_batch_larger_than_memory_is_refused_before_allocating(tmp_path):
    write_planted(tmp_path / "ds", train_rows=200, test_rows=50)
    proc = hetgmp("train", "--data", str(tmp_path / "ds"), "--batch-size", "1000000000", "--device", "cpu", "--iter", "1", timeout=60)
    assert_clean_error(proc, "train", "--batch-size 1,000,000,000 needs about", "GiB per worker on cpu", "bytes a sample",
                       "GiB is free: use --batch-size")


def test_paths_of_the_wrong_kind_are_refused_cleanly(tmp_path):
    """A file where a folder is expected, a folder where a file is: named, and nothing of the user's touched."""
    write_planted(tmp_path / "ds", train_rows=200, test_rows=50)
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes")
    train = ["train", "--data", str(tmp_path / "ds"), "--iter", "1", "--device", "cpu", "--batch-size", "50"]
    before = snapshot(tmp_path)
    assert_clean_error(hetgmp(*train, "--checkpoint-dir", str(mine)), "train", f"({mine}): check the paths given on the command line")
    assert_clean_error(hetgmp(*train, "--metrics", str(tmp_path / "ds")), "train", f"Is a directory ({tmp_path / 'ds'})")
    assert_clean_error(hetgmp("synth", "--rows", "100", "--output", str(mine / "x")), "synth", f"({mine})")
    assert_clean_error(hetgmp("partition", str(tmp_path / "ds"), "--parts", "2", "--output", str(tmp_path)), "partition",
                       f"--output {tmp_path} is a folder: give the plan file to write, e.g. --output {tmp_path / 'plan.npz'}")
    assert snapshot(tmp_path) == before

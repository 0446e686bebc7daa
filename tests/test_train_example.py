"""examples/hetuctr.py takes the original script's flags and trains through the same trainer."""

import os
import subprocess
import sys
from pathlib import Path

from tinydata import write_planted

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hetuctr.py"


def test_original_flags_train_on_the_named_dataset(tmp_path):
    write_planted(tmp_path / "criteo", train_rows=600, test_rows=200)
    log = tmp_path / "run.log"
    cmd = [
        sys.executable, str(EXAMPLE), "--dataset", "criteo", "--model", "wdl", "--batch_size", "100", "--iter", "6",
        "--embed_dim", "4", "--val", "--eval_every", "3", "--log_every", "3", "--output", str(log),
    ]
    env = {**os.environ, "HETGMP_DATA_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = log.read_text()
    assert "TRAIN step 3" in text and "TRAIN step 6" in text and "EVAL  step 3" in text and "EVAL  step 6" in text
    assert "batch 100/worker, 6 steps" in text
    # The original's settings need its ~1M iterations: said once, pointing at `hetgmp train`'s defaults.
    notes = [line for line in done.stderr.splitlines() if "note:" in line]
    assert len(notes) == 1 and "need about its 1,000,000 iterations to learn; in 6 expect little" in notes[0], done.stderr
    assert f"`hetgmp train --data {tmp_path / 'criteo'}` trains well in one epoch with its defaults" in notes[0]

    missing = subprocess.run([sys.executable, str(EXAMPLE), "--dataset", "avazu"], env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and f"not found at {tmp_path / 'avazu'}" in missing.stderr

"""Scenario 2: a kill while a checkpoint is written leaves the previous one valid, and it is the one resumed.

`hetgmp.train.checkpoint.save_checkpoint` writes `.step-N.tmp/`, renames it to
`step-N/` and only then points `latest` at it. A kill can leave any prefix of
that: a temporary folder with a truncated rank file, a finished `step-N/`
that `latest` does not name yet, a half-written `latest` temp file. Each is
recreated here as a kill would leave it (a real SIGKILL at an arbitrary
moment is in test_lost_workers.py), and the resumed run must start from the
step `latest` names and end at the uninterrupted run's weights.
"""

from __future__ import annotations

import json

import torch

from hetgmp.train.config import TrainConfig
from hetgmp.train.loop import train
from test_train_checkpoint import _assert_same_state
from tinydata import write_planted


def _cfg(root, ckpt, **kw):
    base = dict(data=str(root / "ds"), batch_size=100, log_every=2, device="cpu", checkpoint_dir=str(root / ckpt),
                checkpoint_every=2, progress=False)
    return TrainConfig(**{**base, **kw})


def _leave_a_killed_save(ckpt, step: int) -> None:
    """What a kill during the save of `step` can leave behind, all at once."""
    name = f"step-{step:06d}"
    partial = ckpt / f".{name}.tmp"
    partial.mkdir()
    good = (ckpt / "step-000004" / "rank-0.pt").read_bytes()
    (partial / "rank-0.pt").write_bytes(good[: len(good) // 3])  # truncated mid-write
    (partial / ".rank-0.tmp-4242.pt").write_bytes(good[:100])
    # Renamed but not yet pointed at (killed between the rename and `latest`): deliberately wrong contents,
    # so resuming from it could not reach the uninterrupted weights.
    (ckpt / name).mkdir()
    (ckpt / name / "rank-0.pt").write_bytes(b"garbage")
    (ckpt / name / "meta.json").write_text(json.dumps({"step": step}))
    (ckpt / ".latest.tmp-4242").write_text("step-0000")


def test_killed_save_keeps_and_resumes_the_previous_checkpoint(tmp_path):
    torch.set_num_threads(1)
    write_planted(tmp_path / "ds", train_rows=800, test_rows=100)
    train(_cfg(tmp_path, "full", iter=8))
    train(_cfg(tmp_path, "cut", iter=4))
    ckpt = tmp_path / "cut"
    _leave_a_killed_save(ckpt, 6)
    assert (ckpt / "latest").read_text().strip() == "step-000004"

    result = train(_cfg(tmp_path, "cut", iter=8, resume=True))
    assert result["step"] == 8 and (ckpt / "latest").read_text().strip() == "step-000008"
    full = torch.load(tmp_path / "full" / "step-000008" / "rank-0.pt", weights_only=True)
    resumed = torch.load(ckpt / "step-000008" / "rank-0.pt", weights_only=True)
    _assert_same_state(full, resumed)
    # The re-save of step 6 replaced the leftovers of the killed one.
    assert torch.load(ckpt / "step-000006" / "rank-0.pt", weights_only=True)["step"] == 6
    assert not (ckpt / ".step-000006.tmp").exists()

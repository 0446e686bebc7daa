"""Checkpoints: one directory per save, complete only once every rank has written.

Layout of --checkpoint-dir (2 workers, saved at steps 200 and 300):

    step-000200/   rank-0.pt  rank-1.pt  meta.json
    step-000300/   rank-0.pt  rank-1.pt  meta.json
    latest         the text "step-000300"

A save writes into `.step-000300.tmp/`; each rank writes its own `rank-R.pt`
(atomically), all ranks meet at a barrier, then rank 0 writes `meta.json`,
renames the folder, points `latest` at it (atomic file replace) and deletes
all but the newest KEEP folders. A kill at any moment leaves `latest` naming
a complete checkpoint. Multi-node jobs need the directory on a shared
filesystem.

`rank-R.pt` holds plain tensors and containers (loadable with
`torch.load(weights_only=True)`): the model's and dense optimizer's state
dicts, the embedding's `state_dict()` (this rank's primaries, versions and
optimizer state, taken after `emb.flush()`), the RNG states and the step.
`meta.json` records what the checkpoint belongs to; resuming with another
model, dims, optimizers or vocabulary is refused, naming every difference.
A resume on another number of workers or plan re-places the rows by global
id (train/reshard.py).

A run holds an exclusive lock on `.lock` in the folder for its whole life
(rank 0, `claim_directory`; the file names its host and pid), refuses to
start over checkpoints already there without --resume or --force, and a
resume falls back from a damaged checkpoint to the newest intact one
(`load_checkpoint`), also when `latest` is missing. A save deletes step
folders later than its own (an abandoned run's, or a damaged one resumed past).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import shlex
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from hetgmp.atomic import atomic_file
from hetgmp.distributed import DistContext
from hetgmp.errors import HetGMPError

KEEP = 2
LATEST = "latest"
LOCK = ".lock"
# meta.json keys that must match for a checkpoint to be resumed (the worker count and plan need not: reshard.py).
# Absent keys read as None: a one-hot run records no bags, a model without a shape (wdl, dcn, dfm) none.
MUST_MATCH = ("model", "embed_dim", "shape", "table_width", "num_fields", "num_dense", "num_ids", "fields", "bag_sizes",
              "padding", "bag_pooling", "optimizer", "sparse_optimizer")
RECORDED_LATER = ("fields",)  # keys that checkpoints of earlier versions lack: compared only where recorded


class DamagedCheckpoint(HetGMPError):
    """A checkpoint folder whose files cannot be read: a resume tries the next older one."""


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def _step_of(folder: Path) -> int | None:
    """N of a `step-N` folder name, None for any other name."""
    prefix, _, number = folder.name.partition("-")
    return int(number) if prefix == "step" and number.isdigit() else None


def step_folders(directory: str | Path) -> list[Path]:
    """Every `step-N/` folder of `directory`, oldest first (complete or not)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if p.is_dir() and _step_of(p) is not None), key=_step_of)


def fingerprint(*arrays: np.ndarray) -> str:
    """Short SHA-256 of arrays' shapes, dtypes and bytes (identifies a partition plan)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:16]


def _barrier(ctx: DistContext) -> None:
    if ctx.world_size > 1:
        dist.barrier()


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], meta: dict[str, Any], ctx: DistContext) -> Path:
    """Collective: every rank passes its own `state`; returns the finished folder."""
    directory = Path(directory)
    final = directory / step_name(step)
    tmp = directory / f".{final.name}.tmp"
    if ctx.is_main:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier(ctx)
    with atomic_file(tmp / f"rank-{ctx.rank}.pt") as part:
        torch.save(state, part)
    _barrier(ctx)
    if ctx.is_main:
        (tmp / "meta.json").write_text(json.dumps({**meta, "step": step}, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        with atomic_file(directory / LATEST) as pointer:
            pointer.write_text(final.name + "\n")
        _prune(directory, step)
    _barrier(ctx)
    return final


def _prune(directory: Path, step: int) -> None:
    """Keep the newest KEEP folders up to `step`; later ones belong to a run this one replaced."""
    folders = step_folders(directory)
    for folder in folders:
        if _step_of(folder) > step:
            shutil.rmtree(folder)
    for old in [f for f in folders if _step_of(f) <= step][:-KEEP]:
        shutil.rmtree(old)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint: the folder `latest` names if it is complete, else the
    newest complete step folder up to it (or of all, without a readable `latest`); None if none."""
    candidates, _ = resume_candidates(Path(directory))
    return candidates[0] if candidates else None


def resume_candidates(directory: Path) -> tuple[list[Path], list[str]]:
    """Complete checkpoints to resume from, best first, and why a folder `latest` names is not one.

    `latest` names the newest complete save; folders past it are unfinished saves
    (a kill between the rename and the pointer) and are not trusted."""
    complete = [f for f in step_folders(directory) if (f / "meta.json").is_file()]
    pointer, skipped = directory / LATEST, []
    named = pointer.read_text(errors="replace").strip() if pointer.is_file() else None
    limit = _step_of(Path(named)) if named else None
    if named is not None and (limit is None or not (directory / named / "meta.json").is_file()):
        skipped.append(f"{pointer} names {named!r}, which is not a complete checkpoint")
    if limit is not None:
        complete = [f for f in complete if _step_of(f) <= limit]
    return complete[::-1], skipped


def load_checkpoint(directory: str | Path, expected: dict[str, Any], ctx: DistContext,
                    read_state: Callable[[Path, dict[str, Any]], dict[str, Any]]) -> tuple[Path, dict[str, Any]] | None:
    """Collective: this rank's state from the newest checkpoint every rank can read, or None
    when the folder holds none. `read_state(folder, its meta.json)` reads this rank's state
    (raising DamagedCheckpoint for an unreadable one). A damaged one is skipped, and said so
    on rank 0's stderr."""
    directory = Path(directory)
    candidates, skipped = resume_candidates(directory)
    if not candidates and not skipped:
        return None
    damaged: list[Path] = []
    for folder in candidates:
        problem, state = None, None
        try:
            state = read_state(folder, check_meta(folder, expected))
        except DamagedCheckpoint as e:
            problem = str(e)
        if not _every_rank_ok(problem is None, ctx):
            skipped.append(problem or f"{folder}: another worker's rank file is damaged (its error names it)")
            damaged.append(folder)
            continue
        if skipped and ctx.is_main:
            aside = _set_aside(damaged)
            kept = f" (set aside as {', '.join(aside)}: hidden, ignored, yours to inspect or delete)" if aside else ""
            print(f"hetgmp train: warning: {'; '.join(skipped)}; resuming from the newest intact checkpoint, {folder}{kept}", file=sys.stderr)
        return folder, state
    raise HetGMPError(
        f"no intact checkpoint in {directory} to resume from: {'; '.join(skipped)}. Nothing there can be resumed: "
        "restore the folder from a backup, or start over with --force instead of --resume (its saves replace these folders)"
    )


def _set_aside(folders: list[Path]) -> list[str]:
    """Rename damaged step folders to hidden `.step-N.damaged`, out of the way of this run's saves and pruning."""
    names = []
    for folder in folders:
        aside = folder.with_name(f".{folder.name}.damaged")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(folder, aside)
        names.append(aside.name)
    return names


def _every_rank_ok(ok: bool, ctx: DistContext) -> bool:
    if ctx.world_size == 1:
        return ok
    flag = torch.tensor([0 if ok else 1], device=ctx.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) == 0


class DirectoryLock:
    """Rank 0's exclusive lock on a checkpoint folder's `.lock` file, which names the holder.

    Held until `release` (which deletes the file) or the process ends: the kernel drops a
    flock with its process, so a killed run's leftover `.lock` locks nothing."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / LOCK
        while True:
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(self._fd, 4096, 0).decode(errors="replace").strip() or "a run that has not written its name yet"
                self._close()
                raise HetGMPError(
                    f"--checkpoint-dir {directory} is in use by another training run ({holder}): two runs saving into one "
                    "folder overwrite each other's checkpoints; wait for that run to end (or stop it), or choose another --checkpoint-dir"
                ) from None
            if self._still_named():
                break
            self._close()  # the holder released (deleted) the file between our open and our lock: take the new one
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"host {socket.gethostname()}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)

    def _still_named(self) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            return False

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def release(self) -> None:
        """Delete the lock file while still holding it, then let go."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            self._close()


def claim_directory(directory: str | Path, resume: bool, force: bool, ctx: DistContext) -> DirectoryLock | None:
    """Collective: rank 0 locks the checkpoint folder and checks that this run may write there
    (checkpoints already in it need --resume or --force); every rank raises the same error if not."""
    directory, lock, problem = Path(directory), None, None
    if ctx.is_main:
        try:
            lock = DirectoryLock(directory)
            if not resume and not force:
                _refuse_to_start_over(directory)
        except HetGMPError as e:
            problem = str(e)
            if lock is not None:
                lock.release()
    if ctx.world_size > 1:
        box = [problem]
        dist.broadcast_object_list(box, src=0)
        problem = box[0]
    if problem:
        raise HetGMPError(problem)
    return lock


def _refuse_to_start_over(directory: Path) -> None:
    found = step_folders(directory)
    if found or (directory / LATEST).exists():
        newest = f"newest {found[-1].name}" if found else f"a `{LATEST}` pointer"
        raise HetGMPError(
            f"--checkpoint-dir {directory} already holds checkpoints ({len(found)} step folder(s), {newest}) and this run "
            "would overwrite them: pass --resume to continue from them, --force to start over (this run's saves replace "
            "them), or choose another --checkpoint-dir"
        )


def resume_hint(directory: str | None) -> str:
    """Where the run can continue from, and the exact command: for messages that end a run."""
    folder = latest_checkpoint(directory) if directory else None
    if folder is None:
        where = f"no checkpoint was kept in {directory}" if directory else "no checkpoint was kept"
        return f"{where} (pass --checkpoint-dir DIR --checkpoint-every N to keep one)"
    args = [a for a in sys.argv[1:] if a != "--force"]
    command = shlex.join(["hetgmp", *args, *([] if "--resume" in args else ["--resume"])])
    return f"the last checkpoint is {folder}; continue with: {command}"


def read_meta(folder: Path) -> dict[str, Any]:
    """A checkpoint folder's meta.json (what it belongs to and its step)."""
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise DamagedCheckpoint(f"{folder / 'meta.json'} is not readable JSON ({e}): the checkpoint is damaged") from e


def check_meta(folder: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """Read meta.json and refuse a checkpoint of another model, dims, optimizers or vocabulary."""
    saved = read_meta(folder)
    compared = [k for k in MUST_MATCH if k in saved or k not in RECORDED_LATER]
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, this run {expected.get(k)!r}" for k in compared if saved.get(k) != expected.get(k)]
    if diffs:
        raise HetGMPError(
            f"checkpoint {folder} belongs to another run ({'; '.join(diffs)}): "
            "resume with the same --model, --embed-dim, layer sizes, optimizers and dataset (the worker count and plan may differ), "
            "or choose a new --checkpoint-dir"
        )
    return saved


def load_rank_state(folder: Path, rank: int) -> dict[str, Any]:
    """This rank's state on the CPU: each load_state_dict moves it to its device, and
    the dense optimizer's step counters stay on the CPU as the optimizer keeps them."""
    path = folder / f"rank-{rank}.pt"
    if not path.is_file():
        raise DamagedCheckpoint(f"{path} is missing: the checkpoint {folder} is damaged")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        # RuntimeError: torch's zip reader on a truncated file; UnpicklingError:
        # garbage bytes, or objects other than tensors and containers.
        raise DamagedCheckpoint(
            f"{path} is not a loadable checkpoint (expected a torch.save zip of tensors, loaded with weights_only=True; "
            f"torch says: {first_sentence(str(e))}): the file is truncated or corrupt"
        ) from e


def first_sentence(text: str) -> str:
    """The first sentence of a library's message, whole: its first line up to its first full stop."""
    line = (text.strip().splitlines() or [""])[0].strip()
    end = line.find(". ")
    return (line[:end] if end > 0 else line.rstrip(".")) or "no message"


# How an optimizer runs, not what it computes: kept from the optimizer a checkpoint is
# loaded into, so that the fast step's Adam (capturable, for its CUDA graph) and the
# general step's (fused under --skip-nonfinite) resume each other's checkpoints.
RUN_FLAGS = ("capturable", "fused", "foreach", "differentiable")


def optimizer_state_for(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> dict[str, Any]:
    """`saved` (an optimizer state dict) with `optimizer`'s own RUN_FLAGS in each param group.

    torch's `load_state_dict` takes every group setting from the checkpoint and
    places Adam's step counters by them (on the device when capturable or fused).
    """
    mine = optimizer.param_groups
    if len(saved["param_groups"]) != len(mine):
        return saved  # load_state_dict names the mismatch
    groups = [{**group, **{k: own[k] for k in RUN_FLAGS if k in own}} for group, own in zip(saved["param_groups"], mine)]
    return {**saved, "param_groups": groups}


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())

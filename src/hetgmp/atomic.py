"""Write outputs so that an error or a kill never leaves one looking complete.

Files are written under a temporary name in the same directory and renamed
into place (rename is atomic on POSIX within one filesystem). Directories are
built as `<name>.tmp-<pid>` and renamed when the body finishes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from hetgmp.errors import HetGMPError


def _temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success fsync it and rename it to `path`.

    Example: `with atomic_file("plan.npz") as tmp: np.savez(tmp, ...)`.
    The temporary name keeps the suffix so numpy does not append another.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `path` only if the body succeeds.

    An existing `path` is an error unless `force`, in which case it is
    replaced only after the new one is complete.
    """
    path = Path(path)
    if path.exists() and not force:
        raise HetGMPError(f"output directory {path} already exists: pass --force to replace it, or choose another --output")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        for child in tmp.iterdir():
            _fsync(child)
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _fsync(path: Path) -> None:
    if path.is_file():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

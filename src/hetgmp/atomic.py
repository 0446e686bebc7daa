"""Write outputs so that an error or a kill never leaves one looking complete.

Files are written under a temporary name in the same directory and renamed
into place (rename is atomic on POSIX within one filesystem). Directories are
built as `<name>.tmp-<pid>` and renamed when the body finishes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Iterator

from hetgmp.errors import HetGMPError


# Errors that mean "the disk (or the user's quota or file-size limit) is full".
_OUT_OF_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# The file every dataset directory holds: --force replaces only folders that have one.
DATASET_MARK = "meta.json"


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
    except OSError as e:
        if e.errno not in _OUT_OF_SPACE:
            raise
        raise out_of_space(path, tmp, e) from e
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
    _check_replaceable(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        for child in tmp.iterdir():
            _fsync(child)
        _swap_in(tmp, path)
    except OSError as e:
        if e.errno not in _OUT_OF_SPACE:
            raise
        raise out_of_space(path, tmp, e) from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _check_replaceable(path: Path, force: bool) -> None:
    """Refuse an output that exists, unless `force` and it is a dataset directory:
    a user's file, or a folder of their own, is never moved or deleted."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir() or path.is_symlink():
        raise HetGMPError(f"--output {path} is an existing file, not a dataset directory: hetgmp never replaces a file, "
                          "even with --force; choose another --output or move the file away yourself")
    if not force:
        raise HetGMPError(f"output directory {path} already exists: pass --force to replace it, or choose another --output")
    if any(path.iterdir()) and not (path / DATASET_MARK).is_file():
        raise HetGMPError(f"--output {path} is a folder without {DATASET_MARK}, so not a dataset hetgmp wrote: --force replaces "
                          "only such datasets; choose another --output or empty the folder yourself")


def _swap_in(tmp: Path, path: Path) -> None:
    """Rename the finished `tmp` to `path`; an old `path` is deleted only once the new one is in place."""
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except OSError:
        if old.exists():
            os.replace(old, path)  # put the previous output back
        raise
    if old.exists():
        shutil.rmtree(old)
    _fsync_dir(path.parent)


def out_of_space(path: Path, tmp: Path, error: OSError) -> HetGMPError:
    """The error for a write that ran out of disk (or quota, or file-size limit), with the figures."""
    written = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()) if tmp.is_dir() else (tmp.stat().st_size if tmp.exists() else 0)
    free = shutil.disk_usage(path.parent).free
    return HetGMPError(
        f"no room to write {path}: {error.strerror or error} after {_megabytes(written)} of it were written, with "
        f"{_megabytes(free)} free on the disk holding {path.parent}; it needs more than {_megabytes(written)}: free "
        "space there (or raise the quota or file-size limit), or write to another disk. The partial output was removed"
    )


def _megabytes(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


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

"""Open a raw text input as one byte stream, whatever its container.

Accepted forms, recognised by their leading bytes rather than their names:

    train.txt          plain text
    train.txt.gz       gzip (multi-member too)
    dac.tar.gz         a tar inside gzip: the member named `member` (e.g.
                       "train.txt") is streamed straight out of the archive,
                       so an 11 GB member never touches the disk
    dac.tar            an uncompressed tar, likewise

`open_text` yields a `TextSource`: `stream` is a binary file object over the
text, and `bytes_read()` says how far into the file on disk reading has got,
which is what a progress bar can count against `total_bytes` when the text's
own length is unknown (compressed input).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from hetgmp.errors import HetGMPError

GZIP_MAGIC = b"\x1f\x8b"
# Reads from the archive go through Python; large chunks keep that overhead small.
TAR_BUFSIZE = 1 << 20


class _CountingReader(io.RawIOBase):
    """A raw reader that counts the bytes taken from the file underneath."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        n = self._raw.readinto(buffer)
        self.count += n or 0
        return n


@dataclass
class TextSource:
    stream: BinaryIO
    total_bytes: int
    bytes_read: Callable[[], int]
    description: str


def _is_tar(head: bytes) -> bool:
    return len(head) >= 262 and head[257:262] == b"ustar"


def _peek(path: Path, n: int) -> tuple[bytes, bytes]:
    """The first n bytes on disk and, for gzip, the first n decompressed bytes."""
    with open(path, "rb") as f:
        raw = f.read(n)
    if raw[:2] != GZIP_MAGIC:
        return raw, raw
    try:
        with gzip.open(path, "rb") as g:
            return raw, g.read(n)
    except (OSError, EOFError) as e:
        raise HetGMPError(f"{path} starts like gzip but cannot be decompressed ({e}): the download is damaged; fetch it again") from e


def _tar_member(archive: tarfile.TarFile, path: Path, member: str) -> BinaryIO:
    seen = []
    for info in archive:
        if info.isfile() and Path(info.name).name == member:
            stream = archive.extractfile(info)
            assert stream is not None  # a regular file always has a stream
            return stream
        seen.append(info.name)
    raise HetGMPError(f"{path} holds no file named {member} (members: {seen[:10]}): pass the archive that contains it, or the file itself")


@contextlib.contextmanager
def open_text(path: str | os.PathLike, member: str | None = None) -> Iterator[TextSource]:
    """Yield the text of `path`: plain, gzip, or `member` inside a (gzipped) tar.

    Example: `with open_text("dac.tar.gz", member="train.txt") as src:` streams
    train.txt out of the archive; `src.stream.read(100)` gives its first bytes.
    """
    path = Path(path)
    if not path.is_file():
        raise HetGMPError(f"input {path} does not exist or is not a file: pass the downloaded file with --input")
    raw_head, text_head = _peek(path, 512)
    compressed = raw_head[:2] == GZIP_MAGIC
    is_tar = _is_tar(text_head)
    if is_tar and member is None:
        raise HetGMPError(f"{path} is a tar archive, but this dataset has no file to take from one: pass the extracted file with --input")
    with contextlib.ExitStack() as stack:
        counter = _CountingReader(stack.enter_context(open(path, "rb")))
        buffered = stack.enter_context(io.BufferedReader(counter, TAR_BUFSIZE))
        if is_tar:
            mode = "r|gz" if compressed else "r|"
            try:
                archive = stack.enter_context(tarfile.open(fileobj=buffered, mode=mode, bufsize=TAR_BUFSIZE))
                stream = _tar_member(archive, path, member)
            except (tarfile.TarError, OSError, EOFError) as e:
                raise HetGMPError(f"{path} is not a readable tar archive ({e}): the download is damaged; fetch it again") from e
            description = f"{path}:{member}"
        elif compressed:
            stream = stack.enter_context(gzip.GzipFile(fileobj=buffered, mode="rb"))
            description = str(path)
        else:
            stream = buffered
            description = str(path)
        yield TextSource(stream, path.stat().st_size, lambda: counter.count, description)

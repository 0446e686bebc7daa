"""Per-field vocabularies: sorted-string label encoding over a whole stream.

A field's ids are its distinct values in sorted string order, missing being
the string "-1" (so it sorts before any hex or decimal digit). Example for
one field holding ["b", "", "a", "b"]: vocabulary ["-1", "a", "b"], ids
[2, 0, 1, 2]; with offset 10 (earlier fields' sizes) the stored ids are
[12, 10, 11, 12].

Pass 1 turns every value into an int64 *key* and remembers the keys seen;
pass 2 maps keys to ids once the whole vocabulary is known. Two key kinds:

- hex keys (>= 0), for values of exactly 8 lowercase hex digits, Criteo's
  form: key = int(value, 16) + 1, missing = 0. Key order is string order, so
  the vocabulary is just the sorted distinct keys.
- string keys (< 0), the general path: key = -(p + 1) where p numbers the
  distinct strings in order of first appearance ("-1" is p = 0). At the end
  the strings are sorted once and p is mapped to its rank.

A field starts on the hex path and moves to the string path at its first
value of another form; the hex keys stored before the move stay valid (they
are mapped through the strings they stand for).

The vocabularies are saved in the dataset directory as `vocab.npz`, one
bytes array per field name (UTF-8, b"-1" for missing): field f's local id j
is the raw string vocab[name][j].decode(). `decode_ids` does it for global ids.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hetgmp.data import kernels

VOCAB_FILE = "vocab.npz"
MISSING = "-1"
HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def hex_strings(keys: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """Hex keys back to their strings as bytes: [0, 1, 3735928560] -> [b"-1", b"00000000", b"deadbeef"].

    Chunked: the nibble table is 64 bytes a key, 640 MB at once for Criteo's C3.
    """
    out = np.empty(len(keys), "S8")
    shifts = np.arange(28, -1, -4, dtype=np.uint64)
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        nibbles = ((part.astype(np.int64) - 1).astype(np.uint64)[:, None] >> shifts) & np.uint64(15)
        strings = HEX_DIGITS[nibbles].view("S8").ravel()
        out[start : start + chunk] = np.where(part == kernels.HEX_MISSING_KEY, np.bytes_(MISSING), strings)
    return out


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique by sorting: numpy 2.4's np.unique hashes int64 and was 100x slower here."""
    values = np.sort(values)
    keep = np.empty(len(values), np.bool_)
    keep[:1] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


class _SortedUniques:
    """Distinct int64 values of a stream, merged in batches so the sorting is amortised."""

    def __init__(self) -> None:
        self._merged = np.empty(0, np.int64)
        self._pending: list[np.ndarray] = []
        self._pending_size = 0

    def add(self, keys: np.ndarray) -> None:
        distinct = sorted_unique(keys)
        self._pending.append(distinct)
        self._pending_size += len(distinct)
        if self._pending_size > max(len(self._merged), 1 << 18):
            self._merge()

    def _merge(self) -> None:
        if self._pending:
            self._merged = sorted_unique(np.concatenate([self._merged, *self._pending]))
            self._pending, self._pending_size = [], 0

    def sorted(self) -> np.ndarray:
        self._merge()
        return self._merged


class FieldVocab:
    """One categorical field's keys (pass 1) and key -> local id map (pass 2)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hex = _SortedUniques()
        self.strings: dict[str, int] | None = None  # set when the field leaves the hex path
        self._hex_before: np.ndarray = np.empty(0, np.int64)
        self._hex_to_p: np.ndarray = np.empty(0, np.int64)
        self._rank: np.ndarray | None = None
        self._table: np.ndarray | None = None
        self._index: np.ndarray | None = None
        self._shift = 0

    def keys(self, column: pa.Array) -> np.ndarray:
        """Pass 1: the int64 keys of one batch's values (a string column), remembered."""
        if self.strings is None:
            offsets, data = string_buffers(column)
            keys = np.empty(len(column), np.int64)
            if kernels.hex_keys(offsets, data, keys) == 0:
                self.hex.add(keys)
                return keys
            self._leave_hex_path()
        return self._string_keys(column)

    def _leave_hex_path(self) -> None:
        self._hex_before = self.hex.sorted()
        self.strings = {}
        strings = hex_strings(self._hex_before)
        self._hex_to_p = np.array([self.strings.setdefault(s.decode(), len(self.strings)) for s in strings], np.int64)

    def _string_keys(self, column: pa.Array) -> np.ndarray:
        assert self.strings is not None
        encoded = pc.dictionary_encode(column, null_encoding="encode")  # a null is the missing value
        index = self.strings
        distinct = encoded.dictionary.to_pylist()
        p = np.array([index.setdefault(v or MISSING, len(index)) for v in distinct], np.int64)
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        return -(p[indices] + 1)

    def finish(self) -> np.ndarray:
        """End of pass 1: fix the ids; return the vocabulary (bytes, local id order)."""
        if self.strings is None:
            self._table = self.hex.sorted()
            self._index, self._shift = kernels.sorted_index(self._table)
            return hex_strings(self._table)
        values = list(self.strings)
        order = np.array(sorted(range(len(values)), key=values.__getitem__), np.int64)
        self._rank = np.empty(len(values), np.int64)
        self._rank[order] = np.arange(len(values))
        return np.array([values[i].encode() for i in order], dtype=np.bytes_)

    @property
    def size(self) -> int:
        return len(self._table) if self._rank is None else len(self._rank)

    def encode(self, keys: np.ndarray, base: int, out: np.ndarray) -> None:
        """Pass 2: out[:] = base + local id of each key (`out` may be a strided column)."""
        if self._rank is None:
            tmp = np.empty(len(keys), out.dtype)
            kernels.lookup_sorted(self._table, self._index, self._shift, np.ascontiguousarray(keys), base, tmp)
            out[:] = tmp
            return
        p = np.where(keys < 0, -keys - 1, 0)
        hexed = keys >= 0
        if hexed.any():
            p[hexed] = self._hex_to_p[np.searchsorted(self._hex_before, keys[hexed])]
        out[:] = self._rank[p] + base


def string_buffers(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The offsets and data of an Arrow string column, as numpy views (see kernels)."""
    if column.null_count:
        column = pc.fill_null(column, "")
    _, offsets_buf, data_buf = column.buffers()
    offsets = np.frombuffer(offsets_buf, np.int32)[column.offset : column.offset + len(column) + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.empty(0, np.uint8)
    return offsets, data


def save_vocab(directory: Path, vocab: dict[str, np.ndarray]) -> None:
    """An .npz of one array per field, written member by member: np.savez(**vocab) would take a
    field named "file" or "allow_pickle" for its own argument."""
    with zipfile.ZipFile(Path(directory) / VOCAB_FILE, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, values in vocab.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(values), allow_pickle=False)


def load_vocab(directory: str | Path) -> dict[str, np.ndarray]:
    """Field name -> bytes array of its values in local id order."""
    with np.load(Path(directory) / VOCAB_FILE, allow_pickle=False) as z:
        return {name: z[name] for name in z.files}


def decode_ids(directory: str | Path, ids: np.ndarray, names: list[str], offsets: list[int]) -> list[list[str]]:
    """Global ids of shape (rows, fields) back to the raw strings ("-1" = missing)."""
    vocab = load_vocab(directory)
    return [[vocab[name][int(i) - off].decode() for name, off, i in zip(names, offsets, row)] for row in ids]

"""One categorical field of `hetgmp prepare table`: values -> keys (pass 1) -> local ids (pass 2).

A field is a --sparse column (one value a row) or a --multi-hot column (a
bag of up to `width` values a row). Its local ids, in this order:

    padding   multi-hot fields only: local id 0, filling bags shorter than the bag size
    rare      with --min-count K > 1 only: every value seen fewer than K times
    values    the distinct values in sorted string order ("-1" = missing), as
              `hetgmp prepare criteo` encodes them (vocab.FieldVocab); or, with
              --hash-buckets N, bucket FNV-1a-64(value) mod N (kernels.hash_buckets)

Example, a multi-hot field of bag size 3 with --min-count 2 over the rows
["b", "a", "b"], ["c"], ["a"]: local ids pad 0, rare 1, "a" 2, "b" 3 ("c"
is rare), so the rows become [3, 2, 3], [1, 0, 0], [2, 0, 0]. vocab.npz holds
[b"", b"", b"a", b"b"] for it: the special ids are stored as b"", which no
value is (an empty value is the missing value "-1").

Pass 1 stores int64 keys in the shuffle buckets: FieldVocab's keys, the
bucket for a hashed field, PAD_KEY for padding. Pass 2 maps them to ids.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hetgmp.data import kernels
from hetgmp.data.table_columns import as_strings, bags
from hetgmp.data.vocab import FieldVocab, string_buffers

PAD_KEY = np.iinfo(np.int64).max  # no FieldVocab key or hash bucket is this large
SPECIAL_VALUE = b""


class FieldCodec:
    """Keys, vocabulary and ids of one field; see the module doc."""

    def __init__(self, name: str, width: int = 1, multi_hot: bool = False, hash_buckets: int | None = None,
                 min_count: int = 1, list_delimiter: str = "|") -> None:
        self.name, self.width, self.multi_hot = name, width, multi_hot
        self.hash_buckets, self.list_delimiter = hash_buckets, list_delimiter
        self.min_count = min_count if hash_buckets is None else 1  # a hashed field already shares its buckets
        self.vocab = FieldVocab(name) if hash_buckets is None else None
        self.truncated_bags = 0
        self.padding_id = 0 if multi_hot else None
        self.rare_id = int(multi_hot) if self.min_count > 1 else None
        self.specials = int(multi_hot) + int(self.min_count > 1)
        self._values: np.ndarray | None = None  # sorted vocabulary, set by finish()
        self._counts: np.ndarray | None = None
        self._remap: np.ndarray | None = None  # sorted local id -> final local id (with --min-count)

    # pass 1
    def _value_keys(self, values: pa.Array) -> np.ndarray:
        values = as_strings(values)
        if self.vocab is not None:
            return self.vocab.keys(values)
        out = np.empty(len(values), np.int64)
        kernels.hash_buckets(*string_buffers(values), self.hash_buckets, kernels.MISSING_BYTES, out)
        return out

    def keys(self, column: pa.Array) -> np.ndarray:
        """The (rows, width) keys of one batch's column."""
        if not self.multi_hot:
            return self._value_keys(column)[:, None]
        lists = bags(column, self.list_delimiter)
        lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
        self.truncated_bags += int((lengths > self.width).sum())
        row = np.repeat(np.arange(len(lengths)), lengths)
        position = np.arange(len(row)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        kept = position < self.width
        values = pc.list_flatten(lists)
        out = np.full((len(lengths), self.width), PAD_KEY, np.int64)
        out[row[kept], position[kept]] = self._value_keys(values if kept.all() else values.filter(pa.array(kept)))
        return out

    def largest_bag(self, column: pa.Array) -> int:
        """The longest bag in one batch's column (for the bag size when --bag-size does not set it)."""
        lengths = pc.list_value_length(bags(column, self.list_delimiter))
        return int(pc.max(lengths).as_py() or 0)

    # between the passes
    def finish(self) -> None:
        """End of pass 1: the sorted vocabulary is known."""
        if self.vocab is not None:
            self._values = self.vocab.finish()
            self._counts = np.zeros(len(self._values), np.int64)

    def _sorted_ids(self, keys: np.ndarray) -> np.ndarray:
        assert self.vocab is not None
        out = np.empty(len(keys), np.int64)
        self.vocab.encode(keys, 0, out)
        return out

    def count(self, keys: np.ndarray) -> None:
        """--min-count: count the values of one bucket's (rows, width) keys."""
        assert self._counts is not None
        flat = keys.ravel()
        self._counts += np.bincount(self._sorted_ids(flat[flat != PAD_KEY]), minlength=len(self._counts))

    def settle(self) -> np.ndarray | None:
        """After counting: fix the final ids; return the vocabulary (bytes, local id order), None if hashed."""
        if self._values is None:
            return None
        values = self._values
        if self.min_count > 1:
            keep = self._counts >= self.min_count
            self._remap = np.where(keep, self.specials + np.cumsum(keep) - 1, self.rare_id)
            values = values[keep]
        specials = np.full(self.specials, SPECIAL_VALUE, dtype=values.dtype if len(values) else "S1")
        return np.concatenate([specials, values])

    @property
    def size(self) -> int:
        if self.hash_buckets is not None:
            return self.specials + self.hash_buckets
        assert self._values is not None and self._counts is not None
        kept = len(self._values) if self._remap is None else int((self._counts >= self.min_count).sum())
        return self.specials + kept

    # pass 2
    def encode(self, keys: np.ndarray, base: int, out: np.ndarray) -> None:
        """out[:] = base + local id of each of the (rows, width) keys."""
        flat = keys.ravel()
        pad = flat == PAD_KEY
        values = flat[~pad]
        if self.vocab is None:
            local = values + self.specials
        else:
            local = self._sorted_ids(values)
            local = self._remap[local] if self._remap is not None else local + self.specials
        ids = np.full(len(flat), base + (self.padding_id or 0), np.int64)
        ids[~pad] = local + base
        out[:] = ids.reshape(keys.shape)

    def describe(self) -> dict:
        """What meta.json says of this field."""
        info: dict = {"name": self.name, "bag_size": self.width, "multi_hot": self.multi_hot, "size": self.size}
        if self.hash_buckets is not None:
            info["hash_buckets"] = self.hash_buckets
        if self.padding_id is not None:
            info["padding_id"] = self.padding_id
        if self.rare_id is not None:
            info["rare_id"] = self.rare_id
        if self.multi_hot:
            info["truncated_bags"] = self.truncated_bags
        return info

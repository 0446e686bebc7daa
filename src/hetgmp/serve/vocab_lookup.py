"""Raw categorical values -> global ids with a training set's `vocab.npz` (data/vocab.py).

Field f's vocabulary is its values in sorted string order (missing = "-1"), so a
value's local id is its position in that sorted array and its global id adds
the field's offset. A value the vocabulary lacks gets the field's
out-of-vocabulary id (`oov`, num_ids + f: see serve/trained.py). Example,
vocabulary [b"-1", b"05db9164", b"68fd1e64"], offset 10, oov 99:

    ["68fd1e64", "", "deadbeef"] -> [12, 10, 99]     ("" is missing, "-1")

Two paths, as in prepare: values of 8 lowercase hex digits (Criteo's form)
become the int64 keys of `kernels.hex_keys`, whose order is string order, and
are found by binary search in the vocabulary's keys; any other batch is
dictionary-encoded and its distinct strings searched in the sorted bytes.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hetgmp.data import kernels
from hetgmp.data.vocab import MISSING, string_buffers


class FieldLookup:
    """One field's value -> global id map."""

    def __init__(self, vocab: np.ndarray, offset: int, oov: int) -> None:
        self.vocab, self.offset, self.oov = vocab, offset, oov
        self.hex_vocab = _hex_keys_of(vocab)  # None when some value is not 8 hex digits

    def __len__(self) -> int:
        return len(self.vocab)

    def ids(self, column: pa.Array) -> np.ndarray:
        """int64 global ids of one batch's values (a string column)."""
        if self.hex_vocab is not None:
            keys = np.empty(len(column), np.int64)
            if kernels.hex_keys(*string_buffers(column), keys) == 0:
                return self._found(self.hex_vocab, keys)
        encoded = pc.dictionary_encode(column)
        distinct = np.array([v.encode() if v else MISSING.encode() for v in encoded.dictionary.to_pylist()], dtype=np.bytes_)
        vocab = self.vocab
        if distinct.dtype.itemsize > vocab.dtype.itemsize:  # compare at one width: a longer value must not match its prefix
            vocab = vocab.astype(distinct.dtype)
        distinct_ids = self._found(vocab, distinct.astype(vocab.dtype))
        return distinct_ids[encoded.indices.to_numpy(zero_copy_only=False)]

    def _found(self, table: np.ndarray, values: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(table, values)
        hit = pos < len(table)
        hit[hit] = table[pos[hit]] == values[hit]
        return np.where(hit, self.offset + pos, self.oov).astype(np.int64)


def _hex_keys_of(vocab: np.ndarray) -> np.ndarray | None:
    """The hex keys of a sorted vocabulary ("-1" -> the missing key), or None if one value is not hex."""
    if len(vocab) == 0:
        return None
    column = pa.array(vocab, type=pa.binary()).cast(pa.string())  # hex_keys reads "-1" as missing itself
    keys = np.empty(len(vocab), np.int64)
    if kernels.hex_keys(*string_buffers(column), keys) != 0:
        return None
    return keys

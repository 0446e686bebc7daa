"""Compiled per-value loops over Arrow string columns.

An Arrow string column of n values is two buffers: `offsets` (n + 1
integers) and `data` (the bytes, back to back). Value i is
data[offsets[i]:offsets[i + 1]]. Example: ["7", "", "-2"] is offsets
[0, 1, 1, 3] and data b"7-2". These kernels read those buffers directly, so
no Python object is made per value.

They are serial and release the GIL: callers run them on threads where that
pays. (Numba's parallel loops were tried: on a busy 2-core machine each
launch cost milliseconds, more than the work of a batch column.)
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Categorical keys for values that are exactly 8 lowercase hex digits, as in
# Criteo: key = int(value, 16) + 1, and 0 for a missing value ("" or "-1").
# Sorting keys sorts the strings: "-1" < "00000000" < ... < "ffffffff".
HEX_MISSING_KEY = 0
NOT_HEX = -1
MAX_INT_DIGITS = 18  # below 2**63 whatever the digits


# Nibble of each byte: 0..15 for 0-9 and a-f, 255 (an invalid flag bit) otherwise.
HEX_NIBBLE = np.full(256, 255, np.uint8)
HEX_NIBBLE[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16)


def hex_keys(offsets: np.ndarray, data: np.ndarray, out: np.ndarray) -> int:
    """Fill out[i] with value i's key (see above), or NOT_HEX; return how many are NOT_HEX."""
    return _hex_keys(offsets, data, HEX_NIBBLE, out)


@njit(nogil=True, cache=True)
def _hex_keys(offsets, data, nibble, out):
    misses = 0
    for i in range(out.shape[0]):
        start = offsets[i]
        length = offsets[i + 1] - start
        if length == 8:
            # Branch-free over the 8 digits: 5x faster than testing each byte.
            value = 0
            flags = 0
            for j in range(8):
                d = nibble[data[start + j]]
                flags |= d
                value = (value << 4) | (d & 15)
            key = value + 1 if flags <= 15 else NOT_HEX
        elif length == 0 or (length == 2 and data[start] == 45 and data[start + 1] == 49):
            key = HEX_MISSING_KEY
        else:
            key = NOT_HEX
        out[i] = key
        misses += key == NOT_HEX
    return misses


@njit(nogil=True, cache=True)
def parse_dense(offsets, data, out, ok):
    """Integer features -> the original's dense values, in one pass.

    Empty is 0; then log(x + 1) if x > -1 else -1, in float64 as the original
    computed it, stored as float32. ok[i] is False where value i is not an
    optionally signed decimal integer. Example: ["0", "", "1", "-5"] ->
    [0.0, 0.0, 0.6931472, -1.0], all ok; "1.5" is not ok.
    """
    for i in range(out.shape[0]):
        start = offsets[i]
        end = offsets[i + 1]
        negative = False
        good = True
        if end > start and (data[start] == 45 or data[start] == 43):
            negative = data[start] == 45
            start += 1
            good = end > start  # a sign alone is not a number
        good = good and end - start <= MAX_INT_DIGITS
        value = 0
        for j in range(start, end):
            c = data[j]
            if c < 48 or c > 57:
                good = False
                break
            value = value * 10 + (c - 48)
        x = float(-value if negative else value)
        out[i] = np.log(x + 1.0) if x > -1.0 else -1.0
        ok[i] = good


@njit(nogil=True, cache=True)
def parse_labels(offsets, data, out, ok):
    """Labels must be exactly "0" or "1"."""
    for i in range(out.shape[0]):
        start = offsets[i]
        good = offsets[i + 1] - start == 1 and (data[start] == 48 or data[start] == 49)
        out[i] = data[start] - 48 if good else 0
        ok[i] = good


def sorted_index(table: np.ndarray) -> tuple[np.ndarray, int]:
    """A radix index into a sorted int64 table of non-negative keys, for `lookup_sorted`.

    index[p] is the first position whose key >> shift is >= p, so key k lies in
    table[index[k >> shift]:index[(k >> shift) + 1]], a slice of a few entries:
    a plain binary search over a 10M-entry table misses the cache at most of
    its 24 steps, this at one or two. Example: table [1, 5, 9, 12], shift 2:
    prefixes 0..3 -> index [0, 1, 2, 3, 4], so key 9 (prefix 2) is in table[2:3].
    """
    bits = int(min(max(len(table).bit_length() - 3, 0), 22))
    top = int(table[-1]) if len(table) else 0
    shift = max(top.bit_length() - bits, 0)
    prefixes = np.arange((1 << bits) + 1, dtype=np.int64) << shift
    return np.searchsorted(table, prefixes).astype(np.int64), shift


@njit(nogil=True, cache=True)
def lookup_sorted(table, index, shift, keys, base, out):
    """out[i] = base + position of keys[i] in the sorted `table` (every key is present)."""
    for i in range(keys.shape[0]):
        key = keys[i]
        prefix = key >> shift
        lo = index[prefix]
        hi = index[prefix + 1]
        while lo < hi:
            mid = (lo + hi) >> 1
            if table[mid] < key:
                lo = mid + 1
            else:
                hi = mid
        out[i] = base + lo


FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)
MISSING_BYTES = np.frombuffer(b"-1", np.uint8)  # what an empty value hashes as


@njit(nogil=True, cache=True)
def hash_buckets(offsets, data, buckets, missing, out):
    """out[i] = FNV-1a 64 of value i's UTF-8 bytes mod buckets; an empty value hashes as b"-1".

    Stable across runs and machines (no per-process seed), so rows encoded
    later land in the same buckets. Example: FNV-1a 64 of b"a" is
    0xAF63DC4C8601EC8C, so with 10 buckets "a" -> 0xAF63DC4C8601EC8C % 10 = 6.
    """
    for i in range(out.shape[0]):
        start = offsets[i]
        end = offsets[i + 1]
        value = data[start:end] if end > start else missing
        h = FNV_OFFSET
        for c in value:
            h = (h ^ np.uint64(c)) * FNV_PRIME
        out[i] = np.int64(h % np.uint64(buckets))

"""A plain-Python reference for `hetgmp prepare`, and raw Criteo text to feed both.

The reference reads the whole text into lists and encodes it the obvious
way (sorted(set(...)) per field); `shuffled_order` recomputes the documented
row order (buckets.py) with Python integers.
"""

from __future__ import annotations

import math
import random

import numpy as np

MASK64 = (1 << 64) - 1


def criteo_line(rng: random.Random, odd_values: bool = False) -> str:
    """One train.txt row with the format's quirks: empty and negative ints, missing categoricals."""
    dense = [rng.choice(["", "", str(rng.randint(-3, 50)), str(rng.randint(0, 10**6))]) for _ in range(13)]
    cats = [rng.choice(["", f"{rng.randint(0, 40):08x}", f"{rng.randint(0, 2**32 - 1):08x}"]) for _ in range(26)]
    if odd_values:  # not 8 lowercase hex digits: these fields must take the general string path
        cats[3] = rng.choice(["", "-1", "zz", "ABCDEF01", "1234", "00000000", "a b"])
        cats[25] = rng.choice(["-1", "", f"{rng.randint(0, 5):08x}"])
    return "\t".join([str(rng.randint(0, 1)), *dense, *cats])


def criteo_text(rows: int, seed: int, crlf: bool = False, trailing_newline: bool = True, odd_from: int | None = None) -> str:
    rng = random.Random(seed)
    lines = [criteo_line(rng, odd_values=odd_from is not None and i >= odd_from) for i in range(rows)]
    end = "\r\n" if crlf else "\n"
    return end.join(lines) + (end if trailing_newline else "")


def encode_reference(rows: list[list[str]], dense_columns: int) -> dict[str, object]:
    """rows: split raw rows (label first). Returns labels, dense, sparse (global ids), vocabularies."""
    labels = np.array([float(r[0]) for r in rows], np.float32)
    dense = np.array(
        [[math.log(x + 1) if x > -1 else -1.0 for x in (int(v) if v else 0 for v in r[1 : 1 + dense_columns])] for r in rows],
        np.float64,
    ).reshape(len(rows), dense_columns)
    cats = [[v or "-1" for v in r[1 + dense_columns :]] for r in rows]
    vocabs, sparse, offset = [], np.zeros((len(rows), len(cats[0])), np.int64), 0
    for f in range(len(cats[0])):
        vocab = sorted({row[f] for row in cats})
        position = {v: i for i, v in enumerate(vocab)}
        sparse[:, f] = [offset + position[row[f]] for row in cats]
        vocabs.append(vocab)
        offset += len(vocab)
    return {"labels": labels, "dense": dense, "sparse": sparse, "vocabs": vocabs, "fields": [len(v) for v in vocabs]}


def _splitmix_bucket(row: int, seed_word: int, buckets: int) -> int:
    z = (row + seed_word) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    z ^= z >> 31
    return z % buckets


def shuffled_order(rows: int, seed: int, buckets: int = 64) -> np.ndarray:
    """Source row of each output row: bucket by hash, buckets in order, each permuted by default_rng([seed, b])."""
    word = int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0])
    members: list[list[int]] = [[] for _ in range(buckets)]
    for r in range(rows):
        members[_splitmix_bucket(r, word, buckets)].append(r)
    order = [np.array(m, np.int64)[np.random.default_rng([seed, b]).permutation(len(m))] for b, m in enumerate(members)]
    return np.concatenate(order)

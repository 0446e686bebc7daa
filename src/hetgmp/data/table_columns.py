"""Column values of `hetgmp prepare table`: labels, dense features and categorical strings.

Each function takes one Arrow column of a batch (strings from CSV, any
supported type from Parquet) and returns numpy values, raising a HetGMPError
that names the row (`where(i)`), the column and the value when one breaks
the rule. The types each role takes are in ROLE_TYPES.

Dense transforms (missing, NaN included, is 0 before the transform):

    criteo  log(x + 1) if x > -1 else -1, as the original did for Criteo
    log     sign(x) * log(1 + |x|), which keeps negative values apart
    none    x as it is
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hetgmp.data import kernels
from hetgmp.data.vocab import string_buffers
from hetgmp.errors import HetGMPError

DENSE_TRANSFORMS = ("criteo", "log", "none")
Where = Callable[[int], str]

ROLE_TYPES = {
    "label": "integers, booleans, floats or strings holding 0 or 1",
    "dense": "integers, floats, booleans, decimals or strings holding numbers",
    "sparse": "strings, integers, booleans or dictionaries of them",
    "multi-hot": "lists of strings/integers/booleans, or strings of values joined by --list-delimiter",
}


_is_string_view = getattr(pa.types, "is_string_view", lambda t: False)  # pyarrow >= 16


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or _is_string_view(t)


def _is_category(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_category(t.value_type)
    return _is_text(t) or pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_null(t)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t) or _is_text(t)


def _is_bag(t: pa.DataType) -> bool:
    lists = pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
    return (lists and _is_category(t.value_type)) or _is_text(t)


_ACCEPTS = {"label": _is_number, "dense": lambda t: _is_number(t) or pa.types.is_decimal(t), "sparse": _is_category, "multi-hot": _is_bag}


def check_type(where: str, column: str, role: str, type: pa.DataType) -> None:
    """Refuse a column whose Arrow type `role` cannot take."""
    if not _ACCEPTS[role](type):
        raise HetGMPError(f"column {column} of {where} has type {type}, which --{role} cannot take ({role} columns hold "
                          f"{ROLE_TYPES[role]}): cast it in the file, or give the column another role")


def as_strings(column: pa.Array) -> pa.Array:
    """A categorical column as an Arrow string array (integers in decimal: 7 -> "7"); nulls stay null."""
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column if pa.types.is_string(column.type) else pc.cast(column, pa.string())


def _zero_one(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = (values == 0) | (values == 1)
    return np.where(ok, values, 0).astype(np.int8), ok


def labels(column: pa.Array, name: str, where: Where) -> np.ndarray:
    """0/1 labels as int8 ("1.0" in text too); anything else, missing included, is an error naming the row and value."""
    if _is_text(column.type):
        out = np.empty(len(column), np.int8)
        ok = np.empty(len(column), np.bool_)
        kernels.parse_labels(*string_buffers(as_strings(column)), out, ok)  # "0" and "1", the common case
        if not ok.all():
            try:
                out, ok = _zero_one(pc.cast(_empty_as_null(column), pa.float64()).to_numpy(zero_copy_only=False))
            except pa.ArrowInvalid:
                pass  # not numbers: the kernel's verdict stands
    else:
        out, ok = _zero_one(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False))
    if not ok.all():
        row = int(np.argmin(ok))
        raise HetGMPError(f"{where(row)}: label column {name} is {column[row].as_py()!r}; labels must be 0 or 1 (clicks): "
                          "fix the row, or map the column to 0/1 before preparing")
    return out


def _empty_as_null(column: pa.Array) -> pa.Array:
    column = as_strings(column)
    return pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)


def _numbers(column: pa.Array, name: str, where: Where) -> np.ndarray:
    """float64 values, NaN for missing; text is parsed ("" is missing)."""
    if _is_text(column.type):
        column = _empty_as_null(column)
        try:
            column = pc.cast(column, pa.float64())
        except pa.ArrowInvalid:
            row = next(i for i, v in enumerate(column.to_pylist()) if v is not None and not _parses(v))
            raise HetGMPError(f"{where(row)}: dense column {name} is {column[row].as_py()!r}, which is not a number: "
                              "fix the row, or pass the column with --sparse") from None
    return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)


def _parses(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def dense(column: pa.Array, name: str, transform: str, where: Where) -> np.ndarray:
    """One dense feature, transformed (see the module doc), as float32; infinities are errors."""
    x = _numbers(column, name, where)
    x = np.where(np.isnan(x), 0.0, x)
    with np.errstate(invalid="ignore", divide="ignore"):
        if transform == "criteo":
            x = np.where(x > -1, np.log(np.maximum(x, -1) + 1), -1.0)
        elif transform == "log":
            x = np.sign(x) * np.log1p(np.abs(x))
    out = x.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        row = int(np.argmax(bad))
        raise HetGMPError(f"{where(row)}: dense column {name} is {column[row].as_py()!r}, which is {out[row]} after "
                          f"--dense-transform {transform}; dense values must be finite: fix the row")
    return out


def bags(column: pa.Array, list_delimiter: str) -> pa.Array:
    """A multi-hot column as a list array; a missing bag becomes [null] (one missing value)."""
    if _is_text(column.type):
        column = pc.split_pattern(as_strings(column), list_delimiter)
    if column.null_count:
        column = pc.fill_null(column, pa.scalar([None], column.type))
    return column

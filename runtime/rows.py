"""The one check every batch of rows passes before it reaches a graph (HTTP, Python API and files alike)."""

from __future__ import annotations

import numpy as np

from runtime.errors import InputError, LimitExceeded


def check_rows(arr: np.ndarray, field: str, width: int, max_rows: int, model: str = "") -> np.ndarray:
    """A float32 (n, width) array with 1 <= n <= max_rows and only finite values, or the error naming why (and, for
    a wrong width, the model that would have answered: `model`, e.g. "'digits' version 3")."""
    check_row_shape(arr.shape, field, width, max_rows, model)
    if arr.dtype != np.float32:
        with np.errstate(over="ignore"):  # values beyond float32 become inf and are reported below
            arr = arr.astype(np.float32)
    if (found := non_finite(arr)) is not None:
        row, col, count = found
        raise InputError(f"{field}[{row}][{col}] is not a finite float32 number ({count} such values)")
    return arr


def non_finite(arr: np.ndarray) -> tuple[int, int, int] | None:
    """(row, column) of the first value of float32 rows (n, D) that is not finite, and how many are not; None when
    every one is."""
    bad = ~np.isfinite(arr)
    if not bad.any():
        return None
    row, col = (int(v) for v in np.argwhere(bad)[0])
    return row, col, int(bad.sum())


def check_row_shape(shape: tuple[int, ...], field: str, width: int, max_rows: int, model: str = "") -> None:
    """check_rows' rules on the shape alone: a shape a request declares is checked before its values are read."""
    if len(shape) != 2:
        raise InputError(f"{field} must have shape (rows, {width}), got {list(shape)}")
    if shape[0] == 0:
        raise InputError(f"{field} is empty; send at least one row")
    if shape[0] > max_rows:
        raise LimitExceeded(f"{field} has {shape[0]} rows; the limit is {max_rows} (VAE_MAX_ROWS)")
    if shape[1] != width:
        raise InputError(f"{field} rows must have {width} values; row 0 has {shape[1]}{taking(model, width)}")


def taking(model: str, width: int) -> str:
    return f" (model {model} takes {width})" if model else ""

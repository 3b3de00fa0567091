"""The one check every batch of rows passes before it reaches a graph (HTTP, Python API and files alike)."""

from __future__ import annotations

import numpy as np

from runtime.errors import InputError, LimitExceeded


def check_rows(arr: np.ndarray, field: str, width: int, max_rows: int, model: str = "") -> np.ndarray:
    """A float32 (n, width) array with 1 <= n <= max_rows and only finite values, or the error naming why (and, for
    a wrong width, the model that would have answered: `model`, e.g. "'digits' version 3")."""
    if arr.ndim != 2:
        raise InputError(f"{field} must have shape (rows, {width}), got {list(arr.shape)}")
    if arr.shape[0] == 0:
        raise InputError(f"{field} is empty; send at least one row")
    if arr.shape[0] > max_rows:
        raise LimitExceeded(f"{field} has {arr.shape[0]} rows; the limit is {max_rows} (VAE_MAX_ROWS)")
    if arr.shape[1] != width:
        raise InputError(f"{field} rows must have {width} values; row 0 has {arr.shape[1]}{taking(model, width)}")
    if arr.dtype != np.float32:
        with np.errstate(over="ignore"):  # values beyond float32 become inf and are reported below
            arr = arr.astype(np.float32)
    bad = ~np.isfinite(arr)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise InputError(f"{field}[{row}][{col}] is not a finite float32 number ({int(bad.sum())} such values)")
    return arr


def taking(model: str, width: int) -> str:
    return f" (model {model} takes {width})" if model else ""

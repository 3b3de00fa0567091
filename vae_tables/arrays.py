"""NumPy inputs (.npy, memory-mapped): the one check that a stored array is a table of real numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vae_tables.errors import DataError


def load_npy(path: Path) -> np.ndarray:
    """The (N, D) array of a .npy file, memory-mapped: rows are read from disk when used, so any size fits."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # EOFError: an empty or cut file
        raise DataError(f"{path}: cannot read as .npy ({exc or type(exc).__name__})") from exc
    return as_matrix(arr, path.name)


def as_matrix(arr: np.ndarray, what: str) -> np.ndarray:
    """arr as rows x features: a memory map stays on disk, anything else becomes float32; `what` names it."""
    if arr.ndim != 2:
        raise DataError(f"{what}: expected a 2-D array (rows x features), got shape {arr.shape}")
    # bool is 0 and 1, as a table's bool columns and true/false cells are
    real = np.issubdtype(arr.dtype, np.number) and not np.issubdtype(arr.dtype, np.complexfloating)
    if not (real or arr.dtype == np.bool_):
        raise DataError(f"{what}: expected real numbers, got dtype {arr.dtype}")
    if isinstance(arr, np.memmap):
        return arr  # stays on disk; readers take rows from it a chunk at a time
    return arr.astype(np.float32)

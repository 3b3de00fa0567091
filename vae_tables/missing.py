"""The one missing-value policy: a feature cell that is null, NaN or a missing-value token either stops the read,
naming its row and column (na="stop", the default), or leaves its row out (na="drop").

An infinite value is not a missing value: it is never dropped, and the tools refuse it (training's check_values,
vae-score's check_finite below), so a row cannot disappear from the scores because one of its values overflowed.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from vae_tables.errors import DataError

Na = Literal["stop", "drop"]
MISSING = "a missing value (empty, NA, NaN, null, ...)"


def check_na(na: str) -> Na:
    if na not in ("stop", "drop"):
        raise DataError(f"--na must be 'stop' or 'drop', not {na!r}")
    return "stop" if na == "stop" else "drop"


def complete_rows(
    x: np.ndarray, names: list[str], na: Na, *, source: str, first_row: int = 0, whole: bool = True
) -> np.ndarray:
    """(N,) bool: the rows of x (N, D) to keep under the policy. first_row: the file's row number of x's first row.
    whole: x is the whole table (na="drop" must leave a row), not one batch of a table read in batches."""
    missing: np.ndarray = np.isnan(x).any(axis=1)  # (N, D) -> (N,)
    if not missing.any():
        return ~missing
    if na == "stop":
        row = int(np.argmax(missing))
        column, count = names[int(np.argmax(np.isnan(x[row])))], int(missing.sum())
        among = "" if whole else f" among rows {first_row}-{first_row + len(x) - 1}"
        raise DataError(
            f"{source}: {count} {'row has' if count == 1 else 'rows have'} {MISSING}{among}; the first is row "
            f"{first_row + row} (0-based, after any header), column {column!r}: pass --na drop to leave such rows out"
        )
    if whole and missing.all():
        worst = names[int(np.argmax(np.isnan(x).sum(axis=0)))]
        raise DataError(
            f"{source}: every row has a missing value (column {worst!r} has the most), so --na drop leaves none; "
            f"leave mostly empty columns out with --exclude-columns"
        )
    return ~missing


def check_finite(x: np.ndarray, names: list[str], *, source: str, rows: np.ndarray | None = None) -> None:
    """Refuse infinite values (and numbers beyond float32, which became infinite), naming the first one's place.
    rows: (N,) the file's row number of each row of x (default 0, 1, ...), which differ once rows were dropped."""
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(
            f"{source}: {int(bad.sum())} infinite values (or beyond float32); the first is in row "
            f"{row if rows is None else int(rows[row])} (0-based, after any header), column {names[col]!r}"
        )

"""Choose a table's feature columns and turn them into x (N, D) float32 by vae_tables/numeric.py's rule and
vae_tables/missing.py's policy; the label column, if any, comes along for the rows kept."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vae_tables.errors import DataError
from vae_tables.missing import Na, check_na, complete_rows
from vae_tables.numeric import numeric_column
from vae_tables.text import NOT_UTF8

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Features:
    x: np.ndarray  # (N, D) float32: the rows kept
    feature_names: list[str]  # (D,)
    labels: np.ndarray | None  # (N,) the label column's values for the rows kept
    kept: np.ndarray  # (N,) int64: each row of x as a row of the table (from 0, after any header)
    dropped: int  # rows left out because of a missing value (na="drop")


def feature_matrix(
    frame: pa.Table,
    *,
    columns: Sequence[str] | None,
    exclude: Sequence[str] = (),
    label: str | None = None,
    na: Na = "stop",
    source: str,
    first_row: int = 0,
    whole: bool = True,
    advice: str | None = None,
) -> Features:
    """x (N, D) float32 from the chosen columns: numbers as they are, booleans as 0/1, text that reads as numbers;
    missing values refused or their rows left out (vae_tables/missing.py; infinities are left to the caller).
    first_row and whole: where this frame stands in its file, for a table read in batches. advice: what a refusal of a
    column that is not numeric tells the user to do (vae_tables/numeric.py)."""
    na = check_na(na)
    names = select_columns(frame.column_names, columns=columns, exclude=exclude, label=label, source=source)
    x = np.empty((frame.num_rows, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        column = numeric_column(frame.column(name), name, source, first_row, advice)
        with np.errstate(over="ignore"):  # a number beyond float32 becomes inf, refused by name where it matters
            x[:, j] = column
        if first_row == 0:  # once per table, not per batch
            _warn_if_float32_flattens(column, x[:, j], name, source)
    keep = complete_rows(x, names, na, source=source, first_row=first_row, whole=whole)
    labels = labels_of(frame.column(label)) if label is not None else None
    if keep.all():
        return Features(x, names, labels, np.arange(len(x)), 0)
    kept = np.flatnonzero(keep)
    return Features(x[kept], names, labels[kept] if labels is not None else None, kept, len(x) - len(kept))


@dataclass
class Float32Spread:
    """The range of a column as read (float64) and as stored in x (float32), gathered over a table read whole or a
    chunk at a time, for the warning below: x is float32 (7 significant digits), so a column that varies only past
    them (1e6 + noise of 1e-3, a timestamp in milliseconds) is stored as one value and modelled as constant."""

    low: float = np.inf
    high: float = -np.inf
    stored_low: float = np.inf
    stored_high: float = -np.inf

    def add(self, column: np.ndarray, stored: np.ndarray) -> None:
        """column (n,) as read and stored (n,), the same cells in x."""
        finite, kept = column[np.isfinite(column)], stored[np.isfinite(stored)]
        if finite.size:
            self.low, self.high = min(self.low, float(finite.min())), max(self.high, float(finite.max()))
        if kept.size:
            self.stored_low = min(self.stored_low, float(kept.min()))
            self.stored_high = max(self.stored_high, float(kept.max()))

    def warn(self, name: str, source: str) -> None:
        if not (np.isfinite(self.low) and np.isfinite(self.stored_low)):
            return
        # a spread past float64's own rounding (0.3 against 0.30000000000000004 is no variation)
        varies = self.high - self.low > 1e-12 * max(abs(self.low), abs(self.high))
        if varies and not self.stored_high > self.stored_low:
            log.warning(
                "%s: column %r varies only beyond float32's 7 significant digits (around %.7g), so it is stored as "
                "one value; subtract its typical value before training (or scale it) to keep its variation",
                source,
                name,
                self.stored_low,
            )


def _warn_if_float32_flattens(column: np.ndarray, stored: np.ndarray, name: str, source: str) -> None:
    spread = Float32Spread()
    spread.add(column, stored)
    spread.warn(name, source)


def select_columns(
    available: Sequence[str],
    *,
    columns: Sequence[str] | None,
    exclude: Sequence[str] = (),
    label: str | None = None,
    source: str,
) -> list[str]:
    """`columns` in their order if given, else every column but the label; less those in `exclude`."""
    if label is not None and columns is not None and label in columns:
        raise DataError(
            f"{source}: --label-column {label!r} is also in --columns; the model never sees its label, so leave it "
            "out of --columns"
        )
    asked = [*(columns or ()), *exclude, *([label] if label is not None else [])]
    present = set(available)  # a set: thousands of columns are looked up at every batch
    for name in asked:
        if name not in present:
            shown = list(available) if len(available) <= 50 else [*available[:50], f"... {len(available)} in all"]
            raise DataError(f"{source}: no column named {name!r}; columns are {shown}")
    excluded = set(exclude)
    wanted = [
        c for c in (columns if columns is not None else [c for c in available if c != label]) if c not in excluded
    ]
    unreadable = [c for c in [*wanted, *([label] if label is not None else [])] if NOT_UTF8 in c]
    if unreadable:
        raise DataError(
            f"{source}: the header names column {unreadable[0]!r} in bytes that are not UTF-8; re-save the file as "
            "UTF-8, so that the model's feature names are those a scoring file's header gives"
        )
    counts = Counter(available)
    repeated = sorted({c for c in wanted if counts[c] > 1})
    if repeated:
        raise DataError(f"{source}: several columns are named {repeated}; column names must be unique")
    if not wanted:
        raise DataError(f"{source}: no feature columns are left once --exclude-columns and the label are taken out")
    return wanted


def labels_of(column: pa.ChunkedArray) -> np.ndarray:
    """Strings or numbers as numpy gives them; with a missing label, text throughout ("" for the missing ones)."""
    if column.null_count:
        column = pc.fill_null(column.cast(pa.string()), "")
    return np.asarray(column.to_numpy(zero_copy_only=False))

"""The one missing-value policy: stop naming the row and column, or drop the row; infinities are never missing."""

from __future__ import annotations

import numpy as np
import pytest

from vae_tables.errors import DataError
from vae_tables.missing import check_finite, check_na, complete_rows

X = np.arange(12, dtype=np.float32).reshape(6, 2)
NAMES = ["a", "b"]


def _with_nan(*cells: tuple[int, int]) -> np.ndarray:
    x = X.copy()
    for cell in cells:
        x[cell] = np.nan
    return x


def test_stop_names_the_first_row_and_column_counting_from_first_row() -> None:
    with pytest.raises(DataError, match=r"d: 2 rows have a missing value .*; the first is row 12 .*column 'b': pass"):
        complete_rows(_with_nan((2, 1), (4, 0)), NAMES, "stop", source="d", first_row=10)
    with pytest.raises(DataError, match=r"1 row has a missing value .* among rows 10-15; the first is row 12"):
        complete_rows(_with_nan((2, 1)), NAMES, "stop", source="d", first_row=10, whole=False)


def test_drop_keeps_the_complete_rows_and_a_table_must_keep_one() -> None:
    keep = complete_rows(_with_nan((2, 1), (4, 0)), NAMES, "drop", source="d")
    assert keep.tolist() == [True, True, False, True, False, True]
    every = _with_nan(*((r, 1) for r in range(6)))
    assert not complete_rows(every, NAMES, "drop", source="d", whole=False).any()  # a batch may lose every row
    with pytest.raises(DataError, match=r"every row has a missing value \(column 'b' has the most\)"):
        complete_rows(every, NAMES, "drop", source="d")


def test_infinity_is_not_missing_and_is_refused_by_check_finite() -> None:
    x = X.copy()
    x[3, 0] = -np.inf
    assert complete_rows(x, NAMES, "drop", source="d").all()
    with pytest.raises(DataError, match=r"d: 1 infinite values .* row 8 \(0-based, after any header\), column 'a'"):
        check_finite(x, NAMES, source="d", rows=np.array([5, 6, 7, 8, 10, 11]))
    check_finite(X, NAMES, source="d")


def test_na_is_stop_or_drop() -> None:
    assert check_na("drop") == "drop"
    with pytest.raises(DataError, match="--na must be 'stop' or 'drop', not 'skip'"):
        check_na("skip")

"""The one rule for numeric columns: which pyarrow types count, how text cells become numbers, what is refused."""

from __future__ import annotations

import datetime
import decimal

import numpy as np
import pyarrow as pa
import pytest

from vae_tables.errors import DataError
from vae_tables.numeric import NA_TOKENS, can_be_numeric, numeric_column


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (pa.array([1, None, -3], pa.int8()), [1, np.nan, -3]),
        (pa.array([0.5, None, 2.0], pa.float32()), [0.5, np.nan, 2.0]),
        (pa.array([True, None, False]), [1, np.nan, 0]),
        (pa.array([decimal.Decimal("1.25"), None], pa.decimal128(5, 2)), [1.25, np.nan]),
        (pa.array([None, None], pa.null()), [np.nan, np.nan]),
        (pa.array([2.5, None, 2.5]).dictionary_encode(), [2.5, np.nan, 2.5]),
    ],
)
def test_typed_columns_are_cast_with_nulls_as_nan(array: pa.Array, expected: list[float]) -> None:
    assert can_be_numeric(array.type)
    np.testing.assert_array_equal(numeric_column(array, "a", "d"), expected)
    np.testing.assert_array_equal(numeric_column(pa.chunked_array([array[:1], array[1:]]), "a", "d"), expected)


def test_text_cells_read_as_numbers_tokens_and_booleans() -> None:
    cells = ["1", " 2.5 ", "1_000", "-1e3", "inf", None, *NA_TOKENS, " NA ", "true", "FALSE", "True"]
    expected = [1, 2.5, 1000, -1000, np.inf, *[np.nan] * (len(NA_TOKENS) + 2), 1, 0, 1]
    np.testing.assert_array_equal(numeric_column(pa.array(cells), "a", "d"), expected)


def test_text_that_pyarrow_casts_gives_the_numbers_float_gives() -> None:
    # The fast path (pyarrow's cast) and the reference rule (float() per cell) agree wherever both read a cell.
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal(500) * 10.0 ** rng.integers(-30, 30, 500), [0.1, 1 / 3, 2**53 + 1]])
    cells = [*(repr(float(v)) for v in values), *(f"{v:.17g}" for v in values), *(f"{v:.3e}" for v in values)]
    cells += ["12345678901234567890", "-0", "+7", ".5", "5.", "1E5", "nan", "-inf"]
    fast = numeric_column(pa.array(cells), "a", "d")
    slow = numeric_column(pa.array([*cells, "true"]), "a", "d")[:-1]  # "true" sends every cell through float()
    np.testing.assert_array_equal(fast, [float(c) for c in cells])
    np.testing.assert_array_equal(slow, fast)


def test_a_cell_that_is_no_number_is_named_by_its_row_in_the_file() -> None:
    with pytest.raises(DataError, match=r"d: column 'fee' is not numeric \(row 12, 0-based after any header, holds 'x"):
        numeric_column(pa.array(["1", "2", "x"]), "fee", "d", first_row=10)
    with pytest.raises(DataError, match=r"holds '0,5'; a decimal comma\? write numbers with '\.'\): leave it out"):
        numeric_column(pa.array(["0,5"]), "fee", "d")


def test_other_types_are_refused_naming_their_first_value() -> None:
    dates = pa.array([None, datetime.datetime(2024, 1, 2)], pa.timestamp("s"))
    assert not can_be_numeric(dates.type) and not can_be_numeric(pa.list_(pa.int64()))
    with pytest.raises(DataError, match=r"column 'when' is not numeric \(row 1, .* holds '2024-01-02 00:00:00'\)"):
        numeric_column(dates, "when", "d")

"""The one rule for which columns are features and how their cells become numbers, for training and vae-score alike.

A column is numeric when pyarrow typed it as a number, a boolean (0/1), a decimal or all-null, when it is a
dictionary of such values, or when it is text whose every cell reads as a number: a missing-value token (NA_TOKENS,
after stripping spaces), pyarrow's true/false words, or anything Python's float() reads ('1_000', ' 2.5 ').
Missing cells become NaN; whether that stops or drops a row is decided in vae_tables/missing.py.
"""

from __future__ import annotations

import re
import shlex

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vae_tables.errors import DataError

NA_TOKENS = ("", "NA", "N/A", "NaN", "nan", "null", "NULL", "None")  # cells read as missing values
TRUE_TOKENS = ("1", "True", "TRUE", "true")  # pyarrow's own words for a boolean column: a text column that holds
FALSE_TOKENS = ("0", "False", "FALSE", "false")  # them reads as the boolean column pyarrow would have inferred
_NUMBER_TYPES = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_decimal, pa.types.is_null)


def can_be_numeric(kind: pa.DataType) -> bool:
    """Whether a column of this type may hold features (text only if its cells read as numbers, found when read)."""
    if pa.types.is_dictionary(kind):
        return can_be_numeric(kind.value_type)
    return any(test(kind) for test in _NUMBER_TYPES) or _is_text(kind)


def numeric_column(
    column: pa.Array | pa.ChunkedArray, name: str, source: str, first_row: int = 0, advice: str | None = None
) -> np.ndarray:
    """(N,) float64 of a column by the rule above, NaN where a value is missing; first_row: the row number of the
    column's first cell in the file (0-based after any header), for the message naming a cell that is not a number;
    advice: what that message tells the user to do (default: vae-train's options to leave the column out)."""
    if isinstance(column, pa.Array):
        column = pa.chunked_array([column], type=column.type)
    kind = column.type
    if pa.types.is_dictionary(kind):
        return numeric_column(column.cast(kind.value_type), name, source, first_row, advice)
    if any(test(kind) for test in _NUMBER_TYPES):
        return np.asarray(pc.cast(column, pa.float64(), safe=False).to_numpy(), dtype=np.float64)
    if _is_text(kind):
        return _from_text(column, name, source, first_row, advice)
    valid = np.asarray(pc.is_valid(column).to_numpy(zero_copy_only=False))
    row = int(np.argmax(valid))
    raise not_numeric(source, name, _holds(first_row + row, str(column[row].as_py())), advice)


def not_numeric(source: str, name: str, why: str, advice: str | None = None) -> DataError:
    """The refusal of a non-numeric column, saying why (the cell that is not a number, or the column's type) and
    what to do (default: vae-train's options to leave it out; a scorer's feature cannot be left out)."""
    advice = advice or f"leave it out with --exclude-columns {shlex.quote(name)}, or choose columns with --columns"
    return DataError(f"{source}: column {name!r} is not numeric ({why}): {advice}")


def _holds(row: int, value: str) -> str:
    hint = "; a decimal comma? write numbers with '.'" if re.fullmatch(r"\s*[+-]?\d*,\d+\s*", value) else ""
    return f"row {row}, 0-based after any header, holds {value[:40]!r}{hint}"


def _is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _from_text(
    column: pa.ChunkedArray, name: str, source: str, first_row: int, advice: str | None = None
) -> np.ndarray:
    # pyarrow's cast reads plain numbers (and nan, inf) as float() does, correctly rounded, at C speed; a column it
    # refuses (tokens, spaces, '1_000', or a cell that is no number) is read cell by cell by the rule itself.
    try:
        return np.asarray(pc.cast(column, pa.float64()).to_numpy(), dtype=np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    out = np.empty(len(column), dtype=np.float64)
    i = 0
    for chunk in column.chunks:
        for cell in chunk.to_pylist():
            try:
                out[i] = _cell(cell)
            except ValueError:
                raise not_numeric(source, name, _holds(first_row + i, cell), advice) from None
            i += 1
    return out


def _cell(cell: str | None) -> float:
    text = "" if cell is None else cell.strip()
    if text in NA_TOKENS:
        return np.nan
    if text in TRUE_TOKENS or text in FALSE_TOKENS:
        return float(text in TRUE_TOKENS)
    return float(text)

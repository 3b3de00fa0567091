"""Read a user's table file (.csv/.tsv/.txt, each also .gz, or .parquet) and turn chosen columns into features.

No torch here, nor anything of training that imports it: an offline scorer with only onnxruntime and pyarrow
installed reads its input by the same rules as training. Text is parsed by pyarrow.csv (multi-threaded; a .gz is
decompressed on the fly). Every problem is a DataError that names the file, the line or row and column, and says
what to do. Rows are counted as in data.check_values: from 0, after any header; lines from 1, as an editor does.
"""

from __future__ import annotations

import csv
import gzip
import re
import shlex
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
import pyarrow.csv as pa_csv  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from training.errors import DataError

NA_TOKENS = ("", "NA", "N/A", "NaN", "nan", "null", "NULL", "None")  # cells read as missing values
TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe", " ": "space"}  # tried in this order
_HEAD_BYTES = 1 << 16  # the head read to choose the delimiter and the header: 64 KiB...
_HEAD_MAX_BYTES = 1 << 24  # ...or more, up to 16 MiB, until it holds two whole lines
_HEAD_LINES = 50


@dataclass(frozen=True)
class Features:
    x: np.ndarray  # (N, D) float32: the rows kept
    feature_names: list[str]  # (D,)
    labels: np.ndarray | None  # (N,) the label column's values for the rows kept
    kept: np.ndarray  # (N,) int64: each row of x as a row of the table (from 0, after any header)
    dropped: int  # rows left out because of a missing value (na="drop")


def suffix_of(path: Path) -> str:
    """'.csv', '.csv.gz', '.parquet', ...: the last suffix, or the last two when the name ends in .gz."""
    suffixes = [s.lower() for s in path.suffixes]
    return "".join(suffixes[-2:]) if suffixes[-1:] == [".gz"] else "".join(suffixes[-1:])


def read_frame(path: Path, *, delimiter: str | None = None) -> pa.Table:
    """The whole table, typed by pyarrow: numbers, bool (true/false), strings; NA_TOKENS and empty cells as null."""
    suffix = suffix_of(path)
    if suffix == ".parquet":
        if delimiter is not None:
            raise DataError(f"{path}: --delimiter applies to text tables ({', '.join(TEXT_SUFFIXES)}), not .parquet")
        try:
            return pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: cannot read as .parquet ({exc})") from exc
    if suffix not in TEXT_SUFFIXES:
        raise DataError(
            f"{path}: cannot read {suffix or 'a file without a suffix'}; use .parquet or {', '.join(TEXT_SUFFIXES)}"
        )
    return _parse(path, *text_layout(path, delimiter))


def text_layout(path: Path, delimiter: str | None = None) -> tuple[str, list[str], int]:
    """(delimiter, column names, lines to skip before the rows) of a text table, from its first lines."""
    lines = _head_lines(path)
    content = [line for line in lines if line.strip()]
    if not content:
        raise DataError(f"{path}: empty file (no header and no rows)")
    sep = _choose_delimiter(path, content, delimiter)
    first = next(csv.reader(content[:1], delimiter=sep))
    has_header = not _is_data_row(first)
    names = _header_names(path, first) if has_header else [f"column_{j}" for j in range(len(first))]
    skip = next(i for i, line in enumerate(lines) if line.strip()) + has_header  # blank lines, then the header
    return sep, names, skip


def _head_lines(path: Path) -> list[str]:
    # The whole lines at the start of the (decompressed) file; a last line cut by the read is left out.
    size = _HEAD_BYTES
    while True:
        try:
            with gzip.open(path) if suffix_of(path).endswith(".gz") else path.open("rb") as f:
                raw = f.read(size)
        except (OSError, EOFError, zlib.error) as exc:
            raise _unreadable(path, exc) from exc
        whole = len(raw) < size
        lines = [line.rstrip("\r") for line in raw.decode("utf-8-sig", errors="replace").split("\n")]
        lines = lines if whole else lines[:-1]
        if whole or sum(1 for line in lines if line.strip()) >= 2 or size >= _HEAD_MAX_BYTES:
            return lines[:_HEAD_LINES]
        size *= 4


def _choose_delimiter(path: Path, head: list[str], delimiter: str | None) -> str:
    # The one given, else tab for .tsv and comma for the rest; never silently another one, but name it when it
    # (unlike the expected one) splits every line of the head into the same number (> 1) of fields.
    expected = _one_character(delimiter) if delimiter is not None else "\t" if ".tsv" in suffix_of(path) else ","
    if _splits_evenly(head, expected):
        return expected
    for sep, name in DELIMITERS.items():
        if sep != expected and _splits_evenly(head, sep):
            raise DataError(f"{path}: looks {name}-separated: pass --delimiter {_shown(sep)}")
    return expected


def _splits_evenly(lines: list[str], sep: str) -> bool:
    counts = {len(row) for row in csv.reader(lines, delimiter=sep)}  # quotes respected, as pyarrow does
    return len(counts) == 1 and counts.pop() > 1


def _one_character(delimiter: str) -> str:
    sep = {"\\t": "\t", "tab": "\t"}.get(delimiter, delimiter)
    if len(sep) != 1 or sep in '"\r\n':
        raise DataError(f"--delimiter must be one character, such as ',' ';' '|' or '\\t' (tab), not {delimiter!r}")
    return sep


def _shown(sep: str) -> str:
    return "'\\t'" if sep == "\t" else repr(sep)


def _is_data_row(cells: list[str]) -> bool:
    # A first line of numbers (missing values allowed) is data, not a header: columns are then column_0, ...
    stripped = [cell.strip() for cell in cells]
    return all(cell in NA_TOKENS or _is_number(cell) for cell in stripped) and any(map(_is_number, stripped))


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _header_names(path: Path, cells: list[str]) -> list[str]:
    names = [cell.strip() or f"column_{j}" for j, cell in enumerate(cells)]  # pandas' index column has no name
    repeated = [name for name, n in Counter(names).items() if n > 1]
    if repeated:
        raise DataError(f"{path}: the header names {repeated} more than once; give every column its own name")
    return names


def _parse(path: Path, sep: str, names: list[str], skip: int) -> pa.Table:
    ragged: list[Any] = []  # pyarrow's InvalidRow for the first line with the wrong number of fields

    def on_invalid_row(row: Any) -> str:
        ragged.append(row)
        return "error"

    try:
        return pa_csv.read_csv(
            path,  # a .gz name is decompressed by pyarrow
            read_options=pa_csv.ReadOptions(column_names=names, skip_rows=skip),
            parse_options=pa_csv.ParseOptions(delimiter=sep, invalid_row_handler=on_invalid_row),
            convert_options=pa_csv.ConvertOptions(null_values=list(NA_TOKENS), strings_can_be_null=True),
        )
    except pa.ArrowInvalid as exc:
        if ragged:
            raise _ragged(path, sep, len(names), ragged[0]) from None
        raise DataError(f"{path}: cannot read ({exc})") from exc
    except OSError as exc:  # a .gz that is corrupt or cut short shows up here
        raise _unreadable(path, exc) from exc


def _ragged(path: Path, sep: str, expected: int, row: Any) -> DataError:
    # pyarrow counts rows, not lines; find the line again with the csv module (only on this error path).
    where, fields, text = "a line", int(row.actual_columns), str(row.text)
    opener = gzip.open if suffix_of(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.reader(f, delimiter=sep)
        for cells in reader:
            if cells and len(cells) != expected:
                where, fields, text = f"line {reader.line_num}", len(cells), sep.join(cells)
                break
    return DataError(
        f"{path}: {where} has {fields} fields, expected {expected} (like the first line): {text[:80]!r}; "
        f"fix or remove that line (a value holding {_shown(sep)} must be in double quotes)"
    )


def _unreadable(path: Path, exc: BaseException) -> DataError:
    if suffix_of(path).endswith(".gz"):
        return DataError(
            f"{path}: cannot decompress ({exc}): the file is not gzip or is cut short; check it with "
            f"`gzip -t {shlex.quote(str(path))}`, or drop .gz from the name if it is plain text"
        )
    return DataError(f"{path}: cannot read ({exc})")


def feature_matrix(
    frame: pa.Table,
    *,
    columns: Sequence[str] | None,
    exclude: Sequence[str] = (),
    label: str | None = None,
    na: Literal["stop", "drop"] = "stop",
    source: str,
) -> Features:
    """x (N, D) float32 from the chosen columns: numbers as they are, booleans as 0/1, missing values (null or
    NaN; infinities are left to data.check_values) refused (na="stop") or their rows left out (na="drop")."""
    if na not in ("stop", "drop"):
        raise DataError(f"--na must be 'stop' or 'drop', not {na!r}")
    names = select_columns(frame.column_names, columns=columns, exclude=exclude, label=label, source=source)
    x = np.empty((frame.num_rows, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        x[:, j] = _as_float(frame.column(name), name, source)
    missing = np.isnan(x).any(axis=1)  # (N, D) -> (N,)
    labels = _labels(frame.column(label)) if label is not None else None
    if not missing.any():
        return Features(x, names, labels, np.arange(len(x)), 0)
    if na == "stop":
        row = int(np.argmax(missing))
        column, count = names[int(np.argmax(np.isnan(x[row])))], int(missing.sum())
        raise DataError(
            f"{source}: {count} {'row has' if count == 1 else 'rows have'} a missing value (empty, NA, NaN, null, "
            f"...); the first is row {row} (0-based, after any header), column {column!r}: "
            f"pass --na drop to leave such rows out"
        )
    kept = np.flatnonzero(~missing)
    if kept.size == 0:
        worst = names[int(np.argmax(np.isnan(x).sum(axis=0)))]
        raise DataError(
            f"{source}: every row has a missing value (column {worst!r} has the most), so --na drop leaves none; "
            f"leave mostly empty columns out with --exclude-columns"
        )
    return Features(x[kept], names, labels[kept] if labels is not None else None, kept, int(missing.sum()))


def select_columns(
    available: Sequence[str],
    *,
    columns: Sequence[str] | None,
    exclude: Sequence[str] = (),
    label: str | None = None,
    source: str,
) -> list[str]:
    """`columns` in their order if given, else every column but the label; less those in `exclude`."""
    asked = [*(columns or ()), *exclude, *([label] if label is not None else [])]
    for name in asked:
        if name not in available:
            shown = list(available) if len(available) <= 50 else [*available[:50], f"... {len(available)} in all"]
            raise DataError(f"{source}: no column named {name!r}; columns are {shown}")
    excluded = set(exclude)
    wanted = [
        c for c in (columns if columns is not None else [c for c in available if c != label]) if c not in excluded
    ]
    counts = Counter(available)
    repeated = sorted({c for c in wanted if counts[c] > 1})
    if repeated:
        raise DataError(f"{source}: several columns are named {repeated}; column names must be unique")
    if not wanted:
        raise DataError(f"{source}: no feature columns are left once --exclude-columns and the label are taken out")
    return wanted


def _as_float(column: pa.ChunkedArray, name: str, source: str) -> np.ndarray:
    # (N,) float64, NaN where a value is missing.
    kind = column.type
    if pa.types.is_dictionary(kind):
        return _as_float(column.cast(kind.value_type), name, source)
    if any(test(kind) for test in (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)) or (
        pa.types.is_decimal(kind) or pa.types.is_null(kind)
    ):
        return np.asarray(pc.cast(column, pa.float64(), safe=False).to_numpy())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _parse_strings(column, name, source)
    valid = np.asarray(pc.is_valid(column).to_numpy(zero_copy_only=False))
    row = int(np.argmax(valid))
    raise _not_numeric(source, name, row, str(column[row].as_py()))


def _parse_strings(column: pa.ChunkedArray, name: str, source: str) -> np.ndarray:
    # Numbers pyarrow took for text (e.g. '1_000') as Python's float() reads them; the first other cell is named.
    out = np.empty(len(column), dtype=np.float64)
    i = 0
    for chunk in column.chunks:
        for cell in chunk.to_pylist():
            text = "" if cell is None else cell.strip()
            try:
                out[i] = np.nan if text in NA_TOKENS else float(text)
            except ValueError:
                raise _not_numeric(source, name, i, cell) from None
            i += 1
    return out


def _not_numeric(source: str, name: str, row: int, value: str) -> DataError:
    hint = "; a decimal comma? write numbers with '.'" if re.fullmatch(r"\s*[+-]?\d*,\d+\s*", value) else ""
    return DataError(
        f"{source}: column {name!r} is not numeric (row {row}, 0-based after any header, holds {value[:40]!r}"
        f"{hint}): leave it out with --exclude-columns {shlex.quote(name)}, or choose columns with --columns"
    )


def _labels(column: pa.ChunkedArray) -> np.ndarray:
    # Strings or numbers as numpy gives them; with a missing label, text throughout ("" for the missing ones).
    if column.null_count:
        column = pc.fill_null(column.cast(pa.string()), "")
    return np.asarray(column.to_numpy(zero_copy_only=False))

"""Files for `vae-score`: a table read in batches by training's reading rules, its feature columns found by the
bundle's feature names, and the results written beside the columns that are not features (ids, labels).

Batches keep memory flat on files larger than memory: pyarrow's streaming CSV reader, Parquet row groups, a
memory-mapped .npy. Feature columns are read as float64 and every other column as text, so a later batch cannot
change a column's type and an id such as 007 keeps its zeros.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from training.errors import DataError
from training.readers import NA_TOKENS, TEXT_SUFFIXES, suffix_of, text_layout

Write = Callable[[pa.Table, dict[str, np.ndarray]], None]


@dataclass(frozen=True)
class Columns:
    x: np.ndarray  # (n, D) float32 features of the rows kept, in the model's order
    kept_columns: pa.Table  # the other columns of those rows
    dropped: int  # rows left out for a missing feature value (na="drop")


def batches(path: Path, *, features: list[str] | None, delimiter: str | None, batch_rows: int) -> Iterator[pa.Table]:
    """The input in tables of at most batch_rows rows."""
    suffix = suffix_of(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if suffix == ".npy":
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        if arr.ndim != 2:
            raise DataError(f"{path}: a .npy input must be 2-D (rows, features), got shape {list(arr.shape)}")
        names = features or [f"column_{j}" for j in range(arr.shape[1])]
        if len(names) != arr.shape[1]:
            raise DataError(f"{path}: {arr.shape[1]} columns; the model takes {len(names)} features")
        for start in range(0, arr.shape[0], batch_rows):
            chunk = np.asarray(arr[start : start + batch_rows], dtype=np.float64)
            yield pa.table({name: chunk[:, j] for j, name in enumerate(names)})
    elif suffix == ".parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            yield pa.Table.from_batches([batch])
    elif suffix in TEXT_SUFFIXES:
        yield from _text_batches(path, features, delimiter, batch_rows)
    else:
        raise DataError(
            f"{path}: cannot read {suffix or 'a file without a suffix'}; use .parquet, .npy or {TEXT_SUFFIXES}"
        )


def _text_batches(path: Path, features: list[str] | None, delimiter: str | None, batch_rows: int) -> Iterator[pa.Table]:
    sep, names, skip = text_layout(path, delimiter)
    types = {name: pa.float64() if features is None or name in features else pa.string() for name in names}
    block = max(1 << 16, min(1 << 26, batch_rows * 64 * max(1, len(names))))  # bytes per read: ~batch_rows rows
    try:
        reader = pa_csv.open_csv(
            path,
            read_options=pa_csv.ReadOptions(column_names=names, skip_rows=skip, block_size=block),
            parse_options=pa_csv.ParseOptions(delimiter=sep),
            convert_options=pa_csv.ConvertOptions(
                null_values=list(NA_TOKENS), strings_can_be_null=True, column_types=types
            ),
        )
        for batch in reader:
            table = pa.Table.from_batches([batch])
            for start in range(0, table.num_rows, batch_rows):
                yield table.slice(start, batch_rows)
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path}: cannot read ({exc}); a feature column must hold numbers only") from None


def feature_columns(
    table: pa.Table, features: list[str] | None, width: int, *, na: Literal["stop", "drop"], source: str, first_row: int
) -> Columns:
    """The model's features of a batch (by name; by position when the model has no names) and its other columns."""
    names = features if features is not None else list(table.column_names)
    missing = [n for n in names if n not in table.column_names]
    if missing or len(names) != width:
        shown = missing[:5] if missing else table.column_names
        raise DataError(f"{source}: the model's features {shown} are not columns of the input ({width} needed)")
    x = (
        np.column_stack([_numbers(table.column(n), n, source) for n in names])
        if names
        else np.empty((table.num_rows, 0))
    )
    bad = ~np.isfinite(x)
    others = table.drop_columns(names)
    if not bad.any():
        return Columns(x.astype(np.float32), others, 0)
    if na == "stop":
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(
            f"{source}: row {first_row + row} has no value for feature {names[col]!r} "
            f"({int(bad.any(axis=1).sum())} such rows in this batch); pass --na drop to leave such rows out"
        )
    keep = ~bad.any(axis=1)
    return Columns(x[keep].astype(np.float32), others.filter(pa.array(keep)), int((~keep).sum()))


def _numbers(column: pa.ChunkedArray, name: str, source: str) -> np.ndarray:
    if pa.types.is_boolean(column.type):
        column = pc.cast(column, pa.float64())
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise DataError(f"{source}: feature column {name!r} is not numeric ({column.type})")
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)  # nulls -> NaN


@contextmanager
def writer_for(path: Path, suffix: str) -> Iterator[Write]:
    """write(kept columns, results) appends rows to a file in the format of `suffix` (.csv/.tsv, optionally .gz, or
    .parquet)."""
    sink = pa.CompressedOutputStream(str(path), "gzip") if suffix.endswith(".gz") else pa.OSFile(str(path), "wb")
    writer = None

    def write(kept: pa.Table, results: dict[str, np.ndarray]) -> None:
        nonlocal writer
        table = kept
        for name, values in results.items():
            table = table.append_column(name, pa.array(values))
        if writer is None:
            if suffix == ".parquet":
                writer = pq.ParquetWriter(sink, table.schema)
            else:
                options = pa_csv.WriteOptions(delimiter="\t" if suffix.startswith(".tsv") else ",")
                writer = pa_csv.CSVWriter(sink, table.schema, write_options=options)
        writer.write_table(table)

    try:
        yield write
    finally:
        if writer is not None:
            writer.close()
        sink.close()

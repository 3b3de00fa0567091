"""Read a table file as pyarrow tables, whole or in batches, the reader chosen by vae_tables/sources.py.

Whole (training): text parsed by pyarrow with its types inferred, or a .parquet file. In batches (vae-score, files
larger than memory): pyarrow's streaming text reader, Parquet record batches, slices of a memory-mapped .npy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vae_tables.arrays import load_npy
from vae_tables.errors import DataError
from vae_tables.sources import TEXT_SUFFIXES, existing_file, format_of, suffix_of, unnamed_columns
from vae_tables.text import iter_text, read_text


def read_frame(path: Path, *, delimiter: str | None = None) -> pa.Table:
    """The whole table, typed by pyarrow: numbers, bool (true/false), strings; missing cells as null."""
    kind = format_of(path)
    if kind == "parquet":
        if delimiter is not None:
            raise DataError(f"{path}: --delimiter applies to text tables ({', '.join(TEXT_SUFFIXES)}), not .parquet")
        with _parquet_errors(path):
            return pq.read_table(path)
    if kind != "text":
        raise DataError(f"{path}: cannot read {_named(path)}; use .parquet or {', '.join(TEXT_SUFFIXES)}")
    return read_text(path, delimiter)


def open_parquet(path: Path) -> Any:
    """A pyarrow.parquet.ParquetFile: its schema and row groups, nothing read yet."""
    with _parquet_errors(path):
        return pq.ParquetFile(path)


@contextmanager
def _parquet_errors(path: Path) -> Iterator[None]:
    # pyarrow's failures on a file that is not parquet, or is cut short, as a DataError naming the file.
    try:
        yield
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot read as .parquet ({exc})") from exc


def iter_frames(
    path: Path, *, delimiter: str | None, batch_rows: int, array_names: list[str] | None = None
) -> Iterator[pa.Table]:
    """The table in batches of at most batch_rows rows; a text table's columns as text (vae_tables/text.py; a first
    line holding every one of array_names is its header, numbers or not), an array's as float64 named array_names
    (default column_0, column_1, ...). A table without rows is one batch of none, so its reader still sees its
    columns (an empty partition's answer is an empty table, not a missing one)."""
    kind = format_of(existing_file(path))
    if kind == "npy":
        yield from _array_frames(path, load_npy(path), batch_rows, array_names)
    elif kind == "parquet":
        with _parquet_errors(path):
            parquet = pq.ParquetFile(path)
            if parquet.metadata.num_rows == 0:
                yield parquet.schema_arrow.empty_table()
            for batch in parquet.iter_batches(batch_size=batch_rows):
                yield pa.Table.from_batches([batch])
    elif kind == "text":
        yield from iter_text(path, delimiter, batch_rows, header_names=array_names)
    else:
        raise DataError(f"{path}: cannot read {_named(path)}; use .parquet, .npy or {', '.join(TEXT_SUFFIXES)}")


def _array_frames(path: Path, arr: np.ndarray, batch_rows: int, names: list[str] | None) -> Iterator[pa.Table]:
    names = names or unnamed_columns(arr.shape[1])
    if len(names) != arr.shape[1]:
        raise DataError(f"{path}: {arr.shape[1]} columns; {len(names)} are needed, one a feature")
    for start in range(0, max(arr.shape[0], 1), batch_rows):  # an array of no rows: one batch of none
        chunk = np.asarray(arr[start : start + batch_rows], dtype=np.float64)
        yield pa.table({name: chunk[:, j] for j, name in enumerate(names)})


def _named(path: Path) -> str:
    return suffix_of(path) or "a file without a suffix"

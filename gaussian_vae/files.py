"""Files for `vae-score`: a table read in batches by the same rules as training (vae_tables/), its feature columns found
by the bundle's feature names, and the results written beside the columns that are not features (ids, labels).

Batches keep memory flat on files larger than memory (vae_tables/frames.py). A text input's columns are read as text,
so a later batch cannot change a column's type and an id such as 007 keeps its zeros; features become numbers by
vae_tables/numeric.py's rule and a missing value stops or drops its row by vae_tables/missing.py's policy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from contract.manifest import Manifest
from vae_tables.columns import feature_matrix
from vae_tables.errors import DataError
from vae_tables.frames import iter_frames
from vae_tables.missing import Na, check_finite
from vae_tables.sources import unnamed_columns

Write = Callable[[pa.Table, dict[str, np.ndarray]], None]


@dataclass(frozen=True)
class Columns:
    x: np.ndarray  # (n, D) float32 features of the rows kept, in the model's order
    kept_columns: pa.Table  # the other columns of those rows
    dropped: int  # rows left out for a missing feature value (na="drop")
    rows: np.ndarray | None = None  # the positions of the rows kept when some were dropped


def batches(path: Path, *, features: list[str] | None, delimiter: str | None, batch_rows: int) -> Iterator[pa.Table]:
    """The input in tables of at most batch_rows rows (a .npy's columns named by the model's features)."""
    return iter_frames(path, delimiter=delimiter, batch_rows=batch_rows, array_names=features)


# a feature the model reads cannot be left out as vae-train's --exclude-columns leaves a column out of training
FEATURE_ADVICE = "the model reads this feature as a number: correct that cell, or leave its row out of the input"


def by_position(manifest: Manifest) -> bool:
    """Whether a model takes its features by position: trained on every column of a table without names (an array,
    a file without a header), so its feature names are the stand-ins column_0, ... A model whose training picked
    columns by those names (--columns, --exclude-columns, --label-column) takes them by name."""
    picked = manifest.training.arguments
    named = picked.get("columns") or picked.get("exclude_columns") or picked.get("label_column")
    return manifest.feature_names == unnamed_columns(manifest.input_dim) and not named


def feature_columns(
    table: pa.Table,
    features: list[str] | None,
    width: int,
    *,
    na: Na,
    source: str,
    first_row: int,
    positional: bool = False,
) -> Columns:
    """The model's features of a batch (by name; by position when the model has no names, or `positional`: see
    by_position) and its other columns."""
    columns = list(table.column_names)  # built once: the property makes a new list at each use
    names = features if features is not None else columns
    if positional and columns == unnamed_columns(len(columns)) and len(columns) != width:
        # both unnamed: matching by name would take the input's first `width` columns, whatever they hold
        raise DataError(
            f"{source}: the model's {width} features have no names (it was trained on an array or a file without a "
            f"header), so it takes them by position, and this input has no header and {len(columns)} columns: give "
            f"exactly {width} columns in the model's order, or a header naming them column_0 to column_{width - 1} "
            "(other columns, ids say, may then stand beside them)"
        )
    if features is None and len(columns) != width:  # a bundle without feature names takes every column, in order
        raise DataError(
            f"{source}: the model's {width} features have no names, so every column of the input is one of them, "
            f"in the model's order, and this input has {len(columns)} ({', '.join(columns[:5])}"
            f"{', ...' if len(columns) > 5 else ''}): give exactly {width} columns"
        )
    present = set(columns)
    missing = [n for n in names if n not in present]
    if missing or len(names) != width:
        shown = missing[:5] if missing else columns
        raise DataError(f"{source}: the model's features {shown} are not columns of the input ({width} needed)")
    if not names:
        return Columns(np.empty((table.num_rows, 0), dtype=np.float32), table, 0)
    found = feature_matrix(
        table, columns=names, na=na, source=source, first_row=first_row, whole=False, advice=FEATURE_ADVICE
    )
    check_finite(found.x, names, source=source, rows=first_row + found.kept)
    # the kept rows taken before the features are dropped: a table of no columns has no rows to take from
    kept = table if not found.dropped else table.take(pa.array(found.kept))
    features_used = set(names)  # select, not drop_columns: that looks each name up in a list made anew per name
    others = kept.select([j for j, c in enumerate(columns) if c not in features_used])
    return Columns(found.x, others, found.dropped, found.kept if found.dropped else None)


def check_no_clash(columns: list[str], answers: list[str], source: str) -> None:
    """DataError when an input column has the name of an answer's column: the output would hold both under one name
    (an earlier run's output scored again, say)."""
    clash = [name for name in answers if name in columns]
    if clash:
        raise DataError(
            f"{source}: the input has column(s) {clash[:5]}, which the answer adds; rename or leave them out"
        )


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

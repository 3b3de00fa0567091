"""Training rows from many files: a folder or glob of partitions, or an object-store prefix (vae_tables/locations.py).

Parquet partitions are streamed, row group by row group, into the memory-mapped scratch copy a single .parquet file
gets (training/scratch.py): the partitions' row groups are numbered one after the other, and under torchrun each
local rank copies its share of them, reading from the store only those (an object store is read by ranges, never
downloaded whole). Text partitions are read whole, one after the other (remote ones downloaded first), as a single
text table is. Every partition must hold the columns the first one gives the features; one that does not is named.
Hive-style partition folders are not features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from training.data import Request, Table, log
from training.errors import DataError
from vae_tables.locations import Dataset, filesystem, is_uri, local_copy, open_dataset
from vae_tables.sources import format_of


def load_partitions(source: str, request: Request) -> Table:
    dataset = open_dataset(source)
    kinds = {format_of(Path(PurePosixPath(p.relative).name)) for p in dataset.partitions}
    if request.key is not None:
        raise DataError(f"--key applies to .npz files only, not the partitions of {source}")
    if kinds == {"parquet"}:
        return _parquet(dataset, request)
    if kinds == {"text"}:
        return _text(dataset, request)
    if "npy" in kinds:
        raise DataError(
            f"{source}: vae-train reads partitions of .parquet or text tables, not .npy (vae-score scores those); "
            "join the arrays into one .npy file (numpy.concatenate), or write the partitions as .parquet"
        )
    raise DataError(
        f"{source}: partitions of one format are needed (all .parquet, or all text tables); found {sorted(kinds)}"
    )


@dataclass(frozen=True)
class _Metadata:
    num_rows: int
    groups: list[tuple[int, int, int]]  # (file, row group in it, rows)

    @property
    def num_row_groups(self) -> int:
        return len(self.groups)

    def row_group(self, g: int) -> Any:
        return _RowGroup(self.groups[g][2])


@dataclass(frozen=True)
class _RowGroup:
    num_rows: int


class PartitionedParquet:
    """The row groups of many Parquet files numbered one after the other: what training/scratch.py reads of a
    pyarrow.parquet.ParquetFile (metadata, iter_batches, read), over every partition."""

    def __init__(self, files: list[Any], uris: list[str]) -> None:
        self.files, self.uris = files, uris
        groups = [
            (i, g, f.metadata.row_group(g).num_rows) for i, f in enumerate(files) for g in range(f.num_row_groups)
        ]
        self.metadata = _Metadata(sum(rows for *_, rows in groups), groups)
        self.schema_arrow = files[0].schema_arrow

    def iter_batches(self, *, batch_size: int, row_groups: list[int], columns: list[str]) -> Any:
        for g in row_groups:
            file, local, _ = self.metadata.groups[g]
            yield from self.files[file].iter_batches(batch_size=batch_size, row_groups=[local], columns=columns)

    def read(self, *, columns: list[str]) -> pa.Table:
        return pa.concat_tables([f.read(columns=columns) for f in self.files])


def _parquet(dataset: Dataset, request: Request) -> Table:
    from training.scratch import parquet_scratch_copy
    from vae_tables.columns import select_columns
    from vae_tables.numeric import can_be_numeric, not_numeric

    if request.delimiter is not None:
        raise DataError(f"--delimiter applies to text tables, not the .parquet partitions of {dataset.uri}")
    if request.na == "drop":
        raise DataError(
            f"{dataset.uri}: --na drop is not available for .parquet partitions (they are streamed into a copy of "
            "fixed size); leave the rows with missing values out when writing them"
        )
    files = [_open(p.uri) for p in dataset.partitions]
    uris = [p.uri for p in dataset.partitions]
    schema, label = files[0].schema_arrow, request.label
    wanted = select_columns(schema.names, columns=request.columns, exclude=request.exclude, label=label, source=uris[0])
    for uri, f in zip(uris, files, strict=True):
        missing = [c for c in [*wanted, *([label] if label else [])] if c not in f.schema_arrow.names]
        if missing:
            raise DataError(f"{uri}: has no column(s) {missing}, which {uris[0]} has (partitions must agree)")
        for c in wanted:
            if not can_be_numeric(f.schema_arrow.field(c).type):
                raise not_numeric(uri, c, f"it holds {f.schema_arrow.field(c).type}")
    parts = PartitionedParquet(files, uris)
    labels = None
    if label is not None and request.ranks.is_main:
        labels = parts.read(columns=[label]).column(label).to_numpy(zero_copy_only=False)
    log.info("%s: %d rows in %d partitions", dataset.uri, parts.metadata.num_rows, len(files))
    return Table(parquet_scratch_copy(parts, dataset.uri, wanted, request.ranks), labels, wanted)


def _open(uri: str) -> Any:
    try:
        if is_uri(uri):
            fs, path = filesystem(uri)
            return pq.ParquetFile(fs.open_input_file(path))
        return pq.ParquetFile(uri)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{uri}: cannot read as .parquet ({exc})") from exc


def _check_finite_by_partition(dataset: Dataset, counts: list[int], features: Any) -> None:
    # missing values are refused or dropped by now: an infinite one is named by its partition and its row there
    from vae_tables.missing import check_finite

    bad = ~np.isfinite(features.x)
    if not bad.any():
        return
    starts = np.cumsum([0, *counts])
    part = np.searchsorted(starts, features.kept, side="right") - 1  # each kept row's partition
    first = int(part[int(np.argwhere(bad)[0][0])])
    local = features.kept - starts[part]
    check_finite(features.x, features.feature_names, source=dataset.partitions[first].uri, rows=local)


def _text(dataset: Dataset, request: Request) -> Table:
    from vae_tables.columns import feature_matrix
    from vae_tables.text import read_text

    frames = []
    for p in dataset.partitions:
        with local_copy(p.uri) as path:
            frames.append(read_text(path, request.delimiter))
    first = frames[0].column_names
    for p, frame in zip(dataset.partitions, frames, strict=True):
        if frame.column_names != first:
            raise DataError(
                f"{p.uri}: columns {frame.column_names[:8]} differ from {dataset.partitions[0].uri}'s {first[:8]} "
                "(partitions must agree)"
            )
    try:
        frame = pa.concat_tables(frames, promote_options="permissive")
    except pa.ArrowException as exc:
        raise DataError(f"{dataset.uri}: the partitions' column types do not agree ({exc})") from exc
    features = feature_matrix(
        frame, columns=request.columns, exclude=request.exclude, label=request.label, na=request.na, source=dataset.uri
    )
    if features.dropped:
        log.warning(
            "%s: left out %d of %d rows with a missing value (--na drop)", dataset.uri, features.dropped, len(frame)
        )
    _check_finite_by_partition(dataset, [f.num_rows for f in frames], features)
    return Table(np.asarray(features.x), features.labels, features.feature_names, rows_dropped=features.dropped)

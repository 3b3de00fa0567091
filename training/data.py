"""Load a user's table (builtin:digits, .npy, .npz, .csv/.tsv/.txt (each also .gz), .parquet), validate it, split it
deterministically.

Every problem is raised as DataError with a sentence naming the file, column and row and saying what to do; nothing
is written before the data has passed these checks. Which reader a file goes to, which columns are numeric and what
a missing value does are decided in vae_tables/ (torch-free, shared with vae-score); text tables are read whole. Tables
larger than memory: a .npy is memory-mapped, a .parquet is streamed row group by row group into a memory-mapped
float32 scratch copy (training/scratch.py), and the passes over the rows (the NaN check, the standardisation
statistics) go in chunks. Under torchrun each rank makes those passes over its own share of the rows only and the
results are combined across ranks, so every rank reaches the same verdict; and the ranks check that they read the
same table (check_same_table: each machine reads its own copy).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.distributed import SINGLE, Dist
from training.errors import DataError, UnsupportedFormat
from vae_tables.arrays import as_matrix, load_npy
from vae_tables.missing import Na, check_na
from vae_tables.sources import Format, existing_file, format_of, suffix_of

if TYPE_CHECKING:  # pyarrow is imported only where a table file is read
    from vae_tables.columns import Features

BUILTIN_PREFIX = "builtin:"
MIN_ROWS = 10  # at least 8 training rows plus one validation and one test row
CHUNK_ROWS = 65536  # rows per step of the streaming passes over a (possibly memory-mapped) table...
CHUNK_BYTES = 64 << 20  # ...fewer when the rows are wide: a float64 chunk stays under 64 MiB
SAME_TABLE_ROWS = 4096  # evenly spaced rows whose values torchrun's ranks compare (check_same_table)
TABLE_SUFFIXES = ".csv, .tsv, .txt (each also .gz) and .parquet"

log = logging.getLogger(__name__)


def chunk_rows(features: int) -> int:
    return max(1, min(CHUNK_ROWS, CHUNK_BYTES // (8 * max(1, features))))


@dataclass(frozen=True)
class Table:
    x: np.ndarray  # (N, D) float32
    labels: np.ndarray | None  # (N,) kept only for plots
    feature_names: list[str] | None
    image_shape: tuple[int, int] | None = None
    rows_dropped: int = 0  # rows with a missing value left out (na="drop")


def is_dataset(source: str) -> bool:
    """A folder, glob or object-store URI of partitions (training/partitioned.py), not one local file."""
    from vae_tables.locations import GLOB_CHARACTERS, is_uri

    if is_uri(source) or Path(source).is_dir():
        return True
    # a file whose name holds [, * or ? (data[1].csv) is that file, not a pattern
    return any(c in source for c in GLOB_CHARACTERS) and not Path(source).is_file()


@dataclass(frozen=True)
class Request:
    """What load_table was asked for, as each reader sees it."""

    key: str | None
    columns: Sequence[str] | None
    label: str | None
    ranks: Dist
    delimiter: str | None
    na: Na
    exclude: Sequence[str]


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # row indices into Table.x
    val: np.ndarray
    test: np.ndarray


def load_table(
    source: str,
    *,
    key: str | None = None,
    columns: Sequence[str] | None = None,
    label_column: str | None = None,
    ranks: Dist = SINGLE,
    delimiter: str | None = None,
    na: Na = "stop",
    exclude_columns: Sequence[str] | None = None,
) -> Table:
    """Read and check a table. Under torchrun every rank calls this; each reads and checks only its share.

    delimiter: of a text table (default: tab for .tsv, comma otherwise). na: what a missing value (empty, NA, NaN,
    null, ...) in a feature column does: "stop" with its row and column, or "drop" its row. exclude_columns: left
    out of the features (id columns), from `columns` or from every column but the label."""
    request = Request(key, columns, label_column, ranks, delimiter, check_na(na), tuple(exclude_columns or ()))
    if source.startswith(BUILTIN_PREFIX):
        table = _load_builtin(source[len(BUILTIN_PREFIX) :])
    elif is_dataset(source):
        from training.partitioned import load_partitions

        table = load_partitions(source, request)
    else:
        path = existing_file(Path(source))
        kind = format_of(path)
        if kind is None:
            raise UnsupportedFormat(str(path))
        if key is not None and kind != "npz":
            raise DataError(f"--key applies to .npz files only, not {path.name}")
        table = _READERS[kind](path, request)
    check_values(table.x, table.feature_names, source, ranks)
    return table


def _load_builtin(name: str) -> Table:
    if name != "digits":
        raise DataError(f"unknown built-in data set {name!r}; available: digits")
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # 8x8 grey levels 0..16 -> [0, 1]
    return Table(x, digits.target.astype(np.int64), list(digits.feature_names), (8, 8))


def _load_npy(path: Path, request: Request) -> Table:
    _no_columns(path, request)
    return Table(load_npy(path), None, None)  # memory-mapped: rows are read when used


def _load_npz(path: Path, request: Request) -> Table:
    _no_columns(path, request)
    key = request.key
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            if key is None:
                if len(names) != 1:
                    raise DataError(f"{path}: holds arrays {names}; choose one with --key")
                key = names[0]
            if key not in names:
                raise DataError(f"{path}: no array named {key!r}; it holds {names}")
            arr = archive[key]
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot read as .npz ({exc})") from exc
    return Table(as_matrix(arr, f"{path.name}[{key}]"), None, None)


def _load_text(path: Path, request: Request) -> Table:
    _need_pyarrow(path)
    from vae_tables.columns import feature_matrix
    from vae_tables.missing import check_finite
    from vae_tables.text import read_text

    frame = read_text(path, request.delimiter)
    features = feature_matrix(
        frame, columns=request.columns, exclude=request.exclude, label=request.label, na=request.na, source=str(path)
    )
    if features.dropped:
        log.warning("%s: left out %d of %d rows with a missing value (--na drop)", path, features.dropped, len(frame))
    # missing values are refused or dropped by now: what is left is infinite, named by its row in the file
    check_finite(features.x, features.feature_names, source=str(path), rows=features.kept)
    _warn_of_a_row_index(path, frame.column_names, features)
    return Table(features.x, features.labels, features.feature_names, rows_dropped=features.dropped)


def _warn_of_a_row_index(path: Path, columns: list[str], features: Features) -> None:
    # pandas' to_csv() writes its index as a first column with an empty name (read as column_0): as a feature it
    # makes every new row past the training rows' numbers look anomalous. Read from the features as modelled (a
    # warning must not fail a run that trains).
    if not columns or columns[0] != "column_0" or all(n.startswith("column_") for n in columns):
        return
    if "column_0" not in features.feature_names or len(features.kept) < 2:
        return
    values = features.x[:, features.feature_names.index("column_0")]
    if np.array_equal(values, features.kept):  # its own row numbers (exact in float32 below 2^24 rows)
        log.warning(
            "%s: its first column has no name and holds 0, 1, 2, ... (pandas' row index): it is trained on as feature "
            "'column_0', so new rows score by their number; leave it out with --exclude-columns column_0 (or write "
            "the file with to_csv(index=False))",
            path,
        )


def _load_parquet(path: Path, request: Request) -> Table:
    _need_pyarrow(path)
    from training.scratch import parquet_scratch_copy
    from vae_tables.columns import select_columns
    from vae_tables.frames import open_parquet
    from vae_tables.numeric import can_be_numeric, not_numeric

    if request.delimiter is not None:
        raise DataError(f"--delimiter applies to text tables, not {path.name}")
    if request.na == "drop":  # the rows are streamed into a scratch copy whose row count is fixed up front
        raise DataError(
            f"{path}: --na drop is not available for .parquet files (they are streamed into a copy of fixed size); "
            f"leave the rows with missing values out when writing the file, e.g. with pyarrow's Table.drop_null()"
        )
    pf = open_parquet(path)
    schema, label = pf.schema_arrow, request.label
    wanted = select_columns(
        schema.names, columns=request.columns, exclude=request.exclude, label=label, source=str(path)
    )
    for c in wanted:  # refused before the copy when the type says so; text whose cells are no numbers, during it
        if not can_be_numeric(schema.field(c).type):
            raise not_numeric(str(path), c, f"it holds {schema.field(c).type}")
    # The label column only colours rank 0's latent plot; rank 0 reads it whole (one column).
    labels = None
    if label is not None and request.ranks.is_main:
        labels = pf.read(columns=[label]).column(label).to_numpy(zero_copy_only=False)
    return Table(parquet_scratch_copy(pf, path, wanted, request.ranks), labels, wanted)


def _need_pyarrow(path: Path) -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise DataError(
            f"{path}: reading {suffix_of(path)} files needs pyarrow (pip install 'gaussian-vae[parquet]')"
        ) from None


_READERS: dict[Format, Callable[[Path, Request], Table]] = {
    "npy": _load_npy,
    "npz": _load_npz,
    "parquet": _load_parquet,
    "text": _load_text,
}


def _no_columns(path: Path, request: Request) -> None:
    given = [
        option
        for option, value in (
            ("--columns", request.columns),
            ("--label-column", request.label),
            ("--exclude-columns", request.exclude or None),
            ("--delimiter", request.delimiter),
            ("--na drop", "drop" if request.na == "drop" else None),
        )
        if value is not None
    ]
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        raise DataError(f"{' and '.join(given)} {verb} to table files ({TABLE_SUFFIXES}), not {path.name}")


def check_values(x: np.ndarray, feature_names: list[str] | None, source: str, ranks: Dist = SINGLE) -> None:
    """Reject tables the model cannot learn from: no features, too few rows, NaN or infinite values.

    Each rank scans its own block of rows; counts and the first bad position are combined across ranks."""
    if x.ndim != 2 or x.shape[1] == 0:
        raise DataError(f"{source}: no feature columns (shape {x.shape})")
    if x.shape[0] < MIN_ROWS:
        raise DataError(f"{source}: {x.shape[0]} rows; at least {MIN_ROWS} are needed")
    block, step = ranks.share(x.shape[0]), chunk_rows(x.shape[1])
    count, first = 0, -1  # first: row * D + column of the first bad value, -1 for none
    for start in range(block.start, block.stop, step):  # in chunks: a memory-mapped file is never read whole
        with np.errstate(over="ignore"):  # a float64 array's 1e300 is no float32: as inf, it is refused here too
            bad = ~np.isfinite(np.asarray(x[start : min(start + step, block.stop)], dtype=np.float32))
        if bad.any():
            count += int(bad.sum())
            if first < 0:
                row, col = (int(v) for v in np.argwhere(bad)[0])
                first = (start + row) * x.shape[1] + col
    every = ranks.gather(np.array([count, first], dtype=np.int64))  # (ranks, 2)
    count = int(every[:, 0].sum())
    if count:
        row, col = divmod(int(every[every[:, 1] >= 0, 1].min()), x.shape[1])
        name = feature_names[col] if feature_names else f"column {col}"
        raise DataError(
            f"{source}: {count} NaN or infinite values (or beyond float32; empty cells count as NaN); "
            f"the first is in row {row} (0-based, after any header), {name!r}"
        )


def check_same_table(table: Table, source: str, ranks: Dist) -> None:
    """Under torchrun every machine reads the table at the same path from its own disk; a machine holding another
    or a stale copy would train its ranks' shares on other rows, with every figure still looking right. So every
    rank compares the table's shape, its column names and a digest of SAME_TABLE_ROWS evenly spaced rows with rank
    0's, and all stop with the same message if any differ (a value changed elsewhere on one machine is not seen; nor
    are the labels, which rank 0 alone reads, for its evaluation). The first check after loading: every rank must
    reach its gather, so none stops earlier on a check that depends on the table (its width) while the others wait."""
    if not ranks.enabled:
        return
    n, d = table.x.shape
    rows = np.unique(np.linspace(0, n - 1, num=min(n, SAME_TABLE_ROWS)).round().astype(np.int64))
    digest = hashlib.sha256(repr(table.feature_names).encode())
    step = chunk_rows(d)
    for start in range(0, rows.size, step):  # in chunks, as every pass here: a wide table's rows are large
        digest.update(np.ascontiguousarray(table.x[rows[start : start + step]], dtype=np.float32).data)
    mine = np.array([n, d, int(digest.hexdigest()[:15], 16)], dtype=np.int64)  # 60 bits of the digest
    every = ranks.gather(mine)  # (ranks, 3)
    differ = [r for r in range(ranks.world) if not np.array_equal(every[r], every[0])]
    if differ:
        shapes = ", ".join(f"rank {r}: {every[r, 0]} x {every[r, 1]}" for r in (0, *differ))
        raise DataError(
            f"{source}: rank(s) {differ} read another table than rank 0 ({shapes}; the same shape means other "
            f"values or column names); every machine must hold the same table at this path"
        )


def split_rows(n: int, val_fraction: float, test_fraction: float, seed: int) -> Split:
    """A seeded permutation cut into train/validation/test; validation gets at least one row, and so does test
    unless test_fraction is 0."""
    n_val = max(1, round(n * val_fraction))
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    if n - n_val - n_test < MIN_ROWS - 2:
        raise DataError(
            f"{n} rows leave {n - n_val - n_test} for training after the validation and test splits; "
            f"at least {MIN_ROWS - 2} are needed"
        )
    perm = np.random.default_rng(seed).permutation(n)
    return Split(train=perm[n_val + n_test :], val=perm[:n_val], test=perm[n_val : n_val + n_test])

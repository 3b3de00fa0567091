"""Load a user's table (builtin:digits, .npy, .npz, .csv/.tsv/.txt (each also .gz), .parquet), validate it, split it
deterministically.

Every problem is raised as DataError with a sentence naming the file, column and row and saying what to do; nothing
is written before the data has passed these checks. Text tables are read whole by training/readers.py (pyarrow).
Tables larger than memory: a .npy is memory-mapped, a .parquet is streamed row group by row group into a
memory-mapped float32 scratch copy, and the passes over the rows (the NaN check, the standardisation statistics) go
in chunks. Under torchrun each rank makes those passes over its own share of the rows only and the results are
combined across ranks, so every rank reaches the same verdict.
"""

from __future__ import annotations

import errno
import logging
import os
import shlex
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from training.distributed import SINGLE, Dist
from training.errors import DataError, UnsupportedFormat

BUILTIN_PREFIX = "builtin:"
MIN_ROWS = 10  # at least 8 training rows plus one validation and one test row
CHUNK_ROWS = 65536  # rows per step of the streaming passes over a (possibly memory-mapped) table...
CHUNK_BYTES = 64 << 20  # ...fewer when the rows are wide: a float64 chunk stays under 64 MiB
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


@dataclass(frozen=True)
class _Request:
    """What load_table was asked for, as each reader sees it."""

    key: str | None
    columns: Sequence[str] | None
    label: str | None
    ranks: Dist
    delimiter: str | None
    na: Literal["stop", "drop"]
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
    na: Literal["stop", "drop"] = "stop",
    exclude_columns: Sequence[str] | None = None,
) -> Table:
    """Read and check a table. Under torchrun every rank calls this; each reads and checks only its share.

    delimiter: of a text table (default: tab for .tsv, comma otherwise). na: what a missing value (empty, NA, NaN,
    null, ...) in a feature column does: "stop" with its row and column, or "drop" its row. exclude_columns: left
    out of the features (id columns), from `columns` or from every column but the label."""
    if na not in ("stop", "drop"):
        raise DataError(f"--na must be 'stop' or 'drop', not {na!r}")
    request = _Request(key, columns, label_column, ranks, delimiter, na, tuple(exclude_columns or ()))
    if source.startswith(BUILTIN_PREFIX):
        table = _load_builtin(source[len(BUILTIN_PREFIX) :])
    else:
        path = Path(source)
        if not path.exists():
            raise DataError(f"{path}: no such file")
        if not path.is_file():
            raise DataError(f"{path}: not a file")
        suffix = _suffix(path)
        if suffix not in _READERS:
            raise UnsupportedFormat(str(path))
        if key is not None and suffix != ".npz":
            raise DataError(f"--key applies to .npz files only, not {path.name}")
        table = _READERS[suffix](path, request)
    check_values(table.x, table.feature_names, source, ranks)
    return table


def _load_builtin(name: str) -> Table:
    if name != "digits":
        raise DataError(f"unknown built-in data set {name!r}; available: digits")
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # 8x8 grey levels 0..16 -> [0, 1]
    return Table(x, digits.target.astype(np.int64), list(digits.feature_names), (8, 8))


def _load_npy(path: Path, request: _Request) -> Table:
    _no_columns(path, request)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)  # memory-mapped: rows are read when used
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot read as .npy ({exc})") from exc
    return Table(_as_matrix(arr, path.name), None, None)


def _load_npz(path: Path, request: _Request) -> Table:
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
    return Table(_as_matrix(arr, f"{path.name}[{key}]"), None, None)


def _load_text(path: Path, request: _Request) -> Table:
    _need_pyarrow(path)
    from training.readers import feature_matrix, read_frame

    frame = read_frame(path, delimiter=request.delimiter)
    features = feature_matrix(
        frame, columns=request.columns, exclude=request.exclude, label=request.label, na=request.na, source=str(path)
    )
    if features.dropped:
        log.warning("%s: left out %d of %d rows with a missing value (--na drop)", path, features.dropped, len(frame))
    return Table(features.x, features.labels, features.feature_names, rows_dropped=features.dropped)


def _load_parquet(path: Path, request: _Request) -> Table:
    _need_pyarrow(path)
    import pyarrow as pa
    import pyarrow.parquet as pq

    from training.readers import select_columns

    if request.delimiter is not None:
        raise DataError(f"--delimiter applies to text tables, not {path.name}")
    if request.na == "drop":  # the rows are streamed into a scratch copy whose row count is fixed up front
        raise DataError(
            f"{path}: --na drop is not available for .parquet files (they are streamed into a copy of fixed size); "
            f"leave the rows with missing values out when writing the file, e.g. with pyarrow's Table.drop_null()"
        )
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot read as .parquet ({exc})") from exc
    schema = pf.schema_arrow
    label = request.label
    wanted = select_columns(
        schema.names, columns=request.columns, exclude=request.exclude, label=label, source=str(path)
    )
    for c in wanted:
        kind = schema.field(c).type
        if not any(test(kind) for test in (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)) and not (
            pa.types.is_decimal(kind)
        ):
            raise DataError(
                f"{path}: column {c!r} is not numeric (it holds {kind}): leave it out with --exclude-columns "
                f"{shlex.quote(c)}, or choose columns with --columns"
            )
    # The label column only colours rank 0's latent plot; rank 0 reads it whole (one column).
    labels = None
    if label is not None and request.ranks.is_main:
        labels = pf.read(columns=[label]).column(label).to_numpy(zero_copy_only=False)
    return Table(_parquet_scratch_copy(pf, path, wanted, request.ranks), labels, wanted)


def _need_pyarrow(path: Path) -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise DataError(
            f"{path}: reading {_suffix(path)} files needs pyarrow (pip install 'gaussian-vae[parquet]')"
        ) from None


def _parquet_scratch_copy(pf: Any, path: Path, columns: list[str], ranks: Dist) -> np.ndarray:
    """Stream the row groups into a memory-mapped (N, D) float32 .npy in $TMPDIR and map it read-only.

    Minibatches are drawn from a fresh permutation of all rows every epoch, which needs random access to rows;
    a columnar, compressed file gives that only a row group at a time, so the rows are copied once into a
    row-major scratch file (N x D x 4 bytes of disk). Under torchrun the ranks of a machine share one copy, each
    writing the row groups g with g % local ranks == local rank. Every rank maps the file before anything is
    copied and local rank 0 then unlinks it, so it disappears with the processes however they end. A failure on
    any rank stops every rank with a DataError (none is left waiting in a collective). Nulls become NaN
    (refused by the check)."""
    import pyarrow as pa

    meta = pf.metadata
    n, d = meta.num_rows, len(columns)
    if n == 0 or d == 0:
        return np.zeros((n, d), dtype=np.float32)  # check_values names the problem
    starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
    name, failure = "", None
    if ranks.local_rank == 0:
        try:
            name = _create_scratch(n, d, path)
        except DataError as exc:
            failure = str(exc)
    name = ranks.from_local_leader(name)  # a collective: the leader has created the file when it returns
    if not name and failure is None:
        failure = f"{path}: local rank 0 could not create the scratch copy"
    try:
        if failure is None:
            try:
                out = np.lib.format.open_memmap(name, mode="r+")
                x = np.load(name, mmap_mode="r")
            except (OSError, ValueError) as exc:
                failure = f"{path}: cannot map the scratch copy {name} ({exc})"
        _agree(ranks, failure, path, "set up the scratch copy")  # every rank has mapped it (or all stop)
    finally:
        if ranks.local_rank == 0 and name:
            os.unlink(name)
    step = chunk_rows(d)
    for g in range(ranks.local_rank, meta.num_row_groups, ranks.local_world):
        at = int(starts[g])
        try:
            for batch in pf.iter_batches(batch_size=step, row_groups=[g], columns=columns):
                out[at : at + batch.num_rows] = np.column_stack(
                    [batch.column(c).cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False) for c in columns]
                )
                at += batch.num_rows
        except (pa.ArrowException, OSError) as exc:
            failure = f"{path}: cannot read row group {g} ({exc})"
            break
    out.flush()
    del out
    _agree(ranks, failure, path, "copy its row groups")  # every row group is written (or all stop)
    return x


def _agree(ranks: Dist, failure: str | None, path: Path, what: str) -> None:
    # A collective: raise on every rank when any rank failed, its own message where it has one.
    failed = ranks.gather(np.array([failure is not None], dtype=np.int64))
    if failure is not None:
        raise DataError(failure)
    if failed.any():
        ranks_failed = [r for r in range(ranks.world) if failed[r, 0]]
        raise DataError(f"{path}: rank(s) {ranks_failed} could not {what} (see their message)")


def _create_scratch(n: int, d: int, source: Path) -> str:
    try:
        fd, name = tempfile.mkstemp(prefix="vae-train-", suffix=".npy")
    except OSError as exc:
        raise DataError(f"{source}: cannot create a scratch copy in {tempfile.gettempdir()} ({exc})") from exc
    try:
        np.lib.format.open_memmap(name, mode="w+", dtype=np.float32, shape=(n, d)).flush()
        _reserve(fd, os.path.getsize(name), source)
    except OSError as exc:
        os.unlink(name)
        raise DataError(f"{source}: cannot create a scratch copy in {tempfile.gettempdir()} ({exc})") from exc
    except BaseException:
        os.unlink(name)
        raise
    finally:
        os.close(fd)
    return name


def _reserve(fd: int, size: int, source: Path) -> None:
    # Claim the disk now: a full disk met later, while writing through the map, kills the process with SIGBUS.
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DataError(
                f"{source}: no room for its {size / 2**20:.0f} MiB scratch copy in {tempfile.gettempdir()}; "
                "point TMPDIR at a larger disk"
            ) from None
        # other errors: the file system cannot reserve space ahead (e.g. EOPNOTSUPP); write as we go


_READERS: dict[str, Callable[[Path, _Request], Table]] = {
    ".npy": _load_npy,
    ".npz": _load_npz,
    ".parquet": _load_parquet,
    **{suffix: _load_text for suffix in (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")},
}


def _suffix(path: Path) -> str:
    # '.csv', '.npy', ...; the last two suffixes when the name ends in .gz ('.csv.gz')
    suffixes = [s.lower() for s in path.suffixes]
    return "".join(suffixes[-2:]) if suffixes[-1:] == [".gz"] else path.suffix.lower()


def _no_columns(path: Path, request: _Request) -> None:
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


def _as_matrix(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.ndim != 2:
        raise DataError(f"{what}: expected a 2-D array (rows x features), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise DataError(f"{what}: expected real numbers, got dtype {arr.dtype}")
    if isinstance(arr, np.memmap):
        return arr  # stays on disk; training reads minibatches from it (training/rows.py)
    return arr.astype(np.float32)


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
        bad = ~np.isfinite(np.asarray(x[start : min(start + step, block.stop)]))
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
            f"{source}: {count} NaN or infinite values (empty cells count as NaN); "
            f"the first is in row {row} (0-based, after any header), {name!r}"
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

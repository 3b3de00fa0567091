"""Load a user's table (builtin:digits, .npy, .npz, .csv, .parquet), validate it, split it deterministically.

Every problem is raised as DataError with a sentence naming the file, column and row; nothing is written
before the data has passed these checks. Tables larger than memory: a .npy is memory-mapped, a .parquet is
streamed row group by row group into a memory-mapped float32 scratch copy, and the passes over the rows (the
NaN check, the standardisation statistics) go in chunks. Under torchrun each rank makes those passes over its
own share of the rows only and the results are combined across ranks, so every rank reaches the same verdict.
"""

from __future__ import annotations

import csv
import errno
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.distributed import SINGLE, Dist
from training.errors import DataError, UnsupportedFormat

BUILTIN_PREFIX = "builtin:"
MIN_ROWS = 10  # at least 8 training rows plus one validation and one test row
CHUNK_ROWS = 65536  # rows per step of the streaming passes over a (possibly memory-mapped) table...
CHUNK_BYTES = 64 << 20  # ...fewer when the rows are wide: a float64 chunk stays under 64 MiB


def chunk_rows(features: int) -> int:
    return max(1, min(CHUNK_ROWS, CHUNK_BYTES // (8 * max(1, features))))


@dataclass(frozen=True)
class Table:
    x: np.ndarray  # (N, D) float32
    labels: np.ndarray | None  # (N,) kept only for plots
    feature_names: list[str] | None
    image_shape: tuple[int, int] | None = None


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # row indices into Table.x
    val: np.ndarray
    test: np.ndarray


def load_table(
    source: str,
    *,
    key: str | None = None,
    columns: list[str] | None = None,
    label_column: str | None = None,
    ranks: Dist = SINGLE,
) -> Table:
    """Read and check a table. Under torchrun every rank calls this; each reads and checks only its share."""
    if source.startswith(BUILTIN_PREFIX):
        table = _load_builtin(source[len(BUILTIN_PREFIX) :])
    else:
        path = Path(source)
        if not path.exists():
            raise DataError(f"{path}: no such file")
        if not path.is_file():
            raise DataError(f"{path}: not a file")
        suffix = path.suffix.lower()
        if suffix not in _READERS:
            raise UnsupportedFormat(str(path))
        if key is not None and suffix != ".npz":
            raise DataError(f"--key applies to .npz files only, not {path.name}")
        table = _READERS[suffix](path, key, columns, label_column, ranks)
    check_values(table.x, table.feature_names, source, ranks)
    return table


def _load_builtin(name: str) -> Table:
    if name != "digits":
        raise DataError(f"unknown built-in data set {name!r}; available: digits")
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # 8x8 grey levels 0..16 -> [0, 1]
    return Table(x, digits.target.astype(np.int64), list(digits.feature_names), (8, 8))


def _load_npy(path: Path, key: str | None, columns: list[str] | None, label: str | None, ranks: Dist) -> Table:
    _no_columns(path, columns, label)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)  # memory-mapped: rows are read when used
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot read as .npy ({exc})") from exc
    return Table(_as_matrix(arr, path.name), None, None)


def _load_npz(path: Path, key: str | None, columns: list[str] | None, label: str | None, ranks: Dist) -> Table:
    _no_columns(path, columns, label)
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


def _load_csv(path: Path, key: str | None, columns: list[str] | None, label: str | None, ranks: Dist) -> Table:
    with path.open(newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(cell.strip() for cell in r)]
    if not rows:
        raise DataError(f"{path}: empty file")
    has_header = not all(_is_number(cell) for cell in rows[0])
    header = [h.strip() for h in rows[0]] if has_header else [f"column_{j}" for j in range(len(rows[0]))]
    body = rows[1:] if has_header else rows
    first_line = 2 if has_header else 1
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise DataError(
                f"{path}: line {first_line + i} has {len(r)} fields, expected {len(header)} (like the first line)"
            )
    labels = None
    if label is not None:
        j = _column_index(path, header, label)
        labels = np.array([r[j].strip() for r in body])
    wanted = columns if columns is not None else [h for h in header if h != label]
    idx = [_column_index(path, header, c) for c in wanted]
    x = np.empty((len(body), len(idx)), dtype=np.float64)
    for out_j, j in enumerate(idx):
        for i, r in enumerate(body):
            cell = r[j].strip()
            try:
                x[i, out_j] = float(cell) if cell else np.nan
            except ValueError:
                raise DataError(
                    f"{path}: column {header[j]!r} is not numeric (line {first_line + i} holds {cell[:40]!r}); "
                    f"choose numeric columns with --columns"
                ) from None
    return Table(x.astype(np.float32), labels, [header[j] for j in idx])


def _load_parquet(path: Path, key: str | None, columns: list[str] | None, label: str | None, ranks: Dist) -> Table:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading .parquet needs pyarrow (pip install 'gaussian-vae[parquet]')") from None
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot read as .parquet ({exc})") from exc
    schema = pf.schema_arrow
    names = list(schema.names)
    if label is not None and label not in names:
        raise DataError(f"{path}: no column named {label!r}; columns are {names}")
    wanted = columns if columns is not None else [n for n in names if n != label]
    for c in wanted:
        if c not in names:
            raise DataError(f"{path}: no column named {c!r}; columns are {names}")
        if names.count(c) > 1:
            raise DataError(f"{path}: {names.count(c)} columns are named {c!r}; column names must be unique")
        kind = schema.field(c).type
        if not any(test(kind) for test in (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)) and not (
            pa.types.is_decimal(kind)
        ):
            raise DataError(
                f"{path}: column {c!r} is not numeric (it holds {kind}); choose numeric columns with --columns"
            )
    # The label column only colours rank 0's latent plot; rank 0 reads it whole (one column).
    labels = None
    if label is not None and ranks.is_main:
        labels = pf.read(columns=[label]).column(label).to_numpy(zero_copy_only=False)
    return Table(_parquet_scratch_copy(pf, path, list(wanted), ranks), labels, list(wanted))


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


_READERS: dict[str, Callable[[Path, str | None, list[str] | None, str | None, Dist], Table]] = {
    ".npy": _load_npy,
    ".npz": _load_npz,
    ".csv": _load_csv,
    ".parquet": _load_parquet,
}


def _no_columns(path: Path, columns: list[str] | None, label: str | None) -> None:
    if columns is not None or label is not None:
        raise DataError(f"--columns and --label-column apply to .csv and .parquet files, not {path.name}")


def _as_matrix(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.ndim != 2:
        raise DataError(f"{what}: expected a 2-D array (rows x features), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise DataError(f"{what}: expected real numbers, got dtype {arr.dtype}")
    if isinstance(arr, np.memmap):
        return arr  # stays on disk; training reads minibatches from it (training/rows.py)
    return arr.astype(np.float32)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _column_index(path: Path, header: list[str], name: str) -> int:
    if name in header:
        return header.index(name)
    raise DataError(f"{path}: no column named {name!r}; columns are {header}")


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

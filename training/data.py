"""Load a user's table (builtin:digits, .npy, .npz, .csv, .parquet), validate it, split it deterministically.

Every problem is raised as DataError with a sentence naming the file, column and row; nothing is written
before the data has passed these checks.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.errors import DataError, UnsupportedFormat

BUILTIN_PREFIX = "builtin:"
MIN_ROWS = 10  # at least 8 training rows plus one validation and one test row
CHUNK_ROWS = 65536  # rows per step of the streaming passes over a (possibly memory-mapped) table


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
    source: str, *, key: str | None = None, columns: list[str] | None = None, label_column: str | None = None
) -> Table:
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
        table = _READERS[suffix](path, key, columns, label_column)
    check_values(table.x, table.feature_names, source)
    return table


def _load_builtin(name: str) -> Table:
    if name != "digits":
        raise DataError(f"unknown built-in data set {name!r}; available: digits")
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # 8x8 grey levels 0..16 -> [0, 1]
    return Table(x, digits.target.astype(np.int64), list(digits.feature_names), (8, 8))


def _load_npy(path: Path, key: str | None, columns: list[str] | None, label: str | None) -> Table:
    _no_columns(path, columns, label)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)  # memory-mapped: rows are read when used
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot read as .npy ({exc})") from exc
    return Table(_as_matrix(arr, path.name), None, None)


def _load_npz(path: Path, key: str | None, columns: list[str] | None, label: str | None) -> Table:
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


def _load_csv(path: Path, key: str | None, columns: list[str] | None, label: str | None) -> Table:
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


def _load_parquet(path: Path, key: str | None, columns: list[str] | None, label: str | None) -> Table:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading .parquet needs pyarrow (pip install 'gaussian-vae[parquet]')") from None
    tbl = pq.read_table(path)
    names = list(tbl.column_names)
    if label is not None and label not in names:
        raise DataError(f"{path}: no column named {label!r}; columns are {names}")
    labels = np.asarray(tbl.column(label).to_pylist()) if label is not None else None
    wanted = columns if columns is not None else [n for n in names if n != label]
    cols = []
    for c in wanted:
        if c not in names:
            raise DataError(f"{path}: no column named {c!r}; columns are {names}")
        try:
            cols.append(np.asarray(tbl.column(c).to_numpy(zero_copy_only=False), dtype=np.float64))
        except (TypeError, ValueError):
            raise DataError(f"{path}: column {c!r} is not numeric; choose numeric columns with --columns") from None
    return Table(np.stack(cols, axis=1).astype(np.float32), labels, list(wanted))


_READERS: dict[str, Callable[[Path, str | None, list[str] | None, str | None], Table]] = {
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


def check_values(x: np.ndarray, feature_names: list[str] | None, source: str) -> None:
    """Reject tables the model cannot learn from: no features, too few rows, NaN or infinite values."""
    if x.ndim != 2 or x.shape[1] == 0:
        raise DataError(f"{source}: no feature columns (shape {x.shape})")
    if x.shape[0] < MIN_ROWS:
        raise DataError(f"{source}: {x.shape[0]} rows; at least {MIN_ROWS} are needed")
    count, first = 0, None
    for start in range(0, x.shape[0], CHUNK_ROWS):  # in chunks: a memory-mapped file is never read whole
        bad = ~np.isfinite(np.asarray(x[start : start + CHUNK_ROWS], dtype=np.float64))
        if bad.any():
            count += int(bad.sum())
            if first is None:
                row, col = (int(v) for v in np.argwhere(bad)[0])
                first = (start + row, col)
    if first is not None:
        name = feature_names[first[1]] if feature_names else f"column {first[1]}"
        raise DataError(
            f"{source}: {count} NaN or infinite values (empty cells count as NaN); "
            f"the first is in row {first[0]} (0-based, after any header), {name!r}"
        )


def split_rows(n: int, val_fraction: float, test_fraction: float, seed: int) -> Split:
    """A seeded permutation cut into train/validation/test; each of validation and test gets at least one row."""
    n_val = max(1, round(n * val_fraction))
    n_test = max(1, round(n * test_fraction))
    if n - n_val - n_test < MIN_ROWS - 2:
        raise DataError(
            f"{n} rows leave {n - n_val - n_test} for training after the validation and test splits; "
            f"at least {MIN_ROWS - 2} are needed"
        )
    perm = np.random.default_rng(seed).permutation(n)
    return Split(train=perm[n_val + n_test :], val=perm[:n_val], test=perm[n_val : n_val + n_test])


def standardization(
    x: np.ndarray, std_floor: float, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    # mean_j, max(std_j, f * mean_k std_k) over the given rows (all by default): (N, D) -> (D,), (D,), and the
    # absolute floor. One streaming pass in chunks (Chan et al.'s pairwise update of mean and M2), so a
    # memory-mapped table is never read whole. A floor relative to the features' average scale is unchanged by
    # rescaling the data, keeps constant columns finite, and stops near-constant columns (a pixel that is almost
    # always 0) from turning one rare value into thousands of standard deviations.
    rows = np.arange(x.shape[0]) if rows is None else np.sort(rows)
    n, mean, m2 = 0, np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for start in range(0, rows.size, CHUNK_ROWS):
        chunk = np.asarray(x[rows[start : start + CHUNK_ROWS]], dtype=np.float64)
        k, c_mean = chunk.shape[0], chunk.mean(0)
        delta = c_mean - mean
        m2 += ((chunk - c_mean) ** 2).sum(0) + delta**2 * n * k / (n + k)
        mean += delta * k / (n + k)
        n += k
    std = np.sqrt(m2 / n)
    scale = float(std.mean())
    floor = std_floor * scale if scale > 0 else std_floor
    return mean.astype(np.float32), np.maximum(std, floor).astype(np.float32), float(np.float32(floor))

"""The float32 scratch copy of a .parquet table: row-major on disk, memory-mapped, shared by a machine's ranks.

Minibatches are drawn from a fresh permutation of all rows every epoch, which needs random access to rows; a
columnar, compressed file gives that only a row group at a time, so the rows are copied once into a row-major
scratch file in $TMPDIR (N x D x 4 bytes of disk, reserved up front). training/rows.py then reads minibatches
from the map.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from training.data import chunk_rows
from training.distributed import Dist
from training.errors import DataError
from vae_tables.columns import Float32Spread
from vae_tables.numeric import numeric_column


def parquet_scratch_copy(pf: Any, path: Path | str, columns: list[str], ranks: Dist) -> np.ndarray:
    """Stream the row groups into a memory-mapped (N, D) float32 .npy in $TMPDIR and map it read-only.

    Under torchrun the ranks of a machine share one copy, each writing the row groups g with g % local ranks ==
    local rank. Every rank maps the file before anything is copied and local rank 0 then unlinks it, so it
    disappears with the processes however they end. A failure on any rank stops every rank with a DataError (none
    is left waiting in a collective). Cells become numbers by vae_tables/numeric.py's rule; nulls become NaN (refused
    by the check)."""
    meta = pf.metadata
    n, d = meta.num_rows, len(columns)
    if n == 0 or d == 0:
        return np.zeros((n, d), dtype=np.float32)  # check_values names the problem
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
    failure = _copy_row_groups(pf, path, columns, ranks, out)
    out.flush()
    del out
    _agree(ranks, failure, path, "copy its row groups")  # every row group is written (or all stop)
    return x


def _copy_row_groups(pf: Any, path: Path | str, columns: list[str], ranks: Dist, out: np.ndarray) -> str | None:
    # This local rank's row groups into out (N, D), a chunk at a time; the failure's message, or None.
    meta = pf.metadata
    starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
    step = chunk_rows(len(columns))
    spreads = [Float32Spread() for _ in columns]  # over this rank's row groups: the warning a table read whole gets
    for g in range(ranks.local_rank, meta.num_row_groups, ranks.local_world):
        at = int(starts[g])
        try:
            for batch in pf.iter_batches(batch_size=step, row_groups=[g], columns=columns):
                read = np.column_stack([numeric_column(batch.column(c), c, str(path), first_row=at) for c in columns])
                rows = out[at : at + batch.num_rows]
                with np.errstate(over="ignore"):  # beyond float32: inf, refused by name by check_values
                    rows[:] = read
                for j, spread in enumerate(spreads):
                    spread.add(read[:, j], rows[:, j])
                del read  # before the next chunk's is built: two chunks at once would double this loop's peak
                at += batch.num_rows
        except (pa.ArrowException, OSError) as exc:
            return f"{path}: cannot read row group {g} ({exc})"
        except DataError as exc:
            return str(exc)
    if ranks.local_rank == 0:  # one warning per machine, from the row groups its first rank copied
        for spread, c in zip(spreads, columns, strict=True):
            spread.warn(c, str(path))
    return None


def _agree(ranks: Dist, failure: str | None, path: Path | str, what: str) -> None:
    # A collective: raise on every rank when any rank failed, its own message where it has one.
    failed = ranks.gather(np.array([failure is not None], dtype=np.int64))
    if failure is not None:
        raise DataError(failure)
    if failed.any():
        ranks_failed = [r for r in range(ranks.world) if failed[r, 0]]
        raise DataError(f"{path}: rank(s) {ranks_failed} could not {what} (see their message)")


def _create_scratch(n: int, d: int, source: Path | str) -> str:
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


def _reserve(fd: int, size: int, source: Path | str) -> None:
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

"""Scoring a table a partition at a time: what `vae-score` runs on each file (in one process, in --workers local
processes, or on a Dask cluster), and `score_frame`, the function for a batch of rows that Spark's mapInPandas,
Ray Data's map_batches and Dask's map_partitions call.

Every number is the bundle runtime's (runtime/local.py), the plans the service runs, with the noise block every
row shares: a row's score depends on the row alone, never on its partition, batch or worker.
"""

from __future__ import annotations

import numbers
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from gaussian_vae.files import batches, by_position, check_no_clash, feature_columns, writer_for
from runtime import LocalModel, OperationError, open_bundle
from runtime.bundle import Device, Fingerprint, fingerprint
from vae_tables import DataError, suffix_of
from vae_tables.locations import is_uri, local_copy, publish
from vae_tables.missing import check_na

Operation = Literal["score", "encode"]


@dataclass(frozen=True)
class Job:
    """What to compute and how to read and write: the same for every partition (picklable, sent to workers)."""

    bundle: str
    operation: Operation = "score"
    explain: bool = False
    importance_samples: int | None = None
    threshold_quantile: float | None = None
    seed: int | None = None
    delimiter: str | None = None
    na: Literal["stop", "drop"] = "stop"
    batch_rows: int = 65536
    device: Device = "auto"
    intra_op_threads: int = 0  # onnxruntime threads per run; 0: its default (every CPU); a worker process gets 1

    def __post_init__(self) -> None:
        # score_frame and score_files take these as keyword arguments: a misspelt value fails here, naming it
        if self.operation not in ("score", "encode"):
            raise DataError(f"operation must be 'score' or 'encode', not {self.operation!r}")
        check_na(self.na)
        scoring: dict[str, object] = {"explain": self.explain, "importance_samples": self.importance_samples}
        scoring["threshold_quantile"] = self.threshold_quantile
        given = [name for name, value in scoring.items() if value is not None and value is not False]
        if self.operation == "encode" and given:  # they change nothing of an embedding: a mistake to say so
            raise DataError(f"{', '.join(given)}: options of operation 'score'; 'encode' takes none of them")
        if not isinstance(self.batch_rows, int) or self.batch_rows < 1:
            raise DataError(f"batch_rows must be a positive whole number, not {self.batch_rows!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise DataError(f"device must be 'auto', 'cpu' or 'cuda', not {self.device!r}")
        if isinstance(self.intra_op_threads, bool) or not isinstance(self.intra_op_threads, numbers.Integral):
            raise DataError(f"intra_op_threads must be a whole number, 0 or more, not {self.intra_op_threads!r}")
        object.__setattr__(self, "intra_op_threads", int(self.intra_op_threads))  # numpy's integers too (frozen)
        if self.intra_op_threads < 0:
            raise DataError(f"intra_op_threads must be a whole number, 0 or more, not {self.intra_op_threads!r}")
        if not isinstance(self.explain, bool):
            raise DataError(f"explain must be True or False, not {self.explain!r}")
        for name in ("importance_samples", "seed"):  # a bool is an int to Python: True is no sample count
            if isinstance(getattr(self, name), bool):
                raise DataError(f"{name} must be a whole number, not {getattr(self, name)!r}")


@dataclass
class Tally:
    rows: int = 0
    flagged: int = 0
    dropped: int = 0

    def add(self, other: Tally) -> None:
        self.rows, self.flagged, self.dropped = (
            self.rows + other.rows,
            self.flagged + other.flagged,
            self.dropped + other.dropped,
        )


@dataclass(frozen=True)
class Task:
    """One input partition and where its answer goes."""

    source: str
    target: str
    hive: dict[str, str | None] = field(default_factory=dict)


def opened(bundle: str, device: Device, threads: int) -> LocalModel:
    """The bundle, opened once per process while its files stay the same (each worker verifies and loads it on its
    first partition); a folder replaced since, a model retrained into the same place, is opened again."""
    return _opened(bundle, device, threads, fingerprint(Path(bundle)))


@lru_cache(maxsize=4)  # a few bundles side by side; an older one's sessions are let go
def _opened(bundle: str, device: Device, threads: int, files: Fingerprint) -> LocalModel:
    return open_bundle(bundle, device, intra_op_threads=threads)


INPUT_ROW = "input_row"  # with na="drop": the input row (from 0, after any header) each answer row is


def score_file(
    model: LocalModel,
    job: Job,
    source: Path,
    target: Path,
    *,
    suffix: str,
    shown_as: str,
    hive: dict[str, str | None] | None = None,
    progress: Callable[[int], None] = lambda n: None,
) -> Tally:
    """Read a local file in batches, compute, write the answers beside its other columns (and its Hive partition
    values) to `target`, a local path, in the format of `suffix` (.csv, .parquet, ...). Errors name the input as
    `shown_as`."""
    tally, m = Tally(), model.manifest
    positional = by_position(m)
    empty: pa.Table | None = None  # the input's other columns, none of its rows, while nothing is written
    try:
        with writer_for(target, suffix) as write:
            for batch in batches(source, features=m.feature_names, delimiter=job.delimiter, batch_rows=job.batch_rows):
                first_row = tally.rows + tally.dropped
                cols = feature_columns(
                    batch,
                    m.feature_names,
                    m.input_dim,
                    na=job.na,
                    source=shown_as,
                    first_row=first_row,
                    positional=positional,
                )
                tally.dropped += cols.dropped
                kept = with_hive(cols.kept_columns, hive or {}, batch.column_names)
                if len(cols.x):
                    results = compute(model, job, cols.x)
                    if job.na == "drop":  # rows may be left out: each answer says which input row it is
                        at = np.arange(len(cols.x)) if cols.rows is None else cols.rows
                        results = {INPUT_ROW: (first_row + at).astype(np.int64), **results}
                    check_no_clash(kept.column_names, list(results), shown_as)  # a folder key=... included
                    tally.flagged += int(np.sum(results.get("is_anomaly", 0)))
                    write(kept, results)
                elif tally.rows == 0:
                    empty = kept.slice(0, 0)
                tally.rows += len(cols.x)
                progress(len(cols.x) + cols.dropped)
            if tally.rows == 0 and empty is not None:
                # an empty partition (Spark writes them), or every row left out by --na drop: an answer of no rows
                # with the columns a batch with rows gets, so the folder of answers is complete and reads as one
                results = _no_rows(model, job)
                if job.na == "drop":
                    results = {INPUT_ROW: np.zeros(0, dtype=np.int64), **results}
                check_no_clash(empty.column_names, list(results), shown_as)
                write(empty, results)
            elif tally.rows == 0:  # every reader gives a file of no rows one batch of none: never a 0-byte answer
                raise DataError(f"{shown_as}: no rows and no columns read")
    except (pa.ArrowException, EOFError) as exc:  # Arrow refusing a file or a column (CSV holds no lists), a cut .npy
        hint = "; write .parquet (CSV cannot hold lists, structs or binary)" if "Unsupported Type" in str(exc) else ""
        raise DataError(f"{shown_as}: {type(exc).__name__}: {exc}{hint}") from exc
    return tally


def with_hive(table: pa.Table, hive: dict[str, str | None], file_columns: list[str]) -> pa.Table:
    """The partition values of a Hive-style path as string columns of the rows kept (`table`), unless the file has a
    column of that name (`file_columns`: a feature, which is not kept, included)."""
    for key, value in hive.items():
        if key not in file_columns:
            table = table.append_column(key, pa.array([value] * table.num_rows, pa.string()))
    return table


def beside(target: Path) -> Path:
    """A temporary file for `target`'s answers, beside it (a rename is atomic within one filesystem only): hidden, so
    no reader of the folder takes it for a partition, and unique, so two runs writing the same target (a task run
    twice, a second run started on the same output) never write into one file."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")


def score_partition(job: Job, task: Task) -> Tally:
    """One partition, start to end, in whatever process runs it: read (downloaded first when remote), compute,
    write a temporary file, and publish it whole at the target (renamed, or uploaded: an object appears only once
    complete), so a re-run skips what is there and a worker lost midway leaves nothing half written."""
    model = opened(job.bundle, job.device, job.intra_op_threads)
    name = PurePosixPath(task.target).name
    with local_copy(task.source) as source, tempfile.TemporaryDirectory(prefix="vae-out-") as folder:
        # a local target's temporary file sits beside it (a rename is atomic within one filesystem only), named
        # so that no reader of the folder takes it for a partition
        part = Path(folder) / name if is_uri(task.target) else beside(Path(task.target))
        part.parent.mkdir(parents=True, exist_ok=True)
        try:
            suffix = suffix_of(Path(name))
            try:
                tally = score_file(model, job, source, part, suffix=suffix, shown_as=task.source, hive=task.hive)
            except DataError as exc:  # a reader names the file it read: for an object store, a local copy now gone
                if str(source) == task.source:
                    raise
                raise DataError(str(exc).replace(str(source), task.source)) from exc
            publish(part, task.target)
        finally:
            part.unlink(missing_ok=True)
    return tally


def compute(model: LocalModel, job: Job, x: np.ndarray) -> dict[str, np.ndarray]:
    """The answer's columns for rows x (n, D): score's, or encode's posterior means."""
    names = model.manifest.feature_names or [f"feature_{j}" for j in range(model.manifest.input_dim)]
    if job.operation == "encode":
        out = model.encode(x, seed=job.seed)
        return {f"z_mean_{j}": out["mean"][:, j] for j in range(model.manifest.latent_dim)}
    out = model.score(
        x,
        importance_samples=job.importance_samples,
        seed=job.seed,
        explain=job.explain,
        threshold_quantile=job.threshold_quantile,
    )
    results = {k: np.asarray(out[k]) for k in ("anomaly_score", "log_likelihood", "elbo", "percentile", "p_value")}
    results["is_anomaly"] = np.asarray(out["is_anomaly"])
    if job.explain:
        results |= {f"nll_{name}": out["feature_nll"][:, j] for j, name in enumerate(names)}
    return results


def score_frame(frame: Any, bundle: str | Path, **options: Any) -> Any:
    """A batch of rows (a pandas DataFrame or a pyarrow Table) with the answer's columns beside its own: the one
    function every engine runs on its partitions. The bundle opens once per process.

        df.mapInPandas(lambda frames: (score_frame(f, "models/digits/3") for f in frames), schema)   # Spark
        ds.map_batches(score_frame, fn_kwargs={"bundle": "models/digits/3"}, batch_format="pandas")  # Ray Data
        ddf.map_partitions(score_frame, "models/digits/3")                                           # Dask

    options: operation ("score" or "encode"), explain, importance_samples, threshold_quantile, seed, na ("stop",
    or "drop" to leave out rows with a missing feature), device, intra_op_threads. The features are found by the
    bundle's feature names; every other column is kept, in order.
    """
    unknown = sorted(set(options) - set(SCORE_FRAME_OPTIONS))
    if unknown:
        raise DataError(f"score_frame takes no option {unknown}; it takes {list(SCORE_FRAME_OPTIONS)}")
    job = replace(Job(str(bundle)), **options)
    model = opened(job.bundle, job.device, job.intra_op_threads)
    m = model.manifest
    is_arrow = isinstance(frame, pa.Table)
    table = frame if is_arrow else _features_of(frame, m.feature_names)
    cols = feature_columns(table, m.feature_names, m.input_dim, na=job.na, source="the batch", first_row=0)
    try:
        results = compute(model, job, cols.x) if len(cols.x) else _no_rows(model, job)
    except OperationError as exc:  # an option's value the operations refuse (seed=-1): as score_files says it
        raise DataError(f"score_frame: {exc}") from exc
    check_no_clash([str(c) for c in (table.column_names if is_arrow else frame.columns)], list(results), "the batch")
    if not is_arrow:  # the frame's own rows, index and dtypes (a Dask partition keeps its divisions)
        return (frame if cols.rows is None else frame.iloc[cols.rows]).assign(**results)
    kept = table if cols.rows is None else table.take(pa.array(cols.rows))
    for name, values in results.items():
        kept = kept.append_column(name, pa.array(values))
    return kept


SCORE_FRAME_OPTIONS = (
    "operation",
    "explain",
    "importance_samples",
    "threshold_quantile",
    "seed",
    "na",
    "device",
    "intra_op_threads",
)


def _features_of(frame: Any, features: list[str] | None) -> pa.Table:
    """A pandas frame's feature columns as Arrow (a model without names: every column). Only they are converted:
    an id column of mixed types, or repeated names among the columns carried along, are no concern of the model's."""
    wanted = None if features is None else set(features)  # once: a wide frame's batches are many and small
    picked = list(frame.columns) if wanted is None else [c for c in frame.columns if str(c) in wanted]
    try:
        table = pa.Table.from_pandas(frame[picked], preserve_index=False)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise DataError(f"the batch: its feature columns cannot be read ({exc})") from None
    return table.rename_columns([str(c) for c in table.column_names])


def _no_rows(model: LocalModel, job: Job) -> dict[str, np.ndarray]:
    """The answer's columns for a batch with no rows (empty, or every row dropped by na="drop"): the names and
    dtypes a batch with rows gets (Spark's and Ray's schemas, and a concatenation, hold across both), taken from one
    row of zeros scored and cut away."""
    zeros = np.zeros((1, model.manifest.input_dim), dtype=np.float32)
    return {name: values[:0] for name, values in compute(model, job, zeros).items()}


def target_for(output: str, relative: str, suffix: str) -> str:
    """Where a partition's answer goes: its relative name under the output folder or prefix, its format's suffix
    in place of its own."""
    name = PurePosixPath(relative)
    stem = name.name[: len(name.name) - len(suffix_of(Path(name.name)))] if suffix_of(Path(name.name)) else name.name
    return f"{output.rstrip('/')}/{(name.parent / (stem + suffix)).as_posix()}".replace("/./", "/")

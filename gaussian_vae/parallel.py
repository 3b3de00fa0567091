"""Partitions scored side by side: in local worker processes, or on a Dask distributed cluster.

Each task is one input partition scored into one output partition by gaussian_vae/partitions.py's score_partition,
published whole, so:
- a worker lost midway costs only its partitions: locally the pool is rebuilt and the partitions not yet answered
  run again; those that were running when it broke (one of them killed its worker, and a pool that loses one
  worker stops them all) then run one at a time, each alone in a pool, so a partition that kills its worker is
  told apart from those beside it and fails after MAX_ATTEMPTS tries while the others are scored; Dask reschedules
  a lost worker's tasks itself (its distributed.scheduler.allowed-failures, 3 by default);
- a partition that cannot be scored (corrupt, missing, a feature absent) is reported by its URI while the others
  go on, after one try: its failure would only repeat (an object store's passing errors, a 503 or a reset
  connection, are retried per request by Arrow's S3 client already, for a few seconds);
- the same partition written twice is the same file: nothing is duplicated.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from gaussian_vae.partitions import Job, Tally, Task, score_partition
from runtime import BundleError, OperationError
from vae_tables import DataError

MAX_ATTEMPTS = 3
Done = Callable[[Task, Tally], None]  # told of each partition finished
# why every worker process can die before it takes a partition: a spawned worker imports the caller's script, and a
# script that calls score_files at its top level calls it again there, where score_files refuses (cli.py)
UNGUARDED = (
    'when score_files is called from a script, put the call under `if __name__ == "__main__":` (each worker '
    "process imports the script), or pass workers=1"
)


def unguarded_mark(parent: int) -> Path:
    """The file a worker leaves for its parent when it finds itself started by an unguarded score_files call: the
    parent then says why at once, rather than starting workers that die again."""
    return Path(tempfile.gettempdir()) / f"vae-score-unguarded-{parent}"


@dataclass
class Outcome:
    tally: Tally = field(default_factory=Tally)
    done: int = 0
    failed: list[tuple[Task, str]] = field(default_factory=list)  # (partition, why)
    replaced: bool = False  # a single file's answers took the place of a file already at the output


def run_local(job: Job, tasks: list[Task], workers: int, on_done: Done) -> Outcome:
    """The tasks on `workers` processes (spawned: each imports onnxruntime and opens the bundle itself)."""
    outcome, attempts, remaining, stalls = Outcome(), Counter[str](), list(tasks), 0
    _unguarded()  # a mark left by an earlier process of this number (a reused pid) is none of this run's
    with tempfile.TemporaryDirectory(prefix="vae-score-") as marks:
        while remaining:
            running, waiting = _round(job, remaining, workers, Path(marks), outcome, on_done)
            stalls = stalls + 1 if not running and len(waiting) == len(remaining) else 0  # broke before any started
            if stalls and _unguarded():
                outcome.failed.extend((t, f"the worker processes could not start: {UNGUARDED}") for t in waiting)
                break
            if stalls >= MAX_ATTEMPTS:
                outcome.failed.extend((t, f"the worker processes died {MAX_ATTEMPTS} times") for t in waiting)
                break
            remaining = waiting
            for task in running:  # each alone now: a worker that dies has died of this partition
                while True:
                    attempts[task.source] += 1
                    if not any(_round(job, [task], 1, Path(marks), outcome, on_done)):
                        break
                    if attempts[task.source] + 1 >= MAX_ATTEMPTS:
                        outcome.failed.append((task, f"its worker died {MAX_ATTEMPTS} times"))
                        break
    return outcome


def _unguarded() -> bool:
    """Whether a worker of this process said it was started by an unguarded score_files call (and forget it)."""
    mark = unguarded_mark(os.getpid())
    try:
        mark.unlink()
    except FileNotFoundError:
        return False
    return True


def _round(
    job: Job, tasks: list[Task], workers: int, marks: Path, outcome: Outcome, on_done: Done
) -> tuple[list[Task], list[Task]]:
    """The tasks in one pool. When a worker dies the pool stops: returns (those that were running then, those that
    had not started), both to run again; ([], []) when the pool lasted."""
    for old in marks.iterdir():
        old.unlink()
    running: list[Task] = []
    waiting: list[Task] = []
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures: dict[Future[Tally], tuple[int, Task]] = {
            pool.submit(_marked, job, t, str(marks / str(i))): (i, t) for i, t in enumerate(tasks)
        }
        for future in as_completed(futures):
            i, task = futures[future]
            try:
                tally = future.result()
            except BrokenProcessPool:  # a worker died (killed, out of memory): the unfinished partitions run again
                (running if (marks / str(i)).exists() else waiting).append(task)
                continue
            except Exception as exc:  # this partition's failure: the others go on
                outcome.failed.append((task, _why(exc)))
                continue
            _finished(outcome, task, tally, on_done)
    return running, waiting


def _marked(job: Job, task: Task, mark: str) -> Tally:
    """score_partition, after leaving a mark that says this task started (read when the pool breaks)."""
    Path(mark).touch()
    return score_partition(job, task)


def run_dask(job: Job, tasks: list[Task], scheduler: str, on_done: Done) -> Outcome:
    """The tasks on the Dask distributed cluster at `scheduler` (tcp://host:8786); its workers need this package."""
    try:
        from distributed import Client
        from distributed import as_completed as dask_completed
    except ImportError as exc:
        raise DataError("--scheduler needs dask's distributed package: pip install 'dask[distributed]'") from exc
    outcome, run = Outcome(), uuid.uuid4().hex[:8]
    try:
        client = Client(scheduler, timeout=30)  # type: ignore[no-untyped-call]
    except (OSError, TimeoutError) as exc:
        raise DataError(f"--scheduler {scheduler}: cannot reach it ({exc})") from exc
    with client:
        futures = {
            client.submit(score_partition, job, t, key=f"vae-score-{run}-{i}", pure=False): t
            for i, t in enumerate(tasks)
        }
        for future in dask_completed(list(futures)):  # type: ignore[no-untyped-call]
            task = futures[future]
            try:
                tally = future.result()
            except Exception as exc:  # this partition's failure: the others go on
                outcome.failed.append((task, _why(exc)))
                continue
            _finished(outcome, task, tally, on_done)
    return outcome


def run_here(job: Job, tasks: list[Task], on_done: Done) -> Outcome:
    outcome = Outcome()
    for task in tasks:
        try:
            tally = score_partition(job, task)
        except Exception as exc:  # this partition's failure: the others go on
            outcome.failed.append((task, _why(exc)))
            continue
        _finished(outcome, task, tally, on_done)
    return outcome


def _why(exc: Exception) -> str:
    """A partition's failure in words: the message of the errors that say it (a bad file, bundle or input), else
    with the error's type (a task lost with its worker on every try, anything unforeseen)."""
    known = isinstance(exc, DataError | BundleError | OperationError | OSError)
    return str(exc) if known else f"{type(exc).__name__}: {exc}"


def named(source: str, why: str) -> str:
    """A partition's failure for the user, led by its source once (most reasons name the partition already)."""
    return why if why.startswith(f"{source}: ") else f"{source}: {why}"


def _finished(outcome: Outcome, task: Task, tally: Tally, on_done: Done) -> None:
    outcome.tally.add(tally)
    outcome.done += 1
    on_done(task, tally)

"""Partitions scored side by side: in local worker processes, or on a Dask distributed cluster.

Each task is one input partition scored into one output partition by gaussian_vae/partitions.py's score_partition,
published whole, so:
- a worker lost midway costs only its partitions: locally the pool is rebuilt and the partitions not yet answered
  run again (each at most MAX_ATTEMPTS times); Dask reschedules a lost worker's tasks itself (and retries each up
  to MAX_ATTEMPTS - 1 times);
- a partition that cannot be scored (corrupt, missing, a feature absent) is reported by its URI while the others
  go on;
- the same partition written twice is the same file: nothing is duplicated.
"""

from __future__ import annotations

import multiprocessing
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from gaussian_vae.partitions import Job, Tally, Task, score_partition
from runtime import BundleError, OperationError
from vae_tables import DataError

MAX_ATTEMPTS = 3
Done = Callable[[Task, Tally], None]  # told of each partition finished


@dataclass
class Outcome:
    tally: Tally = field(default_factory=Tally)
    done: int = 0
    failed: list[tuple[Task, str]] = field(default_factory=list)  # (partition, why)


def run_local(job: Job, tasks: list[Task], workers: int, on_done: Done) -> Outcome:
    """The tasks on `workers` processes (spawned: each imports onnxruntime and opens the bundle itself)."""
    outcome, attempts, remaining = Outcome(), Counter[str](), list(tasks)
    while remaining:
        retry: list[Task] = []
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures: dict[Future[Tally], Task] = {pool.submit(score_partition, job, t): t for t in remaining}
            for future in as_completed(futures):
                task = futures[future]
                try:
                    tally = future.result()
                except BrokenProcessPool:  # a worker died (killed, out of memory): its partitions run again
                    attempts[task.source] += 1
                    if attempts[task.source] < MAX_ATTEMPTS:
                        retry.append(task)
                    else:
                        outcome.failed.append((task, f"its worker died {MAX_ATTEMPTS} times"))
                    continue
                except (DataError, BundleError, OperationError, OSError) as exc:
                    outcome.failed.append((task, str(exc)))
                    continue
                except Exception as exc:  # anything else is this partition's failure too: the others go on
                    outcome.failed.append((task, f"{type(exc).__name__}: {exc}"))
                    continue
                _finished(outcome, task, tally, on_done)
        remaining = retry
    return outcome


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
            client.submit(score_partition, job, t, key=f"vae-score-{run}-{i}", retries=MAX_ATTEMPTS - 1, pure=False): t
            for i, t in enumerate(tasks)
        }
        for future in dask_completed(list(futures)):  # type: ignore[no-untyped-call]
            task = futures[future]
            try:
                tally = future.result()
            except (DataError, BundleError, OperationError, OSError) as exc:
                outcome.failed.append((task, str(exc)))
                continue
            except Exception as exc:  # a task that failed on every try, its worker lost each time
                outcome.failed.append((task, f"{type(exc).__name__}: {exc}"))
                continue
            _finished(outcome, task, tally, on_done)
    return outcome


def run_here(job: Job, tasks: list[Task], on_done: Done) -> Outcome:
    outcome = Outcome()
    for task in tasks:
        try:
            tally = score_partition(job, task)
        except (DataError, OperationError, OSError) as exc:
            outcome.failed.append((task, str(exc)))
            continue
        except Exception as exc:  # anything else is this partition's failure too: the others go on
            outcome.failed.append((task, f"{type(exc).__name__}: {exc}"))
            continue
        _finished(outcome, task, tally, on_done)
    return outcome


def _finished(outcome: Outcome, task: Task, tally: Tally, on_done: Done) -> None:
    outcome.tally.add(tally)
    outcome.done += 1
    on_done(task, tally)

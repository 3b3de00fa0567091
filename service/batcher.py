"""DynamicBatcher: merges concurrent requests for one graph into one onnxruntime run (Triton's dynamic batcher).

Contract:
- submit(key, feeds) queues one request's rows (feeds: input name -> array with the rows on axis 0) and returns
  its own rows of every output, in order. Requests are merged only with requests of the same key (e.g. the same
  K of importance samples), since their tensors must share every axis but the batch axis.
- A batch is flushed when it holds max_rows rows (max_rows_for(key) when given: fewer rows for a key whose rows
  cost more, e.g. K importance samples each) or when its oldest request has waited max_delay_s; a request larger
  than that runs alone (callers split big requests into chunks, so this is the exception). Batch limits count
  rows, not requests.
- run_batch is blocking (onnxruntime) and runs on worker threads, at most `concurrency` batches at once per
  batcher (batches are formed one after the other; a new one starts as soon as a run slot is free). On a small
  CPU, two runs with one onnxruntime thread each do 1.5x the rows/s of one run with two threads. While every
  slot is busy, a batch the oldest requests fill on their own (it could not grow by waiting) is formed at once
  and waits for the next free thread, so back-to-back full batches run without a gap; at most `concurrency`
  batches wait so, and a request in one of them runs even if its deadline passes meanwhile.
- If run_batch raises, every request of that batch gets the error; other batches are unaffected.
- More than max_queued_rows waiting rows (not yet formed into a batch) -> QueueFull at submit(). A request not
  answered by its deadline (given to submit, else timeout_s from submit) gets InferenceTimeout and is dropped
  from the queue if it has not started; a submit after its deadline fails at once, so a chunked request stops
  between chunks.
- on_queue(rows) is told the rows still waiting each time a batch is formed (a sampled reading, not one per
  request: it feeds a gauge, which in multiprocess mode is a file write).
- stop() lets queued and running requests finish, then ends the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.errors import InferenceFailed, InferenceTimeout, QueueFull

Feeds = dict[str, np.ndarray]
RunBatch = Callable[[Feeds], list[np.ndarray]]
OnFlush = Callable[[int, float], None]
OnQueue = Callable[[int], None]
_LOOKAHEAD = 8  # queued requests _may_form reads


@dataclass
class _Pending:
    key: Hashable
    feeds: Feeds
    rows: int
    enqueued_at: float
    future: asyncio.Future[list[np.ndarray]] = field(repr=False)


class DynamicBatcher:
    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_rows: int,
        max_delay_s: float,
        max_queued_rows: int,
        timeout_s: float,
        bucket: Callable[[int, int], int] | None = None,
        max_rows_for: Callable[[Hashable], int] | None = None,
        on_flush: OnFlush | None = None,
        on_queue: OnQueue | None = None,
        concurrency: int = 1,
    ) -> None:
        self._run_batch = run_batch
        self._max_rows = max_rows
        self._max_delay_s = max_delay_s
        self._max_queued_rows = max_queued_rows
        self._timeout_s = timeout_s
        self._bucket = bucket  # (rows, row limit of the key) -> padded rows
        self._max_rows_for = max_rows_for
        self._on_flush = on_flush
        self._on_queue = on_queue
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="batcher")
        self._concurrency = concurrency  # runs at once; a batch is formed when one is free (see _may_form)
        self._running: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._running:
            await asyncio.gather(*self._running)
        self._executor.shutdown(wait=True)

    def max_rows(self, key: Hashable) -> int:
        """Rows of one batch for this key."""
        return self._max_rows if self._max_rows_for is None else max(1, min(self._max_rows, self._max_rows_for(key)))

    async def submit(self, key: Hashable, feeds: Feeds, deadline: float | None = None) -> list[np.ndarray]:
        """deadline: on the event loop's clock (loop.time()); None = timeout_s from now."""
        rows = next(iter(feeds.values())).shape[0]
        if self._queued_rows + rows > self._max_queued_rows:
            raise QueueFull(f"{self._queued_rows} rows are waiting; retry shortly")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[np.ndarray]] = loop.create_future()
        self._queue.append(_Pending(key, feeds, rows, time.monotonic(), future))
        self._queued_rows += rows
        if self._may_form():  # else the worker sleeps on: under a flood of 1-row requests, a wakeup each costs
            self._wakeup.set()
        # A timer rather than asyncio.wait_for: no extra task per request. An expired request stays in the queue
        # as a done future and is dropped when collected; a running one finishes without a receiver.
        timer = loop.call_at(loop.time() + self._timeout_s if deadline is None else deadline, self._expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _expire(self, future: asyncio.Future[list[np.ndarray]]) -> None:
        if not future.done():
            future.set_exception(InferenceTimeout(f"the request took longer than {self._timeout_s:g}s"))

    async def _worker(self) -> None:
        while True:
            while not (self._queue and self._may_form()):
                if self._stopping and not self._queue:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            if len(self._running) < self._concurrency:
                batch = await self._collect()
            else:  # every slot busy, and the oldest requests fill a batch: it waits in line for the next free thread
                batch = self._formed(self._take_same_key(self._queue[0].key, self.max_rows(self._queue[0].key))[0])
            if batch:
                task = asyncio.get_running_loop().create_task(self._run(batch))
                self._running.add(task)
                task.add_done_callback(self._finished)

    def _may_form(self) -> bool:
        """A run slot is free, or every slot is busy and the oldest requests fill a batch on their own, so waiting
        could not grow it: that batch is handed to the executor at once, and the thread that finishes a run starts
        it without a round trip through the event loop (which, busy reading request bodies, would leave the core
        idle meanwhile). At most `concurrency` batches wait so."""
        if len(self._running) < self._concurrency:
            return True
        if len(self._running) >= 2 * self._concurrency:
            return False
        # What _take_same_key would take, over the first few requests only: cheap under a queue of 1-row requests,
        # and never more than it takes (a greedy pass over a prefix of the same queue), so a yes is a full batch.
        first = self._queue[0]
        limit, rows = self.max_rows(first.key), first.rows
        for p in itertools.islice(self._queue, 1, _LOOKAHEAD):
            if rows >= limit:
                break
            if p.key == first.key and rows + p.rows <= limit:
                rows += p.rows
        return rows >= limit

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wakeup.set()

    async def _collect(self) -> list[_Pending]:
        """The oldest request plus same-key requests, until max_rows rows or the oldest has waited max_delay_s."""
        first = self._queue[0]
        deadline = first.enqueued_at + self._max_delay_s
        limit = self.max_rows(first.key)
        while True:
            batch, rows = self._take_same_key(first.key, limit)
            left = deadline - time.monotonic()
            if rows >= limit or left <= 0 or self._stopping:
                break
            # Put them back and wait for more arrivals (or the deadline).
            self._queue.extendleft(reversed(batch))
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), left)
        return self._formed(batch)

    def _formed(self, batch: list[_Pending]) -> list[_Pending]:
        """A batch taken off the queue: its live requests (the others timed out or were cancelled while queued)."""
        self._queued_rows -= sum(p.rows for p in batch)
        if self._on_queue is not None:
            self._on_queue(self._queued_rows)
        return [p for p in batch if not p.future.done()]

    def _take_same_key(self, key: Hashable, limit: int) -> tuple[list[_Pending], int]:
        batch: list[_Pending] = []
        rows = 0
        kept: deque[_Pending] = deque()
        while self._queue:
            p = self._queue.popleft()
            if p.key == key and (not batch or rows + p.rows <= limit):
                batch.append(p)
                rows += p.rows
            else:
                kept.append(p)
        self._queue = kept
        return batch, rows

    async def _run(self, batch: list[_Pending]) -> None:
        rows = sum(p.rows for p in batch)
        feeds = {name: np.concatenate([p.feeds[name] for p in batch]) for name in batch[0].feeds}
        padded = self._bucket(rows, self.max_rows(batch[0].key)) if self._bucket is not None else rows
        if padded > rows:  # pad to a bucket size so onnxruntime sees few distinct shapes
            feeds = {n: np.concatenate([a, np.zeros((padded - rows, *a.shape[1:]), a.dtype)]) for n, a in feeds.items()}
        waited = time.monotonic() - batch[0].enqueued_at
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(self._executor, self._run_batch, feeds)
            if any(o.shape[0] != padded for o in outputs):
                raise InferenceFailed(f"the graph returned {[o.shape[0] for o in outputs]} rows for {padded}")
        except Exception as exc:  # every caller of this batch gets the error, the worker lives on
            err = exc if isinstance(exc, InferenceFailed) else InferenceFailed(f"inference failed: {exc}")
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(err)
            return
        if self._on_flush is not None:
            self._on_flush(rows, waited)
        start = 0
        for p in batch:
            if not p.future.done():
                p.future.set_result([o[start : start + p.rows] for o in outputs])
            start += p.rows

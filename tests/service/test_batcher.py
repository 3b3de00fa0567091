"""DynamicBatcher's contract, checked with a recording fake run_batch (no model). A test that needs the batcher in
some state (a run started, a batch formed) waits for that event, never for a duration."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from service.batcher import DynamicBatcher
from service.errors import InferenceFailed, InferenceTimeout, QueueFull
from service.inference import bucket_rows

pytestmark = pytest.mark.anyio


class Recorder:
    def __init__(self, delay_s: float = 0.0, fail_when: float | None = None) -> None:
        self.calls: list[int] = []
        self.entered: list[int] = []  # rows of each run started, held or not
        self.delay_s = delay_s
        self.fail_when = fail_when
        self.release = threading.Event()
        self.release.set()

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.entered.append(feeds["x"].shape[0])
        self.release.wait(HOLD_S)
        x = feeds["x"]
        self.calls.append(x.shape[0])
        time.sleep(self.delay_s)
        if self.fail_when is not None and np.any(x == self.fail_when):
            raise RuntimeError("boom")
        return [x * 2.0, x.sum(1)]


HOLD_S = 30.0  # a held run goes on by itself after this, longer than until() waits: a test never passes by it


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Wait for the event a test needs (a run started, a batch formed); fail naming it after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.001)


async def turns(n: int = 20) -> None:
    """Let the event loop run what is ready, n times over: the submits just scheduled (the ready queue is FIFO, so
    they run before this coroutine resumes) and any batch they would form. Counts loop turns, not time."""
    for _ in range(n):
        await asyncio.sleep(0)


def _batcher(run, **kw) -> DynamicBatcher:
    opts = {"max_rows": 64, "max_delay_s": 0.02, "max_queued_rows": 1000, "timeout_s": 5.0}
    return DynamicBatcher(run, **{**opts, **kw})


def _rows(value: float, n: int) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 3), value, np.float32)}


async def test_concurrent_requests_are_merged_and_each_gets_its_own_rows() -> None:
    run = Recorder()
    b = _batcher(run)
    b.start()
    results = await asyncio.gather(*[b.submit(None, _rows(i, i + 1)) for i in range(5)])
    await b.stop()
    assert run.calls == [15]
    for i, (doubled, sums) in enumerate(results):
        assert doubled.shape == (i + 1, 3) and np.all(doubled == 2 * i) and np.all(sums == 3 * i)


async def test_batch_flushes_when_max_rows_is_reached_without_waiting_for_the_delay() -> None:
    run = Recorder()
    b = _batcher(run, max_rows=8, max_delay_s=10.0)
    b.start()
    started = time.monotonic()
    await asyncio.gather(*[b.submit(None, _rows(1, 4)) for _ in range(2)])
    await b.stop()
    assert run.calls == [8] and time.monotonic() - started < 5.0


async def test_batch_flushes_when_the_delay_expires() -> None:
    run = Recorder()
    b = _batcher(run, max_rows=1000, max_delay_s=0.05)
    b.start()
    started = time.monotonic()
    await b.submit(None, _rows(1, 2))
    waited = time.monotonic() - started
    await b.stop()
    assert run.calls == [2] and 0.04 <= waited < 2.0


async def test_requests_with_different_keys_never_share_a_batch() -> None:
    run = Recorder()
    b = _batcher(run)
    b.start()
    await asyncio.gather(b.submit(1, _rows(1, 2)), b.submit(2, _rows(2, 3)), b.submit(1, _rows(3, 4)))
    await b.stop()
    assert sorted(run.calls) == [3, 6]


async def test_a_request_larger_than_max_rows_runs_alone_and_batches_count_rows() -> None:
    run = Recorder()
    b = _batcher(run, max_rows=10)
    b.start()
    await asyncio.gather(b.submit(None, _rows(1, 25)), *[b.submit(None, _rows(2, 4)) for _ in range(4)])
    await b.stop()
    assert 25 in run.calls and all(c <= 10 for c in run.calls if c != 25) and sum(run.calls) == 41


async def test_a_failing_batch_fails_its_callers_and_the_next_batch_succeeds() -> None:
    run = Recorder(fail_when=-1.0)
    b = _batcher(run)
    b.start()
    results = await asyncio.gather(b.submit(None, _rows(-1, 1)), b.submit(None, _rows(5, 1)), return_exceptions=True)
    after = await b.submit(None, _rows(7, 2))
    await b.stop()
    assert all(isinstance(r, InferenceFailed) for r in results)
    assert np.all(after[0] == 14)


async def test_full_queue_raises_queue_full_at_submit() -> None:
    run = Recorder()
    run.release.clear()  # hold the worker so rows pile up
    b = _batcher(run, max_rows=4, max_queued_rows=10, max_delay_s=0.0)
    b.start()
    first = asyncio.ensure_future(b.submit(None, _rows(1, 4)))
    await until(lambda: run.entered == [4], "the first batch runs (held)")
    queued = [asyncio.ensure_future(b.submit(None, _rows(1, 3))) for _ in range(3)]  # 9 rows, no batch full
    await turns()
    assert not any(q.done() for q in queued)
    with pytest.raises(QueueFull):
        await b.submit(None, _rows(1, 2))
    run.release.set()
    await asyncio.gather(first, *queued)
    await b.stop()


async def test_a_request_waiting_past_the_timeout_gets_inference_timeout_and_is_dropped() -> None:
    run = Recorder()
    run.release.clear()
    b = _batcher(run, timeout_s=0.1, max_delay_s=0.0)
    b.start()
    blocker = asyncio.ensure_future(b.submit(None, _rows(1, 1)))
    await until(lambda: run.entered == [1], "the blocker's batch runs (held)")
    with pytest.raises(InferenceTimeout):
        await b.submit(None, _rows(2, 3))  # queued behind the held run
    run.release.set()
    with pytest.raises(InferenceTimeout):
        await blocker  # it too waited past the timeout
    await b.stop()
    assert run.calls == [1]  # the timed-out queued request never ran


async def test_batches_are_padded_to_bucket_sizes_and_callers_get_unpadded_rows() -> None:
    run = Recorder()
    b = _batcher(run, bucket=bucket_rows)
    b.start()
    out = await asyncio.gather(b.submit(None, _rows(1, 3)), b.submit(None, _rows(2, 2)))
    await b.stop()
    assert run.calls == [8] and out[0][0].shape == (3, 3) and out[1][0].shape == (2, 3)


def test_bucket_sizes_are_powers_of_two_up_to_the_batch_limit() -> None:
    assert [bucket_rows(n, 1024) for n in (1, 2, 3, 5, 64, 65, 1000, 1024, 3000)] == [
        1,
        2,
        4,
        8,
        64,
        128,
        1024,
        1024,
        3000,
    ]


async def test_stop_finishes_queued_requests() -> None:
    run = Recorder(delay_s=0.01)
    b = _batcher(run, max_rows=2, max_delay_s=0.0)
    b.start()
    pending = [asyncio.ensure_future(b.submit(None, _rows(i, 2))) for i in range(4)]
    await asyncio.sleep(0)
    await b.stop()
    assert sum(run.calls) == 8  # every queued row ran before stop() returned
    results = await asyncio.wait_for(asyncio.gather(*pending), 1.0)
    assert [float(r[0][0, 0]) for r in results] == [0.0, 2.0, 4.0, 6.0]


async def test_a_submit_past_its_deadline_times_out_without_running() -> None:
    run = Recorder()
    b = _batcher(run)
    b.start()
    with pytest.raises(InferenceTimeout):
        await b.submit(None, _rows(1, 2), deadline=asyncio.get_running_loop().time() - 1)
    await b.stop()
    assert run.calls == []


async def test_a_key_can_have_a_smaller_batch_than_max_rows() -> None:
    run = Recorder()
    b = _batcher(run, max_rows_for=lambda key: 64 // key, max_delay_s=0.05)  # key: rows cost `key` each
    b.start()
    await asyncio.gather(*(b.submit(16, _rows(i, 2)) for i in range(5)), *(b.submit(1, _rows(9, 8)) for _ in range(2)))
    await b.stop()
    assert sorted(run.calls) == [2, 4, 4, 16]  # key 16: 4 rows a batch; key 1: both requests together


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_up_to_concurrency_batches_run_at_once_and_each_request_gets_its_rows(concurrency: int) -> None:
    running, peak, lock = 0, 0, threading.Lock()
    together = threading.Barrier(concurrency)  # a run goes on only once `concurrency` runs are in at the same time

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            together.wait(timeout=10)
        except threading.BrokenBarrierError:
            raise RuntimeError(f"{concurrency} runs were never in at the same time") from None
        with lock:
            running -= 1
        return [feeds["x"] * 2.0]

    b = _batcher(run, max_rows=4, max_delay_s=0.0, concurrency=concurrency, timeout_s=60.0)  # the barrier says why
    b.start()
    results = await asyncio.gather(*[b.submit(None, _rows(i, 4)) for i in range(6)])  # one full batch each
    await b.stop()
    assert peak == concurrency
    assert all(np.all(doubled == 2 * i) for i, (doubled,) in enumerate(results))


async def test_stop_waits_for_batches_still_running() -> None:
    run = Recorder()
    run.release.clear()
    b = _batcher(run, max_rows=2, max_delay_s=0.0, concurrency=2)
    b.start()
    pending = [asyncio.ensure_future(b.submit(None, _rows(i, 2))) for i in range(2)]
    await until(lambda: run.entered == [2, 2], "both batches run (held)")
    stopping = asyncio.ensure_future(b.stop())
    await turns()
    assert not stopping.done()  # stop() is waiting for the held runs
    run.release.set()
    await stopping
    assert all(p.done() and not p.exception() for p in pending) and run.calls == [2, 2]


async def test_on_queue_is_told_the_rows_left_waiting_each_time_a_batch_forms() -> None:
    run, left = Recorder(), []
    run.release.clear()  # hold the first run so the next requests queue behind it
    b = _batcher(run, max_rows=4, max_delay_s=0.0, on_queue=left.append)
    b.start()
    first = asyncio.ensure_future(b.submit(None, _rows(1, 4)))
    await until(lambda: run.entered == [4], "the first batch runs (held)")
    queued = [asyncio.ensure_future(b.submit(None, _rows(2, 3))) for _ in range(3)]  # 9 rows: batches of 3
    await turns()
    run.release.set()
    await asyncio.gather(first, *queued)
    await b.stop()
    assert left == [0, 6, 3, 0] and run.calls == [4, 3, 3, 3]


async def test_while_every_slot_is_busy_a_full_batch_forms_at_once_and_runs_next() -> None:
    run, left = Recorder(), []
    run.release.clear()
    b = _batcher(run, max_rows=4, max_delay_s=10.0, on_queue=left.append)
    b.start()
    first = asyncio.ensure_future(b.submit(None, _rows(1, 4)))
    await until(lambda: run.entered == [4], "the first batch runs (held)")
    full = [asyncio.ensure_future(b.submit(None, _rows(2, 2))) for _ in range(2)]  # together they fill a batch
    await until(lambda: len(left) == 2, "the full batch forms while the only slot is held (not after its delay)")
    assert left == [0, 0]  # formed while the only slot is busy: nothing is left waiting
    run.release.set()
    await asyncio.gather(first, *full)
    await b.stop()
    assert run.calls == [4, 4]


async def test_while_every_slot_is_busy_a_batch_that_could_grow_waits_and_at_most_concurrency_are_formed() -> None:
    run, left = Recorder(), []
    run.release.clear()
    b = _batcher(run, max_rows=4, max_delay_s=0.0, on_queue=left.append, concurrency=1)
    b.start()
    first = asyncio.ensure_future(b.submit(None, _rows(1, 4)))
    await until(lambda: run.entered == [4], "the first batch runs (held)")
    ahead = asyncio.ensure_future(b.submit(None, _rows(2, 4)))  # full: formed at once
    await until(lambda: len(left) == 2, "the full batch behind the held one forms")
    later = [asyncio.ensure_future(b.submit(None, _rows(3, 4)))]  # full too, but one batch already waits
    later += [asyncio.ensure_future(b.submit(None, _rows(4, 1))) for _ in range(2)]  # could grow: they wait
    await turns()  # their submits, and any batch they would form
    assert left == [0, 0]
    run.release.set()
    results = await asyncio.gather(first, ahead, *later)
    await b.stop()
    assert run.calls == [4, 4, 4, 2] and [float(r[0][0, 0]) for r in results] == [2.0, 4.0, 6.0, 8.0, 8.0]


async def test_stop_finishes_a_batch_formed_while_every_slot_was_busy() -> None:
    run, left = Recorder(), []
    run.release.clear()
    b = _batcher(run, max_rows=4, max_delay_s=0.0, concurrency=1, on_queue=left.append)
    b.start()
    pending = [asyncio.ensure_future(b.submit(None, _rows(i, 4))) for i in range(2)]  # one runs, one waits formed
    await until(lambda: run.entered == [4] and len(left) == 2, "one batch runs (held) and the other is formed")
    stopping = asyncio.ensure_future(b.stop())
    await turns()
    assert not stopping.done()
    run.release.set()
    await stopping
    assert all(p.done() and not p.exception() for p in pending) and run.calls == [4, 4]


async def test_a_request_whose_deadline_passes_in_a_formed_batch_times_out_and_its_batch_mate_is_answered() -> None:
    run = Recorder()
    run.release.clear()
    b = _batcher(run, max_rows=4, max_delay_s=0.0, concurrency=1)
    b.start()
    first = asyncio.ensure_future(b.submit(None, _rows(1, 4)))
    await until(lambda: run.entered == [4], "the first batch runs (held)")
    loop = asyncio.get_running_loop()
    late = asyncio.ensure_future(b.submit(None, _rows(2, 2), loop.time() + 0.05))
    mate = asyncio.ensure_future(b.submit(None, _rows(3, 2)))  # with `late`, a full batch: formed at once
    with pytest.raises(InferenceTimeout):
        await late
    run.release.set()
    doubled, _ = await mate
    await first
    await b.stop()
    assert run.calls == [4, 4] and np.all(doubled == 6.0)

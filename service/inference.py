"""ModelRunner: one loaded bundle, its batchers (one per graph), and the four operations run through them.

What an operation means (its noise, scoring rules and limits) is runtime/operations.py's plan, the same plan that
LocalModel runs in-process for the Python API and `vae-score`. This module decides only how a plan's graph runs:
through the model's dynamic batchers, one batch-sized chunk after the other, under one deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import numpy as np
from pydantic import BaseModel

from contract.layout import GRAPHS
from runtime.bundle import Bundle
from runtime.operations import Columns, Limits, Operations, Outputs, Plan
from service.answers import INLINE_VALUES, REST_FORMS, AnswerForms, check_answer_size, off_loop
from service.batcher import DynamicBatcher
from service.errors import ClientGone
from service.metrics import Metrics
from service.monitoring import ModelWatch
from service.settings import ServiceSettings

Alive = Callable[[], Awaitable[bool]]  # False once the request's client has gone away
__all__ = ["Alive", "Columns", "ModelRunner", "bucket_rows", "limits"]


def limits(settings: ServiceSettings) -> Limits:
    return Limits(
        max_rows=settings.max_rows,
        max_importance_samples=settings.max_importance_samples,
        max_draws=settings.max_draws,
        batch_max_rows=settings.batch_max_rows,
        batch_max_draws=settings.batch_max_draws,
    )


def bucket_rows(rows: int, max_rows: int) -> int:
    # Pad a batch to the next power of two (up to the batch's row limit), so onnxruntime sees a handful of shapes
    # and its memory arena stops growing; a batch at or above the limit runs at its own size.
    if rows >= max_rows:
        return rows
    return min(max_rows, 1 << (rows - 1).bit_length())


class ModelRunner:
    def __init__(
        self, model: Bundle, settings: ServiceSettings, metrics: Metrics, watch: ModelWatch | None = None
    ) -> None:
        self.model = model
        self.watch = watch  # the model version's monitoring (service/monitoring.py); None: not watched
        self.settings = settings
        self.operations = Operations(model.manifest, limits(settings))
        self.batchers = {graph: self._batcher(graph, metrics) for graph in GRAPHS}
        self._users = 0  # requests holding this runner (see acquire/release)
        self._retired = False
        self._stopping: asyncio.Task[None] | None = None

    @property
    def label(self) -> str:
        return self.operations.label

    def _batcher(self, graph: str, metrics: Metrics) -> DynamicBatcher:
        model, settings, name = self.model, self.settings, self.model.name
        rows_seen, waits = metrics.batch_rows.labels(name, graph), metrics.batch_wait.labels(name, graph)

        def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            return list(model.run(graph, feeds).values())  # in the order of model.outputs(graph)

        def on_flush(rows: int, waited_s: float) -> None:
            rows_seen.observe(rows)
            waits.observe(waited_s)

        batcher = DynamicBatcher(
            run,
            max_rows=settings.batch_max_rows,
            max_delay_s=settings.batch_max_delay_ms / 1000.0,
            max_queued_rows=settings.queue_max_rows,
            timeout_s=settings.request_timeout_s,
            bucket=bucket_rows,
            max_rows_for=lambda key: self.operations.limits.rows_per_run(graph, key),
            on_flush=on_flush,
            on_queue=metrics.queue_rows.labels(name, graph).set,  # once per batch formed, not per request
            concurrency=settings.runs_per_graph(),
        )
        return batcher

    def start(self) -> None:
        for b in self.batchers.values():
            b.start()

    async def stop(self) -> None:
        for b in self.batchers.values():
            await b.stop()

    def acquire(self) -> None:
        self._users += 1

    def release(self) -> None:
        self._users -= 1
        self._stop_if_idle()

    def retire(self) -> None:
        """No new requests will be routed here: stop the batchers once the last request holding it is done."""
        self._retired = True
        self._stop_if_idle()

    def _stop_if_idle(self) -> None:
        if self._retired and self._users == 0 and self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self.stop())

    async def wait_stopped(self) -> None:
        if self._stopping is not None:
            await self._stopping

    async def call(
        self,
        op: str,
        rows: np.ndarray | None,
        params: BaseModel,
        alive: Alive | None = None,
        binary: bool = False,
        forms: AnswerForms = REST_FORMS,
    ) -> tuple[Columns, int]:
        """Run operation `op` on checked rows (None for sample) with validated parameters (contract/requests.py):
        (the answer's columns, the numbers they hold). An answer over VAE_MAX_ANSWER_VALUES (4x that in V2 binary
        outputs) is refused before any work, naming the remedy in the face's words (`forms`); a big one is finished
        off the event loop."""
        size = self.operations.answer_size(op, 0 if rows is None else len(rows), params)
        check_answer_size(size, self.settings.max_answer_values, binary, self.operations.limits.max_rows, forms)
        plan = self.operations.plan(op, rows, params)
        outputs = await self._chunked(plan, alive)
        if self.watch is not None and op == "score" and self.watch.comparable(plan.key, params):
            if plan.rows * self.model.manifest.input_dim <= INLINE_VALUES:
                self.watch.record(outputs, time.time())  # tallied later with others, off the request's path
            else:  # a big request's tally (rows x features of NLL sums) off the loop, as its answer is finished
                self.watch.add(await asyncio.to_thread(self.watch.tally, outputs), time.time())
        if size.values <= INLINE_VALUES:
            return plan.finish(outputs), size.values
        return await off_loop(size.values, plan.finish, outputs), size.values

    async def _chunked(self, plan: Plan, alive: Alive | None) -> Outputs:
        """A plan's rows through its graph's batcher in chunks of at most one batch, one chunk after the other.

        Why: the memory of a run grows with its rows (times K for the scorer), so a chunk bounds it whatever the
        request's size; requests that arrive meanwhile queue between two chunks instead of behind the whole
        request; and a request whose deadline passed or whose client went away stops at the next chunk.
        """
        batcher, names = self.batchers[plan.graph], self.model.outputs(plan.graph)
        step = batcher.max_rows(plan.key)
        if plan.rows <= step:
            return dict(zip(names, await batcher.submit(plan.key, plan.feeds), strict=True))
        deadline = asyncio.get_running_loop().time() + self.settings.request_timeout_s  # for the whole request
        parts: list[list[np.ndarray]] = []
        for start in range(0, plan.rows, step):
            if start and alive is not None and not await alive():
                raise ClientGone(f"the client went away; stopped after {start} of {plan.rows} rows")
            chunk = {name: value[start : start + step] for name, value in plan.feeds.items()}
            parts.append(await batcher.submit(plan.key, chunk, deadline))
        return {name: np.concatenate(columns) for name, columns in zip(names, zip(*parts, strict=True), strict=True)}

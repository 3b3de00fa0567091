"""Request context as plain ASGI middleware (cheaper than BaseHTTPMiddleware): request id, metrics, one log line,
and the last line of defence: no exception leaves as a bare 500.

An exception no handler turned into a response is logged with its traceback and the request id and answered as a
JSON 500 carrying that id; it is not re-raised, so the server keeps the keep-alive connection usable. A client that
went away before its answer is counted as status 499 (nginx's "client closed request"), not as a server error.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import InternalError, error_body
from service.metrics import Metrics

log = logging.getLogger("service.access")
CLIENT_CLOSED = 499
UNKNOWN = "unknown"
ModelLabel = Callable[[Scope, dict[str, Any]], str]  # (scope, path parameters) -> metric label of the model


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics, log_requests: bool, model_label: ModelLabel) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests
        # Label values come only from loaded models and known routes (model_label maps anything else to
        # "unknown"): a client must not be able to add a Prometheus series per made-up model name.
        self.model_label = model_label
        # Request ids: a random per-process prefix and a counter (cheaper than uuid4 on every request).
        self._id_prefix = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        self._counters: dict[tuple[str, str, int], Any] = {}  # cached Prometheus children per label set
        self._histograms: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _header(scope, b"x-request-id") or f"{self._id_prefix}-{next(self._ids)}"
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            status = CLIENT_CLOSED  # nobody to answer; not a server error
        except Exception:
            log.exception("unhandled error request_id=%s method=%s path=%s", request_id, scope["method"], scope["path"])
            if not response_started:
                error = InternalError(f"unexpected error; the service log has it under request id {request_id}")
                await send_with_id(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": error_body(scope["path"], error)})
            status = 500
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            params = scope.get("path_params", {})
            model = self.model_label(scope, params) if params else "-"
            counter = self._counters.get((endpoint, model, status))
            if counter is None:
                counter = self._counters[(endpoint, model, status)] = self.metrics.requests.labels(
                    endpoint, model, str(status)
                )
            counter.inc()
            histogram = self._histograms.get(endpoint)
            if histogram is None:
                histogram = self._histograms[endpoint] = self.metrics.latency.labels(endpoint)
            histogram.observe(elapsed)
            if self.log_requests:
                log.info(
                    "request_id=%s method=%s path=%s status=%d ms=%.2f",
                    request_id,
                    scope["method"],
                    scope["path"],
                    status,
                    elapsed * 1000,
                )


def _header(scope: Scope, name: bytes) -> str | None:
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    for key, value in headers:
        if key == name:
            text = value.decode("latin-1")[:128]
            return text if text.isprintable() else None
    return None


__all__ = ["CLIENT_CLOSED", "UNKNOWN", "RequestContext"]

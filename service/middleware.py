"""Request context as plain ASGI middleware (cheaper than BaseHTTPMiddleware): request id, metrics, one log line."""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics

log = logging.getLogger("service.access")


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics, log_requests: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests
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

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            params = scope.get("path_params", {})
            model = params.get("name") or params.get("model") or "-"  # /v1 names a bundle, /v2 a bundle.op
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


__all__ = ["RequestContext"]

"""Request context as plain ASGI middleware (cheaper than BaseHTTPMiddleware): request id, security headers,
metrics, one log line, and the last line of defence: no exception leaves as a bare 500.

An exception no handler turned into a response is logged with its traceback and the request id and answered as a
JSON 500 carrying that id; it is not re-raised, so the server keeps the keep-alive connection usable. A client that
went away before its answer is counted as status 499 (nginx's "client closed request"), not as a server error.

Request id: a client's X-Request-ID is kept when it is 1-64 characters of `A-Z a-z 0-9 . _ : -` (a UUID, a W3C
traceparent, a counter); anything else (spaces, `=`, quotes, control or non-ASCII characters, longer) is replaced by
a generated id, so a client cannot forge `key=value` fields in the log line. The request's method and path are
logged with control, non-printable and space characters percent-encoded (`GET /x%0Ainjected` stays one line).

Security headers: every response gets `X-Content-Type-Options: nosniff` (the only one on the API's JSON). An HTML
response gets `X-Frame-Options: DENY` and, unless its route set one (the /docs and /redoc pages hash their inline
code, see html_policy), PAGE_POLICY: scripts and styles from this service only, no framing, plugins, <base> or
foreign form targets. A report file (/v1/models/<name>/report/<file>) is written by training, not by this service:
its index.html is served under REPORT_POLICY, a sandbox without scripts that may show only its sibling plots.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import InternalError, error_body
from service.metrics import Metrics

log = logging.getLogger("service.access")
CLIENT_CLOSED = 499
UNKNOWN = "unknown"
ModelLabel = Callable[[Scope, dict[str, Any]], str]  # (scope, path parameters) -> metric label of the model
Header = tuple[bytes, bytes]

REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
# the pages' script and styles are files under /ui-assets; data: is the favicon, blob: the report plots fetched
# with the API key; connect-src (default 'self') lets their script call the API
PAGE_DIRECTIVES = {
    "default-src": "'self'",
    "img-src": "'self' data: blob:",
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}
# a report's index.html: no script at all (sandbox without allow-scripts, opaque origin), its own inline <style>,
# its sibling PNGs; nothing else is fetched, submitted or framed
REPORT_POLICY = (
    "sandbox; default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
REPORT_PATH = re.compile(r"/v1/models/[^/]+/report/[^/]+")
CSP = b"content-security-policy"
NOSNIFF: tuple[Header, ...] = ((b"x-content-type-options", b"nosniff"),)
FRAMELESS: tuple[Header, ...] = (*NOSNIFF, (b"x-frame-options", b"DENY"))


def html_policy(**extra: str) -> str:
    """PAGE_DIRECTIVES with sources added per directive (keyword with _ for -), e.g.
    html_policy(script_src="'self' 'sha256-…'") for a page whose inline script has that hash."""
    directives = dict(PAGE_DIRECTIVES)
    for name, sources in extra.items():
        directives[name.replace("_", "-")] = sources
    return "; ".join(f"{name} {sources}" for name, sources in directives.items())


def inline_hashes(html: str, tag: str) -> str:
    """The CSP hash sources ('sha256-…') of each inline <script> or <style> of a page, as the browser hashes it (the
    text between the tags, UTF-8). Only bare tags, as FastAPI writes them: a tag with attributes is not hashed, so a
    browser refuses its code (fails closed); a <script src=…> needs no hash."""
    bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
    digests = (base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() for body in bodies)
    return " ".join(f"'sha256-{digest}'" for digest in digests)


PAGE_POLICY = html_policy()
PAGE: tuple[Header, ...] = (*FRAMELESS, (CSP, PAGE_POLICY.encode()))
REPORT_HTML: tuple[Header, ...] = (*FRAMELESS, (CSP, REPORT_POLICY.encode()))
REPORT_FILE: tuple[Header, ...] = (*NOSNIFF, (CSP, b"default-src 'none'; sandbox; frame-ancestors 'none'"))


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
        request_id = _request_id(scope) or f"{self._id_prefix}-{next(self._ids)}"
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                headers = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
                headers += _security(scope, headers)
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            status = CLIENT_CLOSED  # nobody to answer; not a server error
        except Exception:
            log.exception(
                "unhandled error request_id=%s method=%s path=%s",
                request_id,
                _loggable(scope["method"]),
                _loggable(scope["path"]),
            )
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
                    _loggable(scope["method"]),
                    _loggable(scope["path"]),
                    status,
                    elapsed * 1000,
                )


def _request_id(scope: Scope) -> str | None:
    """The client's X-Request-ID when it is of the safe charset and length (REQUEST_ID), else None."""
    headers: list[Header] = scope.get("headers", [])
    for key, value in headers:
        if key == b"x-request-id":
            return value.decode("ascii") if REQUEST_ID.fullmatch(value) else None
    return None


def _security(scope: Scope, headers: list[Header]) -> tuple[Header, ...]:
    """The security headers a response gets, by its content type and the request path (module docstring)."""
    html = False
    for key, value in headers:
        if key == b"content-type":
            html = value.startswith(b"text/html")
            break
    path: str = scope["path"]
    if path.startswith("/v1/models/") and "/report/" in path and REPORT_PATH.fullmatch(path):
        return REPORT_HTML if html else REPORT_FILE  # any policy its route set is kept too: both apply
    if not html:
        return NOSNIFF
    return FRAMELESS if any(key == CSP for key, _ in headers) else PAGE


def _loggable(text: str) -> str:
    """text for a log line: unchanged when printable without spaces (the common case), else with each control,
    non-printable or space character percent-encoded as a client would have sent it, so no line or field is forged."""
    if text.isprintable() and " " not in text:
        return text
    return "".join(c if c.isprintable() and c != " " else quote(c, safe="") for c in text)


__all__ = [
    "CLIENT_CLOSED",
    "PAGE_POLICY",
    "REPORT_POLICY",
    "UNKNOWN",
    "RequestContext",
    "html_policy",
    "inline_hashes",
]

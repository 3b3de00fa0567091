"""One exception per failure kind, mapped to HTTP in one table, turned into JSON by one handler."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.errors import LimitExceeded, OperationError


def quoted(text: str) -> str:
    """A caller's string as a message quotes it: cut to 40 characters (a name of megabytes is not echoed back)."""
    return repr(text[:40]) + ("..." if len(text) > 40 else "")


class ServiceError(Exception):
    """A failure reported to the caller as {"error": <class name>, "detail": <sentence>}."""


class InvalidInput(ServiceError):
    """Malformed body, wrong width, non-finite values, empty batch, or a parameter out of range."""


class PayloadTooLarge(ServiceError):
    """Body over max_body_bytes or more rows than max_rows."""


class HeadersTooLarge(ServiceError):
    """The request line and headers passed max_header_bytes (answered by the HTTP parser: service/head_limit.py)."""


class Unauthorized(ServiceError):
    """API keys are configured and the request carries none or a wrong one."""


class Forbidden(ServiceError):
    """The key is valid but its role may not do this (readers changing what is served), or, with no keys, a
    repository change from a client that is not on a loopback address, or a POST from another web origin's page."""


class HostNotAllowed(ServiceError):
    """The Host header names neither a loopback address nor one of VAE_ALLOWED_HOSTS (DNS rebinding)."""


class ModelNotFound(ServiceError):
    """No loaded model has that name (or version)."""


class ServiceNotFound(ServiceError):
    """gRPC's health service was asked about a service name this server does not report on."""


class TooManyWatches(ServiceError):
    """gRPC's health service holds as many Watch streams open in this worker as it keeps."""


class QueueFull(ServiceError):
    """The model's batch queue holds queue_max_rows rows already."""


class Overloaded(ServiceError):
    """The worker holds VAE_MAX_BODY_BYTES_IN_FLIGHT bytes of arriving request bodies already."""


class NotReady(ServiceError):
    """No model is loaded (yet)."""


class InferenceTimeout(ServiceError):
    """The request waited longer than request_timeout_s."""


class BundleRefused(ServiceError):
    """A bundle asked to load failed verification; the version already serving keeps serving."""


class InferenceFailed(ServiceError):
    """onnxruntime raised while running a batch."""


class RouteNotFound(ServiceError):
    """No endpoint has that path."""


class MethodNotAllowed(ServiceError):
    """The path exists but not with that HTTP method."""


class RequestTimeout(ServiceError):
    """The body did not arrive within body_timeout_s."""


class UnsupportedMediaType(ServiceError):
    """The body has a Content-Encoding other than identity or gzip, or a Content-Type the endpoint does not take."""


class ClientGone(ServiceError):
    """The client closed the connection before its answer was ready (counted as 499; nobody reads the body)."""


class WorkerTimeout(ServiceError):
    """A repository request was applied by the worker that took it, but another worker had not followed in time."""


class InternalError(ServiceError):
    """An unexpected exception: logged with its traceback and the request id, answered without internals."""


STATUS: dict[type[ServiceError], int] = {
    InvalidInput: 422,
    PayloadTooLarge: 413,
    HeadersTooLarge: 431,
    Unauthorized: 401,
    Forbidden: 403,
    HostNotAllowed: 400,
    Overloaded: 503,
    ModelNotFound: 404,
    ServiceNotFound: 404,
    TooManyWatches: 503,
    QueueFull: 503,
    NotReady: 503,
    InferenceTimeout: 504,
    InferenceFailed: 500,
    BundleRefused: 422,
    RouteNotFound: 404,
    MethodNotAllowed: 405,
    RequestTimeout: 408,
    UnsupportedMediaType: 415,
    ClientGone: 499,
    WorkerTimeout: 504,
    InternalError: 500,
}
# The same kinds over gRPC (service/grpc_face.py), by grpc.StatusCode name: the Open Inference Protocol's gRPC face
# answers each failure with the code here and the message its REST face gives.
GRPC_STATUS: dict[type[ServiceError], str] = {
    InvalidInput: "INVALID_ARGUMENT",
    PayloadTooLarge: "RESOURCE_EXHAUSTED",
    HeadersTooLarge: "RESOURCE_EXHAUSTED",  # gRPC's own metadata limit answers first
    Unauthorized: "UNAUTHENTICATED",
    Forbidden: "PERMISSION_DENIED",
    HostNotAllowed: "PERMISSION_DENIED",
    Overloaded: "UNAVAILABLE",
    ModelNotFound: "NOT_FOUND",
    ServiceNotFound: "NOT_FOUND",  # what grpc.health.v1's Check answers an unknown service
    # gRFC A17: a client whose health Watch is UNIMPLEMENTED checks no health and takes the server as healthy; any
    # other code would make it take the server as down
    TooManyWatches: "UNIMPLEMENTED",
    QueueFull: "UNAVAILABLE",
    NotReady: "UNAVAILABLE",
    InferenceTimeout: "UNAVAILABLE",  # the service's own time limit, not the client's deadline: gRPC's 504
    InferenceFailed: "INTERNAL",
    BundleRefused: "FAILED_PRECONDITION",
    RouteNotFound: "UNIMPLEMENTED",
    MethodNotAllowed: "UNIMPLEMENTED",
    RequestTimeout: "DEADLINE_EXCEEDED",
    UnsupportedMediaType: "INVALID_ARGUMENT",
    ClientGone: "CANCELLED",
    WorkerTimeout: "DEADLINE_EXCEEDED",  # the change was made here, another worker did not follow: not to be resent
    InternalError: "INTERNAL",
}
RETRY_AFTER_S = {QueueFull: "1", Overloaded: "1", NotReady: "5"}  # REST's Retry-After, in seconds
# gRPC's trailing `retry-after`: on every kind it answers UNAVAILABLE
GRPC_RETRY_AFTER_S = {**RETRY_AFTER_S, InferenceTimeout: "1"}


def from_operation_error(exc: OperationError) -> ServiceError:
    """The bundle runtime's refusals (runtime/errors.py) in the service's kinds."""
    return PayloadTooLarge(str(exc)) if isinstance(exc, LimitExceeded) else InvalidInput(str(exc))


def v2_message(exc: ServiceError) -> str:
    """The sentence the Open Inference Protocol's faces answer: {"error": ...} over REST, the details over gRPC."""
    return f"{type(exc).__name__}: {exc}"


def error_body(path: str, exc: ServiceError) -> bytes:
    """{"error": <kind>, "detail": <sentence>}; under /v2/ the Open Inference Protocol's {"error": <sentence>}."""
    if path.startswith("/v2/"):
        return orjson.dumps({"error": v2_message(exc)})
    return orjson.dumps({"error": type(exc).__name__, "detail": str(exc)})


def error_response(path: str, exc: ServiceError, headers: Mapping[str, str] | None = None) -> Response:
    headers = dict(headers or {})
    if type(exc) in RETRY_AFTER_S:
        headers["Retry-After"] = RETRY_AFTER_S[type(exc)]
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, RequestTimeout):
        headers["Connection"] = "close"  # the rest of the body may still arrive: this connection is done
    body = error_body(path, exc)
    return Response(body, status_code=STATUS[type(exc)], headers=headers or None, media_type="application/json")


async def on_service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return error_response(request.url.path, exc)


async def on_operation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OperationError)
    return error_response(request.url.path, from_operation_error(exc))


async def on_http_error(request: Request, exc: Exception) -> Response:
    # Starlette's own 404 (no such path) and 405 (wrong method), in the service's error shape, Allow kept
    assert isinstance(exc, StarletteHTTPException)
    path = request.url.path
    error: ServiceError
    if exc.status_code == 405:
        error = MethodNotAllowed(f"{request.method} is not allowed on {path}")
    elif exc.status_code == 404:
        error = RouteNotFound(f"no endpoint at {path}; the API is listed at /docs and /openapi.json")
    else:  # not raised by the service today; keep the status, in the same shape
        body = orjson.dumps({"error": "HTTPError", "detail": str(exc.detail)})
        return Response(body, status_code=exc.status_code, headers=exc.headers, media_type="application/json")
    return error_response(path, error, exc.headers)


async def on_validation_error(request: Request, exc: Exception) -> Response:
    # FastAPI's own 422s (path parameters) in the same {"error", "detail"} shape as every other error.
    assert isinstance(exc, RequestValidationError)
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return error_response(request.url.path, InvalidInput("; ".join(parts)))

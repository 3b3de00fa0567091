"""One exception per failure kind, mapped to HTTP in one table, turned into JSON by one handler."""

from __future__ import annotations

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response


class ServiceError(Exception):
    """A failure reported to the caller as {"error": <class name>, "detail": <sentence>}."""


class InvalidInput(ServiceError):
    """Malformed body, wrong width, non-finite values, empty batch, or a parameter out of range."""


class PayloadTooLarge(ServiceError):
    """Body over max_body_bytes or more rows than max_rows."""


class Unauthorized(ServiceError):
    """API keys are configured and the request carries none or a wrong one."""


class ModelNotFound(ServiceError):
    """No loaded model has that name (or version)."""


class QueueFull(ServiceError):
    """The model's batch queue holds queue_max_rows rows already."""


class NotReady(ServiceError):
    """No model is loaded (yet)."""


class InferenceTimeout(ServiceError):
    """The request waited longer than request_timeout_s."""


class BundleRefused(ServiceError):
    """A bundle asked to load failed verification; the version already serving keeps serving."""


class InferenceFailed(ServiceError):
    """onnxruntime raised while running a batch."""


STATUS: dict[type[ServiceError], int] = {
    InvalidInput: 422,
    PayloadTooLarge: 413,
    Unauthorized: 401,
    ModelNotFound: 404,
    QueueFull: 503,
    NotReady: 503,
    InferenceTimeout: 504,
    InferenceFailed: 500,
    BundleRefused: 422,
}
RETRY_AFTER_S = {QueueFull: "1", NotReady: "5"}


def error_response(kind: str, detail: str, status: int, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps({"error": kind, "detail": detail})
    return Response(body, status_code=status, headers=headers, media_type="application/json")


async def on_service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    headers = {"Retry-After": RETRY_AFTER_S[type(exc)]} if type(exc) in RETRY_AFTER_S else None
    if isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    if request.url.path.startswith("/v2/"):  # the Open Inference Protocol's error shape
        body = orjson.dumps({"error": f"{type(exc).__name__}: {exc}"})
        return Response(body, status_code=STATUS[type(exc)], headers=headers, media_type="application/json")
    return error_response(type(exc).__name__, str(exc), STATUS[type(exc)], headers)


async def on_validation_error(request: Request, exc: Exception) -> Response:
    # FastAPI's own 422s (path parameters) in the same {"error", "detail"} shape as every other error.
    assert isinstance(exc, RequestValidationError)
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return error_response("InvalidInput", "; ".join(parts), 422)

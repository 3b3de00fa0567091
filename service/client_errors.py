"""The client's exceptions: one tree, and one table from each of the service's error kinds (service/errors.py's
STATUS, the `error` field of an error body) to the exception it raises. Kinds a caller acts on have their own class;
the rest raise the general class of their status: RequestRefused (4xx) or ServerError (5xx). Every exception carries
the status, the kind and the service's sentence (detail). Imports nothing of the service (tests/service/test_client.py
checks the table against STATUS).
"""

from __future__ import annotations


class VAEClientError(Exception):
    """An error response from the service (or, for a check the client makes first, the one it would give)."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(f"{status} {kind}: {detail}")
        self.status, self.kind, self.detail = status, kind, detail


class RequestRefused(VAEClientError):
    """4xx: the service refused the request. Raised as is for a Host it does not serve (HostNotAllowed), a method a
    path does not take (MethodNotAllowed), a body that stalled (RequestTimeout) or of a type it does not read
    (UnsupportedMediaType), a bundle that failed verification (BundleRefused), a connection closed before the
    answer (ClientGone) and request headers over the service's limit (HeadersTooLarge, 431); the subclasses below
    for the rest."""


class InvalidInput(RequestRefused):
    """422: the rows or a parameter; the detail names the field and, for data, the row and column."""


class PayloadTooLarge(RequestRefused):
    """413: a body, rows, draws or an answer over the service's limits."""


class Unauthorized(RequestRefused):
    """401: keys are configured and the request carries none or a wrong one."""


class Forbidden(RequestRefused):
    """The key's role may not do this (a reader changing what is served), or a request a browser page sent."""


class NotFound(RequestRefused):
    """404: no endpoint at that path (RouteNotFound)."""


class ModelNotFound(NotFound):
    """404: no loaded model has that name (or version)."""


class ServerError(VAEClientError):
    """5xx: the service failed to answer. Raised as is when a batch failed in onnxruntime (InferenceFailed), for an
    unexpected error (InternalError, logged with the request id) and when another worker did not follow a
    repository change in time (WorkerTimeout); the subclasses below for the rest."""


class ServiceUnavailable(ServerError):
    """Queue full or not ready, still after the client's retries: retry after `retry_after` seconds."""

    retry_after: float | None = None


class InferenceTimeout(ServerError):
    """504: the request waited in the service longer than its request timeout."""


class ModelChanged(VAEClientError):
    """A new version was swapped in during one call (between its chunks, or between reading the model's feature
    names and scoring): no answer mixes versions; call again."""


KINDS: dict[str, type[VAEClientError]] = {
    "InvalidInput": InvalidInput,
    "PayloadTooLarge": PayloadTooLarge,
    "Unauthorized": Unauthorized,
    "Forbidden": Forbidden,
    "HostNotAllowed": RequestRefused,
    "ModelNotFound": ModelNotFound,
    "RouteNotFound": NotFound,
    "ServiceNotFound": NotFound,  # gRPC's health service only (as TooManyWatches); here for completeness
    "TooManyWatches": ServiceUnavailable,
    "MethodNotAllowed": RequestRefused,
    "RequestTimeout": RequestRefused,
    "UnsupportedMediaType": RequestRefused,
    "HeadersTooLarge": RequestRefused,
    "BundleRefused": RequestRefused,
    "ClientGone": RequestRefused,
    "QueueFull": ServiceUnavailable,
    "Overloaded": ServiceUnavailable,
    "NotReady": ServiceUnavailable,
    "InferenceTimeout": InferenceTimeout,
    "InferenceFailed": ServerError,
    "InternalError": ServerError,
    "WorkerTimeout": ServerError,
}


def error_for(status: int, kind: str, detail: str) -> VAEClientError:
    """The exception for an error answer: by its kind, else (a kind this client does not know, a proxy's answer) by
    its status."""
    cls = KINDS.get(kind) or (ServerError if status >= 500 else RequestRefused if status >= 400 else VAEClientError)
    return cls(status, kind or "HTTPError", detail)

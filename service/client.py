"""VAEClient and AsyncVAEClient: the service's API from Python, numpy (or a DataFrame) in and numpy out. Imports only
httpx, numpy and the contract. encode, decode, sample and score are the contract's Python face (contract/face.py:
the request models' parameters, plus `model`); the flows they drive are in service/client_flows.py. Error answers
raise the exceptions of service/client_errors.py, one per error kind of the service (a general one per status class
for the kinds a caller does not act on), exported here.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx

from contract.face import Face
from service.client_errors import (
    KINDS,
    Forbidden,
    InferenceTimeout,
    InvalidInput,
    ModelChanged,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    RequestRefused,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
    VAEClientError,
)
from service.client_flows import Flow, _adrive, _Context, _drive, _get, _headers, _operate, _sample

__all__ = [
    "KINDS",
    "AsyncVAEClient",
    "Forbidden",
    "InferenceTimeout",
    "InvalidInput",
    "ModelChanged",
    "ModelNotFound",
    "NotFound",
    "PayloadTooLarge",
    "RequestRefused",
    "ServerError",
    "ServiceUnavailable",
    "Unauthorized",
    "VAEClient",
    "VAEClientError",
]
R = TypeVar("R")


class _Operations(Face[R, R]):
    """The service's operations, written once for both clients: R is what a call gives, the answer (VAEClient) or an
    awaitable of it (AsyncVAEClient). `model=None` uses the service's default model; `seed=None` its fixed default
    seed (the same request gives the same numbers), `fresh_noise=True` fresh entropy. With explain, score's answer
    also holds feature_contributions: feature name -> its (n,) column of feature_nll."""

    _ctx: _Context

    @abstractmethod
    def _run(self, flow: Flow[dict[str, Any]]) -> R:
        """Drive a flow to its answer: blocking (VAEClient) or as an awaitable (AsyncVAEClient)."""

    def models(self) -> R:
        """GET /v1/models: the loaded models, the default model, refused bundles."""
        return self._run(_get(self._ctx, "/v1/models"))

    def _call(self, op: str, rows: Any, params: dict[str, Any], model: str | None) -> R:
        return self._run(_operate(self._ctx, model, op, rows, params))

    def _sample(self, params: dict[str, Any], model: str | None) -> R:
        return self._run(_sample(self._ctx, model, params))


class VAEClient(_Operations[dict[str, Any]]):
    """Blocking client.

    Rows are a numpy array (or anything np.asarray takes) or a DataFrame, whose columns are matched to the model's
    feature names. More rows than `max_rows_per_request` (the service's VAE_MAX_ROWS), or than fit in an answer of
    `max_values_per_request` numbers (VAE_MAX_ANSWER_VALUES), go as several requests, the answers concatenated in
    order. A 503 (queue full, not ready) is retried `retries` times after Retry-After
    seconds (at most `max_retry_wait_s`), then raised as ServiceUnavailable."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        max_rows_per_request: int = 8192,
        max_draws_per_request: int = 1 << 20,
        max_values_per_request: int = 1 << 20,
        retries: int = 3,
        max_retry_wait_s: float = 30.0,
    ) -> None:
        self._ctx = _Context(
            max_rows_per_request, max_draws_per_request, retries, max_retry_wait_s, max_values_per_request
        )
        self._http = httpx.Client(base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport)

    def __enter__(self) -> VAEClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, flow: Flow[dict[str, Any]]) -> dict[str, Any]:
        return _drive(flow, lambda r: self._http.request(r.method, r.path, json=r.body))


class AsyncVAEClient(_Operations[Coroutine[Any, Any, dict[str, Any]]]):
    """asyncio client: the same methods and arguments as VAEClient, each returning an awaitable."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_rows_per_request: int = 8192,
        max_draws_per_request: int = 1 << 20,
        max_values_per_request: int = 1 << 20,
        retries: int = 3,
        max_retry_wait_s: float = 30.0,
    ) -> None:
        self._ctx = _Context(
            max_rows_per_request, max_draws_per_request, retries, max_retry_wait_s, max_values_per_request
        )
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncVAEClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _run(self, flow: Flow[dict[str, Any]]) -> Coroutine[Any, Any, dict[str, Any]]:
        return _adrive(flow, lambda r: self._http.request(r.method, r.path, json=r.body))

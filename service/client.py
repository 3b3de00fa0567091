"""VAEClient and AsyncVAEClient: the service's API from Python, numpy (or a DataFrame) in and numpy out. Imports only
httpx, numpy and the contract. Error responses become typed exceptions named like the service's error kinds
(defined in service/client_flows.py with the flows both clients drive, and exported here).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Coroutine
from typing import Any, Generic

import httpx

from service.client_flows import (
    Flow,
    Forbidden,
    InferenceTimeout,
    InvalidInput,
    ModelChanged,
    ModelNotFound,
    PayloadTooLarge,
    R,
    ServiceUnavailable,
    Unauthorized,
    VAEClientError,
    _adrive,
    _Context,
    _drive,
    _get,
    _headers,
    _noise,
    _operate,
    _sample,
)

__all__ = [
    "AsyncVAEClient",
    "Forbidden",
    "InferenceTimeout",
    "InvalidInput",
    "ModelChanged",
    "ModelNotFound",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "Unauthorized",
    "VAEClient",
    "VAEClientError",
]


class _Operations(ABC, Generic[R]):
    """The service's operations, written once: R is what a call gives, the answer (VAEClient) or an awaitable of
    it (AsyncVAEClient). `model=None` uses the service's default model; `seed=None` its fixed default seed (the
    same request gives the same numbers), `fresh_noise=True` fresh entropy."""

    _ctx: _Context

    @abstractmethod
    def _run(self, flow: Flow[dict[str, Any]]) -> R:
        """Drive a flow to its answer: blocking (VAEClient) or as an awaitable (AsyncVAEClient)."""

    def models(self) -> R:
        """GET /v1/models: the loaded models, the default model, refused bundles."""
        return self._run(_get(self._ctx, "/v1/models"))

    def encode(
        self, x: Any, *, samples: int = 0, seed: int | None = None, fresh_noise: bool = False, model: str | None = None
    ) -> R:
        """mean, log_var (n, d) (+ scale_tril when full, + z (n, samples, d) when samples > 0)."""
        params = {"samples": samples, **_noise(seed, fresh_noise)}
        return self._run(_operate(self._ctx, model, "encode", "inputs", x, params, draws_per_row=samples))

    def decode(
        self,
        z: Any,
        *,
        sample: bool = False,
        seed: int | None = None,
        fresh_noise: bool = False,
        model: str | None = None,
    ) -> R:
        """mean, log_var (n, D) of p(x | z) in raw units (+ x when sample)."""
        params = {"sample": sample, **_noise(seed, fresh_noise)}
        return self._run(_operate(self._ctx, model, "decode", "latents", z, params))

    def sample(
        self,
        n: int = 16,
        *,
        temperature: float = 1.0,
        seed: int | None = None,
        fresh_noise: bool = False,
        return_latents: bool = False,
        noise: bool = False,
        model: str | None = None,
    ) -> R:
        """samples (n, D): decoder means of prior draws (+ latents, + decoder noise when noise)."""
        params = {"temperature": temperature, **_noise(seed, fresh_noise), "return_latents": return_latents}
        return self._run(_sample(self._ctx, model, n, {**params, "noise": noise}))

    def score(
        self,
        x: Any,
        *,
        importance_samples: int | None = None,
        seed: int | None = None,
        fresh_noise: bool = False,
        explain: bool = False,
        threshold_quantile: float | None = None,
        model: str | None = None,
    ) -> R:
        """elbo, reconstruction, kl, log_likelihood, anomaly_score, percentile, p_value, is_anomaly (n,), threshold,
        importance_samples; with explain also feature_nll (n, D) and feature_contributions: feature name -> (n,)."""
        params = {
            "importance_samples": importance_samples,
            **_noise(seed, fresh_noise),
            "explain": explain,
            "threshold_quantile": threshold_quantile,
        }
        params = {k: v for k, v in params.items() if v is not None}  # absent fields take the service's defaults
        draws = importance_samples or 1
        return self._run(_operate(self._ctx, model, "score", "inputs", x, params, draws_per_row=draws, explain=explain))


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

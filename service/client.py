"""VAEClient and AsyncVAEClient: the service's API from Python, numpy in and out (imports neither torch nor
onnxruntime). Error responses become typed exceptions named like the service's error kinds."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np


class VAEClientError(Exception):
    """An error response from the service."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(f"{status} {kind}: {detail}")
        self.status, self.kind, self.detail = status, kind, detail


class InvalidInput(VAEClientError): ...


class PayloadTooLarge(VAEClientError): ...


class Unauthorized(VAEClientError): ...


class ModelNotFound(VAEClientError): ...


class ServiceUnavailable(VAEClientError):
    """Queue full or not ready: retry after `retry_after` seconds."""

    retry_after: float | None = None


class InferenceTimeout(VAEClientError): ...


_KINDS: dict[str, type[VAEClientError]] = {
    "InvalidInput": InvalidInput,
    "PayloadTooLarge": PayloadTooLarge,
    "Unauthorized": Unauthorized,
    "ModelNotFound": ModelNotFound,
    "QueueFull": ServiceUnavailable,
    "NotReady": ServiceUnavailable,
    "InferenceTimeout": InferenceTimeout,
}
_ARRAYS = {
    "mean",
    "log_var",
    "scale_tril",
    "z",
    "x",
    "samples",
    "latents",
    "elbo",
    "reconstruction",
    "kl",
    "log_likelihood",
    "anomaly_score",
    "percentile",
    "p_value",
    "is_anomaly",
    "feature_nll",
}


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        kind, detail = str(body.get("error", "")), str(body.get("detail", response.text))
    except ValueError:
        kind, detail = "", response.text
    error = _KINDS.get(kind, VAEClientError)(response.status_code, kind or "HTTPError", detail)
    if isinstance(error, ServiceUnavailable) and "retry-after" in response.headers:
        error.retry_after = float(response.headers["retry-after"])
    raise error


def _decode(response: httpx.Response) -> dict[str, Any]:
    _raise_for_error(response)
    body: dict[str, Any] = response.json()
    return {k: (np.asarray(v) if k in _ARRAYS else v) for k, v in body.items()}


def _rows(a: Any) -> list[list[float]]:
    arr = np.asarray(a, dtype=np.float64)
    return (arr[None, :] if arr.ndim == 1 else arr).tolist()  # type: ignore[no-any-return]


def _path(model: str | None, op: str) -> str:
    return f"/v1/{op}" if model is None else f"/v1/models/{model}/{op}"


def _noise(seed: int | None, fresh_noise: bool) -> dict[str, Any]:
    # seed None: the service's fixed default seed (the same numbers every call); fresh_noise: fresh entropy
    return {"seed": seed, "fresh_noise": True} if fresh_noise else {"seed": seed}


def _encode_body(x: Any, samples: int, seed: int | None, fresh_noise: bool) -> dict[str, Any]:
    return {"inputs": _rows(x), "samples": samples, **_noise(seed, fresh_noise)}


def _decode_body(z: Any, sample: bool, seed: int | None, fresh_noise: bool) -> dict[str, Any]:
    return {"latents": _rows(z), "sample": sample, **_noise(seed, fresh_noise)}


def _sample_body(
    n: int, temperature: float, seed: int | None, return_latents: bool, noise: bool, fresh_noise: bool
) -> dict[str, Any]:
    return {
        "n": n,
        "temperature": temperature,
        **_noise(seed, fresh_noise),
        "return_latents": return_latents,
        "noise": noise,
    }


def _score_body(
    x: Any,
    importance_samples: int | None,
    seed: int | None,
    explain: bool,
    threshold_quantile: float | None,
    fresh_noise: bool,
) -> dict[str, Any]:
    body = {
        "inputs": _rows(x),
        "importance_samples": importance_samples,
        **_noise(seed, fresh_noise),
        "explain": explain,
        "threshold_quantile": threshold_quantile,
    }
    return {k: v for k, v in body.items() if v is not None}  # absent fields take the service's defaults


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class VAEClient:
    """Blocking client. `model=None` uses the service's default model; `seed=None` its fixed default seed (the same
    request gives the same numbers), `fresh_noise=True` fresh entropy."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport)

    def __enter__(self) -> VAEClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def models(self) -> dict[str, Any]:
        response = self._http.get("/v1/models")
        _raise_for_error(response)
        return response.json()  # type: ignore[no-any-return]

    def encode(
        self,
        x: Any,
        *,
        samples: int = 0,
        seed: int | None = None,
        fresh_noise: bool = False,
        model: str | None = None,
    ) -> dict[str, Any]:
        return self._post(model, "encode", _encode_body(x, samples, seed, fresh_noise))

    def decode(
        self,
        z: Any,
        *,
        sample: bool = False,
        seed: int | None = None,
        fresh_noise: bool = False,
        model: str | None = None,
    ) -> dict[str, Any]:
        return self._post(model, "decode", _decode_body(z, sample, seed, fresh_noise))

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
    ) -> dict[str, Any]:
        return self._post(model, "sample", _sample_body(n, temperature, seed, return_latents, noise, fresh_noise))

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
    ) -> dict[str, Any]:
        body = _score_body(x, importance_samples, seed, explain, threshold_quantile, fresh_noise)
        return self._post(model, "score", body)

    def _post(self, model: str | None, op: str, body: dict[str, Any]) -> dict[str, Any]:
        return _decode(self._http.post(_path(model, op), json=body))


class AsyncVAEClient:
    """asyncio client with the same methods as VAEClient."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncVAEClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def models(self) -> dict[str, Any]:
        response = await self._http.get("/v1/models")
        _raise_for_error(response)
        return response.json()  # type: ignore[no-any-return]

    async def encode(
        self,
        x: Any,
        *,
        samples: int = 0,
        seed: int | None = None,
        fresh_noise: bool = False,
        model: str | None = None,
    ) -> dict[str, Any]:
        return await self._post(model, "encode", _encode_body(x, samples, seed, fresh_noise))

    async def decode(
        self,
        z: Any,
        *,
        sample: bool = False,
        seed: int | None = None,
        fresh_noise: bool = False,
        model: str | None = None,
    ) -> dict[str, Any]:
        return await self._post(model, "decode", _decode_body(z, sample, seed, fresh_noise))

    async def sample(
        self,
        n: int = 16,
        *,
        temperature: float = 1.0,
        seed: int | None = None,
        fresh_noise: bool = False,
        return_latents: bool = False,
        noise: bool = False,
        model: str | None = None,
    ) -> dict[str, Any]:
        return await self._post(model, "sample", _sample_body(n, temperature, seed, return_latents, noise, fresh_noise))

    async def score(
        self,
        x: Any,
        *,
        importance_samples: int | None = None,
        seed: int | None = None,
        fresh_noise: bool = False,
        explain: bool = False,
        threshold_quantile: float | None = None,
        model: str | None = None,
    ) -> dict[str, Any]:
        body = _score_body(x, importance_samples, seed, explain, threshold_quantile, fresh_noise)
        return await self._post(model, "score", body)

    async def _post(self, model: str | None, op: str, body: dict[str, Any]) -> dict[str, Any]:
        return _decode(await self._http.post(_path(model, op), json=body))

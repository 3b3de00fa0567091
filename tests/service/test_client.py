"""service.client: numpy in and out, typed exceptions, no torch or onnxruntime import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from service import client as c
from tests.service.conftest import serving


def _mock(status: int, body: dict, headers: dict | None = None) -> httpx.MockTransport:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=body, headers=headers)

    transport = httpx.MockTransport(handler)
    transport.seen = seen  # type: ignore[attr-defined]
    return transport


@pytest.mark.parametrize(
    ("status", "kind", "exc"),
    [
        (422, "InvalidInput", c.InvalidInput),
        (413, "PayloadTooLarge", c.PayloadTooLarge),
        (401, "Unauthorized", c.Unauthorized),
        (404, "ModelNotFound", c.ModelNotFound),
        (503, "QueueFull", c.ServiceUnavailable),
        (504, "InferenceTimeout", c.InferenceTimeout),
        (500, "Weird", c.VAEClientError),
    ],
)
def test_error_responses_become_typed_exceptions(status: int, kind: str, exc: type) -> None:
    transport = _mock(status, {"error": kind, "detail": "why"}, {"Retry-After": "1"})
    with c.VAEClient("http://x", transport=transport) as client, pytest.raises(exc) as info:
        client.score(np.zeros((1, 3)))
    assert info.value.status == status and info.value.detail == "why"
    if exc is c.ServiceUnavailable:
        assert info.value.retry_after == 1.0


def test_requests_carry_the_api_key_and_a_columnar_body() -> None:
    transport = _mock(200, {"model": "m", "version": 1, "mean": [[1.0, 2.0]], "log_var": [[0.0, 0.0]]})
    with c.VAEClient("http://x", api_key="k", transport=transport) as client:
        out = client.encode(np.array([0.5, 1.5]), model="m", seed=3)
    request = transport.seen[0]  # type: ignore[attr-defined]
    assert request.url.path == "/v1/models/m/encode" and request.headers["authorization"] == "Bearer k"
    assert json.loads(request.content) == {"inputs": [[0.5, 1.5]], "samples": 0, "seed": 3}
    assert isinstance(out["mean"], np.ndarray) and out["mean"].shape == (1, 2) and out["model"] == "m"


def test_fresh_noise_is_sent_only_when_asked_and_p_value_comes_back_as_an_array() -> None:
    transport = _mock(200, {"model": "m", "version": 1, "anomaly_score": [1.0], "p_value": [0.5], "threshold": 2.0})
    with c.VAEClient("http://x", transport=transport) as client:
        out = client.score(np.zeros(3), model="m")
        client.score(np.zeros(3), fresh_noise=True, model="m")
        client.sample(2, fresh_noise=True, model="m")
    bodies = [json.loads(r.content) for r in transport.seen]  # type: ignore[attr-defined]
    assert bodies[0] == {"inputs": [[0.0, 0.0, 0.0]], "explain": False}  # no seed: the service's fixed default
    assert bodies[1]["fresh_noise"] is True and "seed" not in bodies[1]
    assert bodies[2]["fresh_noise"] is True and bodies[2]["seed"] is None
    assert isinstance(out["p_value"], np.ndarray) and out["threshold"] == 2.0


@pytest.mark.anyio
async def test_async_client_against_the_app(serving_repository: Path) -> None:
    async with serving(serving_repository) as http:
        transport = httpx.ASGITransport(app=http.app)  # type: ignore[attr-defined]
        async with c.AsyncVAEClient("http://testserver", transport=transport) as client:
            scored = await client.score(np.full((3, 64), 0.2), seed=1, model="digits-diag")
            with pytest.raises(c.InvalidInput, match="rows must have 64"):
                await client.score(np.zeros((1, 2)), model="digits-diag")
    assert scored["elbo"].shape == (3,) and scored["is_anomaly"].dtype == bool


def test_client_imports_neither_torch_nor_onnxruntime() -> None:
    code = "import sys, service.client; print('torch' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"

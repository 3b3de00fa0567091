"""End to end over a real socket: `vae-train` writes a bundle, `vae-serve` (uvicorn) serves it on 127.0.0.1."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from service.client import AsyncVAEClient, InvalidInput, ModelNotFound, VAEClient
from training.data import load_table


def test_blocking_client_against_a_real_server(live_server: str) -> None:
    x = load_table("builtin:digits").x[:5]
    with VAEClient(live_server) as client:
        assert client.models()["models"][0]["name"] == "e2e"
        emb = client.encode(x, samples=2, seed=1)
        assert emb["mean"].shape == (5, 3) and emb["z"].shape == (5, 2, 3)
        scores = client.score(x, seed=3, explain=True)
        again = client.score(x, seed=3, explain=True)
        np.testing.assert_array_equal(scores["elbo"], again["elbo"])
        assert scores["feature_nll"].shape == (5, 64) and scores["is_anomaly"].dtype == bool
        assert client.sample(4, seed=0)["samples"].shape == (4, 64)
        assert client.decode(emb["mean"])["mean"].shape == (5, 64)
        with pytest.raises(InvalidInput, match="rows must have 64 values"):
            client.score(x[:, :10])
        with pytest.raises(ModelNotFound):
            client.encode(x, model="missing")


@pytest.mark.anyio
async def test_async_client_with_concurrent_requests_against_a_real_server(live_server: str) -> None:
    import asyncio

    x = load_table("builtin:digits").x[:50]
    async with AsyncVAEClient(live_server) as client:
        results = await asyncio.gather(*[client.score(x[i : i + 1 + i % 5], seed=i) for i in range(40)])
    assert [r["elbo"].shape[0] for r in results] == [1 + i % 5 for i in range(40)]


def test_server_answers_request_ids_and_metrics_over_the_socket(live_server: str) -> None:
    r = httpx.post(f"{live_server}/v1/score", json={"inputs": [[0.0] * 64]}, headers={"X-Request-ID": "e2e-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "e2e-1"
    assert "vae_requests_total" in httpx.get(f"{live_server}/metrics").text

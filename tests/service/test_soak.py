"""Soak: a real vae-serve under a bounded stream of mixed requests of every row count keeps its RSS flat.

Batches are padded to powers of two so onnxruntime sees a handful of shapes and its arena stops growing
(DESIGN 5). The arena's high-water mark follows the largest run it has seen, so the warm-up sends every
graph its largest batch (1,024 rows, K = 32 for score) before some mixed traffic; then 1,200 more mixed
requests must not add memory. Seen here without that explicit warm-up: 99 MiB at start, 191 MiB once the
random traffic had hit the largest shapes, then +1.3 MiB over the next 3,600 requests.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np

from tests.service.conftest import vae_serve
from training.data import load_table

DIGITS = load_table("builtin:digits").x
CONCURRENCY = 8


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def _traffic(base: str, requests: int, seed: int, latent_dims: dict[str, int]) -> None:
    rng = np.random.default_rng(seed)
    models = sorted(latent_dims)

    async def one(client: httpx.AsyncClient, i: int) -> None:
        model, rows = models[i % len(models)], int(rng.integers(1, 300))
        x = DIGITS[rng.integers(0, len(DIGITS), rows)].tolist()
        op = ("encode", "decode", "sample", "score")[i % 4]
        body: dict[str, object] = {"inputs": x}
        if op == "decode":
            body = {"latents": rng.standard_normal((rows, latent_dims[model])).tolist()}
        elif op == "sample":
            body = {"n": rows, "seed": i}
        elif op == "score":
            body = {"inputs": x, "importance_samples": int(rng.integers(1, 33)), "seed": i}
        r = await client.post(f"/v1/models/{model}/{op}", json=body)
        assert r.status_code == 200, (op, rows, r.text[:300])

    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        for start in range(0, requests, CONCURRENCY):
            await asyncio.gather(*(one(client, i) for i in range(start, min(start + CONCURRENCY, requests))))


def test_rss_stays_flat_over_a_soak_of_mixed_shapes(serving_repository: Path) -> None:
    with vae_serve(serving_repository) as (base, proc):
        latent = {m["name"]: m["latent_dim"] for m in httpx.get(f"{base}/v1/models").json()["models"]}
        for model, d in latent.items():  # warm-up: the largest run of every graph, then mixed traffic
            for op, body in (
                ("encode", {"inputs": DIGITS[:1024].tolist()}),
                ("decode", {"latents": np.zeros((1024, d)).tolist()}),
                ("sample", {"n": 1024, "seed": 0}),
                ("score", {"inputs": DIGITS[:1024].tolist(), "importance_samples": 32, "seed": 0}),
            ):
                assert httpx.post(f"{base}/v1/models/{model}/{op}", json=body, timeout=60).status_code == 200
        asyncio.run(_traffic(base, 400, seed=0, latent_dims=latent))
        warm = _rss_mib(proc.pid)
        readings = []
        for round_ in range(3):
            asyncio.run(_traffic(base, 400, seed=round_ + 1, latent_dims=latent))
            readings.append(_rss_mib(proc.pid))
    # Retaining each request's rows would add about 45 MiB over these 1,200 requests.
    assert max(readings) - warm < 15, (warm, readings)
    assert readings[-1] - readings[0] < 10, (warm, readings)

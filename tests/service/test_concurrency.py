"""200 concurrent mixed-size requests: all answered, each equal to the same request sent alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from tests.service.conftest import serving
from training.data import load_table

pytestmark = pytest.mark.anyio
DIGITS = load_table("builtin:digits").x


def _requests(n: int) -> list[tuple[str, dict]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        rows = DIGITS[rng.integers(0, len(DIGITS), size=int(rng.choice([1, 2, 7, 33, 100])))].tolist()
        kind = i % 4
        if kind == 0:
            out.append(("/v1/models/digits-diag/score", {"inputs": rows, "seed": i, "importance_samples": 4}))
        elif kind == 1:
            out.append(("/v1/models/digits-full/score", {"inputs": rows, "seed": i, "importance_samples": 1 + i % 3}))
        elif kind == 2:
            out.append(("/v1/models/digits-full/encode", {"inputs": rows, "samples": 2, "seed": i}))
        else:
            out.append(("/v1/models/digits-diag/sample", {"n": len(rows), "seed": i, "noise": True}))
    return out


async def test_concurrent_mixed_requests_are_all_correct_and_seed_stable(serving_repository: Path) -> None:
    requests = _requests(200)
    async with serving(serving_repository, batch_max_delay_ms=5.0) as client:
        alone = [(await client.post(path, json=body)).json() for path, body in requests]
        together = await asyncio.gather(*[client.post(path, json=body) for path, body in requests])
        metrics = (await client.get("/metrics")).text
    assert all(r.status_code == 200 for r in together)
    for (path, _), a, t in zip(requests, alone, together, strict=True):
        t = t.json()
        assert a.keys() == t.keys()
        for key, value in a.items():
            if isinstance(value, list):
                np.testing.assert_allclose(
                    np.asarray(t[key], float), np.asarray(value, float), rtol=1e-5, atol=1e-4, err_msg=f"{path} {key}"
                )
    # batching really happened: some onnxruntime run carried more than one request's rows
    counts = [float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("vae_batch_rows_count{")]
    assert sum(counts) < 2 * len(requests)

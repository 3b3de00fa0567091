"""Bad inputs get the right status and a sentence naming field, row and column; nothing else is disturbed."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import STATUS, ServiceError
from tests.service.conftest import serving

pytestmark = pytest.mark.anyio
ROW = [0.5] * 64
URL = "/v1/models/digits-diag/score"


def test_every_service_error_has_a_status() -> None:
    def subclasses(cls: type) -> set[type]:
        return set(cls.__subclasses__()).union(*(subclasses(c) for c in cls.__subclasses__()))

    assert subclasses(ServiceError) <= set(STATUS)


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"inputs": [ROW, ROW[:3]]}, 422, "rows must have 64 values; row 1 has 3"),
        ({"inputs": [ROW, [*ROW[:5], "x", *ROW[6:]]]}, 422, "inputs[1][5] must be a number, got string"),
        ({"inputs": [[*ROW[:7], None, *ROW[8:]]]}, 422, "inputs[0][7] must be a number, got null"),
        ({"inputs": [[*ROW[:2], 1e39, *ROW[3:]]]}, 422, "inputs[0][2] is not a finite float32 number"),
        ({"inputs": []}, 422, "inputs is empty"),
        ({"inputs": "abc"}, 422, "inputs must be an array of rows"),
        ({"inputs": [1, 2]}, 422, "inputs[0] must be an array of numbers"),
        ({"input": [ROW]}, 422, "input: Extra inputs are not permitted"),
        ({"inputs": [ROW], "importance_samples": 0}, 422, "importance_samples"),
        ({"inputs": [ROW], "importance_samples": 100000}, 422, "above the limit 1024 (VAE_MAX_IMPORTANCE_SAMPLES)"),
        ({"inputs": [ROW], "threshold_quantile": 1.5}, 422, "threshold_quantile"),
        ({"inputs": [ROW], "seed": -1}, 422, "seed"),
        ({"inputs": [ROW] * 9000}, 413, "9000 rows; the limit is 8192"),
        ({"inputs": [[]] * 20000}, 413, "the body holds 20002 JSON arrays and objects; a request may hold one per row"),
        ([ROW], 422, "must be a JSON object"),
    ],
)
async def test_bad_score_requests_are_rejected_with_a_precise_message(
    serving_repository: Path, body: object, status: int, detail: str
) -> None:
    async with serving(serving_repository) as client:
        r = await client.post(URL, json=body)
        assert r.status_code == status, r.text
        assert detail in r.json()["detail"] and r.json()["error"]
        ok = await client.post(URL, json={"inputs": [ROW], "seed": 1})  # the service is undisturbed
        assert ok.status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "detail"),
    [
        ("/v1/models/digits-diag/encode", {"inputs": [ROW], "samples": -1}, "samples"),
        ("/v1/models/digits-diag/decode", {"latents": [[0.0, 0.0]]}, "latents rows must have 4 values"),
        ("/v1/models/digits-diag/sample", {"n": 0}, "n:"),
        ("/v1/models/digits-diag/sample", {"n": 3, "temperature": 0}, "temperature"),
    ],
)
async def test_bad_parameters_of_other_endpoints_are_422(
    serving_repository: Path, path: str, body: dict, detail: str
) -> None:
    async with serving(serving_repository) as client:
        r = await client.post(path, json=body)
    assert r.status_code == 422 and detail in r.json()["detail"]


async def test_sample_n_above_the_row_limit_is_413(serving_repository: Path) -> None:
    async with serving(serving_repository, max_rows=100) as client:
        r = await client.post("/v1/sample", json={"n": 101})
    assert r.status_code == 413 and "VAE_MAX_ROWS" in r.json()["detail"]


async def test_too_many_noise_draws_are_413_for_score_and_encode(serving_repository: Path) -> None:
    async with serving(serving_repository, max_draws=1000) as client:
        score = await client.post(URL, json={"inputs": [ROW] * 10, "importance_samples": 101})
        encode = await client.post("/v1/models/digits-diag/encode", json={"inputs": [ROW] * 10, "samples": 101})
        ok = await client.post(URL, json={"inputs": [ROW] * 10, "importance_samples": 100})
    assert (
        score.status_code == 413
        and "1010 draws" in score.json()["detail"]
        and "VAE_MAX_DRAWS" in score.json()["detail"]
    )
    assert encode.status_code == 413 and ok.status_code == 200


async def test_malformed_json_is_422(serving_repository: Path) -> None:
    async with serving(serving_repository) as client:
        r = await client.post(URL, content=b'{"inputs": [[1,', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]


async def test_body_over_the_limit_is_413_before_parsing(serving_repository: Path) -> None:
    async with serving(serving_repository, max_body_bytes=4096) as client:
        declared = await client.post(URL, content=b"x" * 5000, headers={"content-type": "application/json"})

        async def chunks():  # no Content-Length: the limit applies while streaming
            for _ in range(10):
                yield b" " * 1000

        streamed = await client.post(URL, content=chunks(), headers={"content-type": "application/json"})
    for r in (declared, streamed):
        assert r.status_code == 413 and "VAE_MAX_BODY_BYTES" in r.json()["detail"]


async def test_unknown_model_is_404_naming_the_loaded_ones(serving_repository: Path) -> None:
    async with serving(serving_repository) as client:
        r = await client.post("/v1/models/nope/encode", json={"inputs": [ROW]})
        info = await client.get("/v1/models/nope")
    assert r.status_code == 404 and "digits-diag" in r.json()["detail"] and info.status_code == 404


async def test_empty_repository_is_not_ready_and_inference_answers_503(tmp_path: Path) -> None:
    async with serving(tmp_path) as client:
        ready = await client.get("/readyz")
        r = await client.post("/v1/score", json={"inputs": [ROW]})
        assert (await client.get("/healthz")).status_code == 200
    assert ready.status_code == 503 and ready.json()["reason"] == "no model loaded"
    assert r.status_code == 503 and r.headers["retry-after"]


async def test_api_keys_are_enforced_and_health_stays_open(serving_repository: Path) -> None:
    async with serving(serving_repository, api_keys=["k1", "s3cret"]) as client:
        body = {"inputs": [ROW]}
        missing = await client.post(URL, json=body)
        wrong = await client.post(URL, json=body, headers={"Authorization": "Bearer nope"})
        bearer = await client.post(URL, json=body, headers={"Authorization": "Bearer s3cret"})
        header = await client.post(URL, json=body, headers={"X-API-Key": "k1"})
        listing = await client.get("/v1/models")
        health = [await client.get(p) for p in ("/healthz", "/readyz", "/metrics")]
    assert missing.status_code == 401 and wrong.status_code == 401 and listing.status_code == 401
    assert missing.json()["error"] == "Unauthorized" and missing.headers["www-authenticate"] == "Bearer"
    assert bearer.status_code == 200 and header.status_code == 200
    assert all(h.status_code == 200 for h in health)

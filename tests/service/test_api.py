"""Every endpoint through httpx against the app: shapes, numbers, seeds, health, metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from contract import Manifest, anomaly
from contract.prior import MixtureArrays, draw_latents
from tests.reference_math import score_from_graphs
from tests.service.conftest import serving
from training.data import load_table

pytestmark = pytest.mark.anyio
DIGITS = load_table("builtin:digits").x


def _manifest(repo: Path, name: str) -> Manifest:
    return Manifest.model_validate_json((repo / name / "1" / "manifest.json").read_text())


async def test_health_readiness_and_model_listing(serving_repository: Path) -> None:
    async with serving(serving_repository) as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["models"] == ["digits-diag", "digits-full"]
        listing = (await client.get("/v1/models")).json()
        assert {m["name"] for m in listing["models"]} == {"digits-diag", "digits-full"}
        assert all(m["provider"] == "CPUExecutionProvider" for m in listing["models"])
        one = (await client.get("/v1/models/digits-full")).json()
        assert one["covariance"] == "full" and one["manifest"]["anomaly"]["importance_samples"] == 8


@pytest.mark.parametrize("name", ["digits-diag", "digits-full"])
async def test_score_equals_numpy_computation_from_encoder_and_decoder(serving_repository: Path, name: str) -> None:
    manifest = _manifest(serving_repository, name)
    x = DIGITS[:7]
    async with serving(serving_repository) as client:
        r = await client.post(
            f"/v1/models/{name}/score",
            json={"inputs": x.tolist(), "importance_samples": 5, "seed": 42, "explain": True},
        )
    assert r.status_code == 200
    got = r.json()
    # The documented noise contract (contract/anomaly.py): every row shares one (K, d) block score_noise(K, d, seed).
    eps = np.broadcast_to(anomaly.score_noise(5, manifest.latent_dim, 42), (len(x), 5, manifest.latent_dim))
    bundle = serving_repository / name / "1"
    sessions = [
        ort.InferenceSession(str(bundle / f), providers=["CPUExecutionProvider"])
        for f in ("encoder.onnx", "decoder.onnx")
    ]
    expected = score_from_graphs(*sessions, x, eps, manifest.covariance == "full", manifest.prior)
    for key, value in expected.items():
        np.testing.assert_allclose(np.asarray(got[key]), value, rtol=1e-4, atol=2e-3, err_msg=key)
    np.testing.assert_allclose(got["anomaly_score"], -np.asarray(got["elbo"]), rtol=1e-6)
    ref = manifest.anomaly.reference()
    score = np.asarray(got["anomaly_score"], np.float64)
    np.testing.assert_allclose(got["percentile"], anomaly.percentiles(ref, score))
    np.testing.assert_allclose(got["p_value"], anomaly.p_values(ref, score))
    assert got["is_anomaly"] == [s > manifest.anomaly.threshold for s in got["anomaly_score"]]


async def test_score_threshold_quantile_override_and_default_k(serving_repository: Path) -> None:
    manifest = _manifest(serving_repository, "digits-diag")
    async with serving(serving_repository) as client:
        body = {"inputs": DIGITS[:20].tolist(), "seed": 1}
        default = (await client.post("/v1/models/digits-diag/score", json=body)).json()
        strict = (await client.post("/v1/models/digits-diag/score", json={**body, "threshold_quantile": 0.01})).json()
    assert default["importance_samples"] == manifest.anomaly.importance_samples
    assert default["threshold"] == manifest.anomaly.threshold
    assert strict["threshold"] == anomaly.threshold_at(manifest.anomaly.reference(), 0.01)
    assert sum(strict["is_anomaly"]) >= sum(default["is_anomaly"])
    assert "feature_nll" not in default


async def test_same_request_same_numbers_and_fresh_entropy_only_when_asked(serving_repository: Path) -> None:
    body = {"inputs": DIGITS[:3].tolist(), "seed": 9}
    async with serving(serving_repository) as client:
        a = (await client.post("/v1/score", json=body)).json()
        b = (await client.post("/v1/score", json=body)).json()
        c = (await client.post("/v1/score", json={"inputs": body["inputs"]})).json()
        d = (await client.post("/v1/score", json={"inputs": body["inputs"]})).json()
        e = (await client.post("/v1/score", json={"inputs": body["inputs"], "fresh_noise": True})).json()
        f = (await client.post("/v1/score", json={"inputs": body["inputs"], "fresh_noise": True})).json()
    assert a["elbo"] == b["elbo"]
    assert c["elbo"] == d["elbo"]  # no seed: the model's fixed noise_seed
    assert e["elbo"] != f["elbo"]


async def test_encode_returns_posterior_and_draws_that_follow_it(serving_repository: Path) -> None:
    async with serving(serving_repository) as client:
        r = (
            await client.post(
                "/v1/models/digits-full/encode", json={"inputs": DIGITS[:2].tolist(), "samples": 1000, "seed": 3}
            )
        ).json()
        plain = (await client.post("/v1/models/digits-diag/encode", json={"inputs": DIGITS[:2].tolist()})).json()
    mean, scale_tril, z = (np.asarray(r[k]) for k in ("mean", "scale_tril", "z"))
    assert mean.shape == (2, 4) and scale_tril.shape == (2, 4, 4) and z.shape == (2, 1000, 4)
    np.testing.assert_allclose(z.mean(1), mean, atol=0.15 * np.abs(scale_tril).max())
    cov = scale_tril[0] @ scale_tril[0].T
    np.testing.assert_allclose(np.cov(z[0].T), cov, atol=0.15 * np.abs(cov).max())
    np.testing.assert_allclose(np.log(np.diag(cov)), r["log_var"][0], atol=1e-4)
    assert set(plain) == {"model", "version", "mean", "log_var"}


async def test_decode_and_sample_shapes_and_noise(serving_repository: Path) -> None:
    async with serving(serving_repository) as client:
        dec = (
            await client.post(
                "/v1/models/digits-diag/decode",
                json={"latents": [[0, 0, 0, 0], [1, -1, 0.5, 2]], "sample": True, "seed": 2},
            )
        ).json()
        smp = (
            await client.post("/v1/models/digits-diag/sample", json={"n": 5, "seed": 4, "return_latents": True})
        ).json()
        again = (await client.post("/v1/models/digits-diag/decode", json={"latents": smp["latents"]})).json()
        cold = (
            await client.post(
                "/v1/models/digits-diag/sample", json={"n": 3, "temperature": 0.001, "seed": 4, "return_latents": True}
            )
        ).json()
        noisy = (await client.post("/v1/models/digits-diag/sample", json={"n": 5, "seed": 4, "noise": True})).json()
    assert np.shape(dec["mean"]) == (2, 64) and np.shape(dec["x"]) == (2, 64)
    assert not np.allclose(dec["x"], dec["mean"])
    assert np.shape(smp["samples"]) == (5, 64) and np.shape(smp["latents"]) == (5, 4)
    np.testing.assert_allclose(smp["samples"], again["mean"], rtol=1e-5, atol=1e-6)  # samples are decoder means
    # latents are the prior's draws with the request's seed (contract/prior.py); temperature scales their spread
    prior = _manifest(serving_repository, "digits-diag").prior
    drawn = draw_latents(MixtureArrays.of(prior), 5, 4, 1.0, np.random.default_rng(4))
    np.testing.assert_allclose(smp["latents"], drawn, rtol=1e-6)
    centres = np.zeros((1, 4)) if prior is None else np.asarray(prior.means)
    assert np.abs(np.asarray(cold["latents"])[:, None, :] - centres).sum(-1).min(1).max() < 0.01
    assert not np.allclose(noisy["samples"], smp["samples"])


async def test_default_model_routes_match_the_named_model(serving_repository: Path) -> None:
    body = {"inputs": DIGITS[:2].tolist(), "seed": 5}
    async with serving(serving_repository, default_model="digits-full") as client:
        a = (await client.post("/v1/score", json=body)).json()
        b = (await client.post("/v1/models/digits-full/score", json=body)).json()
    assert a == b and a["model"] == "digits-full"


async def test_a_default_model_that_does_not_serve_is_named_in_a_start_up_warning(
    serving_repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(serving_repository, default_model="digits-diag") as client:
        assert (await client.post("/v1/score", json={"inputs": DIGITS[:1].tolist()})).status_code == 200
    assert "default model" not in caplog.text
    async with serving(serving_repository, default_model="digits-typo") as client:
        assert (await client.get("/readyz")).status_code == 200  # ready: the other models serve
    assert "the default model 'digits-typo' (behind /v1/{encode,decode,sample,score}) is not serving" in caplog.text


async def test_request_id_is_echoed_or_generated_and_metrics_count_requests(serving_repository: Path) -> None:
    async with serving(serving_repository) as client:
        r = await client.post("/v1/score", json={"inputs": DIGITS[:1].tolist()}, headers={"X-Request-ID": "abc-1"})
        assert r.headers["x-request-id"] == "abc-1"
        generated = [(await client.get("/healthz")).headers["x-request-id"] for _ in range(2)]
        assert generated[0] != generated[1] and len(generated[0]) > 12
        await client.post("/v1/models/nope/score", json={"inputs": [[0.0]]})
        text = (await client.get("/metrics")).text
    assert 'vae_requests_total{endpoint="/v1/score",model="-",status="200"} 1.0' in text
    assert 'vae_requests_total{endpoint="/v1/models/{name}/score",model="unknown",status="404"} 1.0' in text
    assert 'vae_batch_rows_count{graph="scorer",model="digits-diag"}' in text
    assert 'vae_model_info{covariance="full",model="digits-full"' in text
    assert "vae_request_seconds_bucket" in text and "vae_queue_rows" in text


async def test_openapi_documents_every_endpoint_with_request_examples(serving_repository: Path) -> None:
    async with serving(serving_repository) as client:
        spec = (await client.get("/openapi.json")).json()
    for op in ("encode", "decode", "sample", "score"):
        for path in (f"/v1/{op}", f"/v1/models/{{name}}/{op}"):
            operation = spec["paths"][path]["post"]
            body = operation["requestBody"]["content"]["application/json"]["schema"]
            assert body["examples"], path
            assert all(p["in"] == "path" for p in operation.get("parameters", [])), path  # no stray query params
    for path in ("/healthz", "/readyz", "/metrics", "/v1/models", "/v1/models/{name}"):
        assert "get" in spec["paths"][path]


async def test_openapi_gives_every_json_answer_a_schema_and_only_the_real_error_body(serving_repository: Path) -> None:
    async with serving(serving_repository) as client:
        spec = (await client.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)
            assert responses["4XX"]["content"]["application/json"]["schema"]["$ref"].endswith("Error")
            ok = responses["200"]["content"]
            if path in ("/metrics", "/v1/models/{name}/report/{file}"):
                assert {"text/plain", "image/png"} & set(ok), path
                continue
            schema = ok["application/json"]["schema"]
            assert "$ref" in schema or schema.get("type") == "array", (method, path, schema)
    score = schemas["ScoreResponse"]
    assert set(score["required"]) >= {"anomaly_score", "percentile", "p_value", "is_anomaly", "threshold"}
    assert "feature_nll" not in score["required"]  # only with explain
    assert set(schemas["EncodeResponse"]["properties"]) == {"model", "version", "mean", "log_var", "scale_tril", "z"}
    assert "<kind>" in spec["info"]["description"].split("`")[1]  # inside code, so Markdown does not eat it


def test_every_documented_endpoint_is_served_by_its_one_plain_route() -> None:
    from fastapi.routing import APIRoute

    from service.app import create_app
    from service.plumbing import PlainRoute

    app = create_app()
    served = [
        (r.path, m) for r in app.router.routes if isinstance(r, PlainRoute) for m in r.methods or () if m != "HEAD"
    ]
    documented = {(path, method.upper()) for path, item in app.openapi()["paths"].items() for method in item}
    assert documented <= set(served) and len(served) == len(set(served))  # each served once
    assert len(documented) == 3 + 4 + 8 + 12  # probes, model facts (and monitoring), /v1 operations, V2
    assert not {r.path for r in app.router.routes if isinstance(r, APIRoute)} & {path for path, _ in documented}


def test_importing_the_http_modules_registers_no_route() -> None:
    from fastapi import APIRouter

    from service import pages, probes, routes, v2

    for module in (routes, v2, probes, pages):
        assert not [name for name, value in vars(module).items() if isinstance(value, APIRouter)], module.__name__


@pytest.mark.parametrize("enabled", [False, True])
async def test_fastapi_asks_opentelemetry_for_its_providers_only_when_the_setting_is_on(
    serving_repository: Path, monkeypatch: pytest.MonkeyPatch, enabled: bool
) -> None:
    from opentelemetry import trace

    asked: list[int] = []
    real = trace.get_tracer_provider

    def counting() -> trace.TracerProvider:
        asked.append(1)
        return real()

    async with serving(serving_repository, opentelemetry=enabled) as client:
        monkeypatch.setattr(trace, "get_tracer_provider", counting)
        r = await client.post("/v1/encode", json={"inputs": [[0.0] * 64]})
    assert r.status_code == 200
    assert bool(asked) is enabled  # off: no per-request look-up (nothing is configured here either way)


async def test_latents_that_overflow_the_decoder_are_refused_naming_the_row_not_answered_as_null(
    serving_repository: Path,
) -> None:
    # a finite latent far outside the prior overflows the decoder's float32 (inf - inf: NaN), which JSON would carry
    # as null inside an answer of numbers
    far = [[0.0, 0.0, 0.0, 0.0], [3e38, -3e38, 3e38, -3e38]]
    async with serving(serving_repository) as client:
        refused = await client.post("/v1/models/digits-diag/decode", json={"latents": far, "sample": True})
        v2 = await client.post(
            "/v2/models/digits-diag.decode/infer",
            json={"inputs": [{"name": "z", "datatype": "FP32", "shape": [2, 4], "data": sum(far, [])}]},
        )
        near = await client.post("/v1/models/digits-diag/decode", json={"latents": [[5.0, -5.0, 5.0, -5.0]]})
    assert refused.status_code == 422, refused.text
    assert "latents[1] (largest |value| 3e+38) overflow the decoder" in refused.json()["detail"]
    assert v2.status_code == 422 and "latents[1]" in v2.text
    assert near.status_code == 200 and np.isfinite(near.json()["mean"]).all()

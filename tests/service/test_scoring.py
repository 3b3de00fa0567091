"""The scoring rules of contract/anomaly.py as the service applies them: deterministic common noise, finite scores
for any finite input, conformal percentile, p-value and threshold."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import given, settings
from hypothesis import strategies as st

from contract import Manifest, anomaly
from tests.service.conftest import serving
from training.data import load_table

DIGITS = load_table("builtin:digits").x.astype(np.float32)
MODELS = ["digits-diag", "digits-full"]
COLUMNS = ("elbo", "reconstruction", "kl", "log_likelihood", "anomaly_score", "percentile", "p_value", "is_anomaly")
F32_MAX = np.float32(anomaly.FLOAT32_MAX)
HUGE = [1e37, -1e37, 3e38, -3e38]  # finite float32 values the graphs cannot score without overflowing


def _manifest(repo: Path, name: str) -> Manifest:
    return Manifest.model_validate_json((repo / name / "1" / "manifest.json").read_text())


def _scorer_batches(metrics: str, name: str) -> float:
    prefix = f'vae_batch_rows_count{{graph="scorer",model="{name}"}}'
    return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(prefix))


def _same(got: list[Any], want: list[Any], exact: bool, what: str) -> None:
    if exact:  # one row's arithmetic does not depend on the batch on CPU: bit for bit
        assert got == want, what
    else:  # GPU kernels may sum in another order for another batch size
        np.testing.assert_allclose(np.asarray(got, float), np.asarray(want, float), rtol=1e-6, err_msg=what)


@pytest.mark.anyio
@pytest.mark.parametrize("name", MODELS)
async def test_a_rows_score_is_the_same_alone_at_any_position_and_in_concurrent_requests(
    serving_repository: Path, name: str
) -> None:
    row, url = DIGITS[3], f"/v1/models/{name}/score"
    at_5 = DIGITS[100:120].copy()
    at_5[5] = row
    first, second = DIGITS[200:231].copy(), DIGITS[300:333].copy()  # 31 + 33 rows: one batch of 64
    first[2], second[30] = row, row
    async with serving(serving_repository) as client:
        alone = (await client.post(url, json={"inputs": [row.tolist()]})).json()
        among = (await client.post(url, json={"inputs": at_5.tolist()})).json()
        provider = (await client.get(f"/v1/models/{name}")).json()["provider"]
    # A batch of 64 rows that waits up to a minute for them: it runs when the second request's rows arrive, never
    # before, however late they are (a flush on the delay would mean the two were not merged, and fail below).
    merged = {"batch_max_rows": 64, "batch_max_delay_ms": 60_000.0, "request_timeout_s": 120.0}
    async with serving(serving_repository, **merged) as client:
        a, b = await asyncio.gather(*[client.post(url, json={"inputs": x.tolist()}) for x in (first, second)])
        metrics = (await client.get("/metrics")).text
    assert _scorer_batches(metrics, name) == 1  # the two concurrent requests shared one onnxruntime run
    for key in COLUMNS:
        want = [alone[key][0]] * 3
        _same([among[key][5], a.json()[key][2], b.json()[key][30]], want, provider == "CPUExecutionProvider", key)


@pytest.mark.anyio
async def test_default_noise_is_the_manifests_seed_and_fresh_noise_differs(serving_repository: Path) -> None:
    noise_seed = _manifest(serving_repository, "digits-diag").anomaly.noise_seed
    body = {"inputs": DIGITS[:4].tolist()}
    url = "/v1/models/digits-diag/score"
    async with serving(serving_repository) as client:
        default = [(await client.post(url, json=body)).json() for _ in range(2)]
        seeded = (await client.post(url, json={**body, "seed": noise_seed})).json()
        other = [(await client.post(url, json={**body, "seed": 9})).json() for _ in range(2)]
        fresh = [(await client.post(url, json={**body, "fresh_noise": True})).json() for _ in range(2)]
    assert default[0] == default[1] == seeded
    assert other[0] == other[1] and other[0]["elbo"] != default[0]["elbo"]
    assert fresh[0]["elbo"] != fresh[1]["elbo"] and fresh[0]["elbo"] != default[0]["elbo"]


@pytest.mark.anyio
async def test_other_endpoints_repeat_their_draws_without_a_seed_and_change_them_with_fresh_noise(
    serving_repository: Path,
) -> None:
    requests = [
        ("/v1/models/digits-full/encode", {"inputs": DIGITS[:3].tolist(), "samples": 4}, "z"),
        ("/v1/models/digits-diag/decode", {"latents": [[0.0, 0.5, -1.0, 2.0]] * 2, "sample": True}, "x"),
        ("/v1/models/digits-diag/sample", {"n": 3, "noise": True}, "samples"),
    ]
    async with serving(serving_repository) as client:
        for url, body, key in requests:
            plain = [(await client.post(url, json=body)).json()[key] for _ in range(2)]
            default = (await client.post(url, json={**body, "seed": anomaly.DEFAULT_NOISE_SEED})).json()[key]
            fresh = [(await client.post(url, json={**body, "fresh_noise": True})).json()[key] for _ in range(2)]
            assert plain[0] == plain[1] == default, url
            assert fresh[0] != fresh[1] and fresh[0] != plain[0], url


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/v1/models/digits-diag/score", {"inputs": DIGITS[:1].tolist()}),
        ("/v1/models/digits-diag/encode", {"inputs": DIGITS[:1].tolist(), "samples": 1}),
        ("/v1/models/digits-diag/decode", {"latents": [[0.0] * 4]}),
        ("/v1/models/digits-diag/sample", {"n": 1}),
    ],
)
async def test_seed_together_with_fresh_noise_is_422_naming_both(
    serving_repository: Path, url: str, body: dict
) -> None:
    v2 = {
        "inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": DIGITS[0].tolist()}],
        "parameters": {"seed": 1, "fresh_noise": True},
    }
    async with serving(serving_repository) as client:
        r = await client.post(url, json={**body, "seed": 1, "fresh_noise": True})
        r2 = await client.post("/v2/models/digits-diag.score/infer", json=v2)
    for response in (r, r2):
        detail = response.json().get("detail") or response.json()["error"]  # V2 errors are {"error": <sentence>}
        assert response.status_code == 422 and "seed" in detail and "fresh_noise" in detail, response.text


def _one_huge_value_per_column(value: float) -> np.ndarray:
    rows = np.repeat(DIGITS[:1], 64, axis=0)
    rows[np.arange(64), np.arange(64)] = value
    return rows  # (64, 64): row j holds value in column j


def _assert_most_anomalous(columns: dict[str, Any], n_reference: int) -> None:
    score = np.float32(columns["anomaly_score"])
    assert (score == F32_MAX).all()
    assert (np.asarray(columns["percentile"]) == 100.0).all() and np.asarray(columns["is_anomaly"]).all()
    np.testing.assert_allclose(columns["p_value"], 1.0 / (n_reference + 1))
    for key in ("elbo", "reconstruction", "log_likelihood", "kl", "feature_nll"):
        if key in columns:
            assert np.isfinite(np.asarray(columns[key], np.float32)).all(), key


@pytest.mark.anyio
@pytest.mark.parametrize("value", HUGE)
async def test_a_huge_finite_value_in_any_column_is_the_most_anomalous_finite_score_on_v1(
    serving_repository: Path, value: float
) -> None:
    rows = _one_huge_value_per_column(value)
    async with serving(serving_repository) as client:
        for name in MODELS:
            r = await client.post(f"/v1/models/{name}/score", json={"inputs": rows.tolist(), "explain": True})
            assert r.status_code == 200 and b"null" not in r.content, r.text[:300]  # no JSON null, no NaN
            n = len(_manifest(serving_repository, name).anomaly.sample)
            _assert_most_anomalous(r.json(), n)


@pytest.mark.anyio
@pytest.mark.parametrize("binary", [True, False])
async def test_a_huge_finite_value_in_any_column_is_the_most_anomalous_finite_score_on_v2(
    serving_repository: Path, binary: bool
) -> None:
    rows = np.concatenate([_one_huge_value_per_column(v) for v in HUGE])
    names = ["anomaly_score", "percentile", "p_value", "is_anomaly", "elbo", "kl", "log_likelihood", "feature_nll"]
    x: dict[str, Any] = {"name": "x", "shape": list(rows.shape), "datatype": "FP32"}
    header: dict[str, Any] = {
        "inputs": [{**x, "parameters": {"binary_data_size": rows.nbytes}} if binary else {**x, "data": rows.tolist()}],
        "outputs": [{"name": n, "parameters": {"binary_data": binary}} for n in names],
        "parameters": {"explain": True},
    }
    head = orjson.dumps(header)
    body, headers = (
        (head + rows.tobytes(), {"Inference-Header-Content-Length": str(len(head))}) if binary else (head, {})
    )
    async with serving(serving_repository) as client:
        r = await client.post("/v2/models/digits-full.score/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text[:300]
    split = int(r.headers.get("inference-header-content-length", len(r.content)))
    meta, blob, columns = orjson.loads(r.content[:split]), r.content[split:], {}
    for out in meta["outputs"]:
        dtype = {"FP32": "<f4", "FP64": "<f8", "BOOL": "?"}[out["datatype"]]
        if binary:
            size = out["parameters"]["binary_data_size"]
            columns[out["name"]], blob = np.frombuffer(blob[:size], dtype).reshape(out["shape"]), blob[size:]
        else:
            assert None not in out["data"], out["name"]
            columns[out["name"]] = np.asarray(out["data"], dtype).reshape(out["shape"])
    _assert_most_anomalous(columns, len(_manifest(serving_repository, "digits-full").anomaly.sample))


@pytest.fixture(scope="module")
def score(serving_repository: Path) -> Iterator[Callable[[str, np.ndarray], dict[str, Any]]]:
    """score(model, rows) against one app kept running for the module (Hypothesis calls it many times)."""
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(serving(serving_repository)) as client:

        def call(name: str, rows: np.ndarray) -> dict[str, Any]:
            r = portal.call(partial(client.post, f"/v1/models/{name}/score", json={"inputs": rows.tolist()}))
            assert r.status_code == 200, r.text
            return r.json()  # type: ignore[no-any-return]

        yield call


FACTORS = np.float32(10.0) ** np.arange(38, dtype=np.float32)  # 1, 10, ..., 1e37
MONOTONE_FROM = 3  # 1e3: the deviation dominates the score (see the test's docstring)


@pytest.mark.parametrize("name", MODELS)
@settings(max_examples=25, deadline=None)
@given(row=st.integers(0, len(DIGITS) - 1), column=st.integers(0, 63), sign=st.sampled_from([1.0, -1.0]))
def test_scores_stay_finite_and_grow_as_one_features_deviation_grows(
    score: Callable[[str, np.ndarray], dict[str, Any]], name: str, row: int, column: int, sign: float
) -> None:
    """x_j -> x_j + sign * 10^i for i = 0 ... 37: every score is finite; once a deviation is flagged every larger one
    is; and from 10^3 on (far outside the data's range, where the deviation's own term dominates) scores never
    decrease, through the overflow to FLOAT32_MAX. Below that the learned model need not be monotone: an encoder
    that follows an outlying pixel can make a 10x larger deviation score lower (seen on digits-diag, column 15)."""
    rows = np.repeat(DIGITS[row : row + 1], len(FACTORS), axis=0)
    rows[:, column] += np.float32(sign) * FACTORS
    out = score(name, rows)
    scores, flagged = np.asarray(out["anomaly_score"], np.float64), np.asarray(out["is_anomaly"])
    assert np.isfinite(scores).all()
    assert (np.diff(flagged.astype(int)) >= 0).all(), flagged
    assert (np.diff(scores[MONOTONE_FROM:]) >= 0).all(), scores
    assert np.float32(scores[-1]) == F32_MAX and out["percentile"][-1] == 100.0


@pytest.mark.anyio
async def test_percentile_and_p_value_are_conformal_against_the_manifests_reference(serving_repository: Path) -> None:
    manifest = _manifest(serving_repository, "digits-diag")
    reference = np.asarray(manifest.anomaly.sample)
    x = np.concatenate([DIGITS[:50], _one_huge_value_per_column(1e37)[:2]])
    async with serving(serving_repository) as client:
        got = (await client.post("/v1/models/digits-diag/score", json={"inputs": x.tolist()})).json()
    s = np.asarray(got["anomaly_score"], np.float64)
    p = np.array([(1 + np.sum(reference >= v)) / (len(reference) + 1) for v in s])  # (1 + #{ref >= s}) / (n + 1)
    # A validation row's own score sits on its reference value, where onnxruntime and torch may differ in the last
    # bits and the >= count by one; every other row's p-value is exact.
    tie = np.array([np.isclose(reference, v, rtol=1e-5, atol=1e-4).any() for v in s])
    assert not tie.all()
    np.testing.assert_allclose(np.asarray(got["p_value"])[~tie], p[~tie], rtol=1e-12)
    assert np.all(np.abs(np.asarray(got["p_value"]) - p) <= 1 / (len(reference) + 1) + 1e-12)
    np.testing.assert_allclose(got["percentile"][:50], 100 * (1 - np.asarray(got["p_value"][:50])), rtol=1e-12)
    assert got["percentile"][50:] == [100.0, 100.0]  # overflowed: the most anomalous there is


@pytest.mark.anyio
async def test_threshold_override_at_the_default_quantile_equals_the_manifest_threshold(
    serving_repository: Path,
) -> None:
    ref = _manifest(serving_repository, "digits-diag").anomaly
    body = {"inputs": DIGITS[:20].tolist()}
    async with serving(serving_repository) as client:
        default = (await client.post("/v1/models/digits-diag/score", json=body)).json()
        same = await client.post(
            "/v1/models/digits-diag/score", json={**body, "threshold_quantile": ref.default_quantile}
        )
        strict = (await client.post("/v1/models/digits-diag/score", json={**body, "threshold_quantile": 0.5})).json()
    assert default["threshold"] == same.json()["threshold"] == ref.threshold
    n = len(ref.sample)
    assert strict["threshold"] == ref.sample[int(np.ceil((n + 1) * 0.5)) - 1] == ref.threshold_at(0.5)
    assert strict["is_anomaly"] == [s > strict["threshold"] for s in strict["anomaly_score"]]


@pytest.mark.anyio
async def test_model_detail_shows_the_reference_warnings_and_v2_lists_p_value(serving_repository: Path) -> None:
    ref = _manifest(serving_repository, "digits-diag").anomaly
    async with serving(serving_repository) as client:
        detail = (await client.get("/v1/models/digits-diag")).json()
        meta = (await client.get("/v2/models/digits-diag.score")).json()
    assert detail["warnings"] == ref.warnings == detail["manifest"]["anomaly"]["warnings"]
    assert {"name": "p_value", "datatype": "FP64", "shape": [-1]} in meta["outputs"]
    assert "fresh_noise" in meta["parameters"]["accepted"]


@pytest.mark.anyio
async def test_openapi_describes_the_noise_rules_and_the_score_columns(serving_repository: Path) -> None:
    async with serving(serving_repository) as client:
        spec = (await client.get("/openapi.json")).json()
    request = spec["paths"]["/v1/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "noise_seed" in request["properties"]["seed"]["description"]
    assert "fresh entropy" in request["properties"]["fresh_noise"]["description"]
    sample = spec["paths"]["/v1/sample"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "fixed default seed" in sample["properties"]["seed"]["description"]
    response = spec["components"]["schemas"]["ScoreResponse"]["properties"]
    assert "conformal" in response["p_value"]["description"]
    assert "100 (1 - p_value)" in response["percentile"]["description"]

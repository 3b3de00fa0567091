"""Requests an attacker or a careless client sends: every one a clear 4xx in the service's error shape, nothing
leaks, nothing grows without bound, versions do what the answer says (in-process, through httpx)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest

from contract import sha256_file
from contract.requests import ScoreRequest
from service.errors import ClientGone, InvalidInput
from service.inference import ModelRunner
from service.schemas import NUMPY_FROM_BYTES, count_words, rows_may_hold_bool, to_matrix
from tests.service.conftest import serving

pytestmark = pytest.mark.anyio
ROW = [0.5] * 64
SCORE = "/v1/models/digits-diag/score"
V2_SCORE = "/v2/models/digits-diag.score/infer"


def _v2(data: object, shape: list[int] | None = None, **parameters: object) -> dict[str, object]:
    tensor = {"name": "x", "datatype": "FP32", "shape": shape or [1, 64], "data": data}
    return {"inputs": [tensor], "parameters": parameters}


@pytest.fixture
def repo(tmp_path: Path, serving_repository: Path) -> Path:
    target = tmp_path / "repo"
    shutil.copytree(serving_repository, target)
    return target


def _add_version(repo: Path, name: str, version: int) -> Path:
    bundle = repo / name / str(version)
    shutil.copytree(repo / name / "1", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["version"] = version
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def _unloadable(bundle: Path) -> None:
    """A graph onnxruntime cannot read, with a matching sha256: refused at session creation, whose message names
    the file by its full path."""
    (bundle / "encoder.onnx").write_bytes(b"not an onnx graph")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["graphs"]["encoder"]["sha256"] = sha256_file(bundle / "encoder.onnx")
    (bundle / "manifest.json").write_text(json.dumps(manifest))


# 1. no bare 500, and Starlette's own 404/405 in the service's error shape


async def test_an_unexpected_exception_is_a_json_500_with_the_request_id(
    serving_repository: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def explode(self: ModelRunner, *args: object, **kwargs: object) -> None:
        raise RuntimeError("internal detail at /srv/secret")

    async with serving(serving_repository) as client:
        monkeypatch.setattr(ModelRunner, "call", explode)
        r = await client.post(SCORE, json={"inputs": [ROW]}, headers={"X-Request-ID": "req-42"})
        monkeypatch.undo()
        after = await client.post(SCORE, json={"inputs": [ROW]})
        metrics = (await client.get("/metrics")).text
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert r.json()["error"] == "InternalError" and "req-42" in r.json()["detail"]
    assert "/srv/secret" not in r.text and r.headers["x-request-id"] == "req-42"
    assert any("req-42" in rec.message and rec.exc_info for rec in caplog.records)  # the traceback is in the log
    assert after.status_code == 200
    assert 'endpoint="/v1/models/{name}/score",model="digits-diag",status="500"} 1.0' in metrics


@pytest.mark.parametrize(
    ("method", "path", "status", "kind"),
    [
        ("GET", "/nowhere", 404, "RouteNotFound"),
        ("GET", "/v1/score", 405, "MethodNotAllowed"),
        ("DELETE", "/v1/models", 405, "MethodNotAllowed"),
    ],
)
async def test_unknown_paths_and_methods_get_the_error_body(
    serving_repository: Path, method: str, path: str, status: int, kind: str
) -> None:
    async with serving(serving_repository) as client:
        r = await client.request(method, path)
        v2 = await client.request(method, "/v2/nowhere" if status == 404 else "/v2/models/digits-diag.score/infer")
    assert r.status_code == status and r.json()["error"] == kind and r.json()["detail"]
    assert v2.status_code == status and v2.json()["error"].startswith(kind)  # the V2 shape: one sentence
    if status == 405:
        assert "allow" in r.headers


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v2/models/digits-diag.score/versions/%C2%B2/infer", _v2(ROW)),
        ("GET", "/v2/models/digits-diag.score/versions/%C2%B2", None),
        ("GET", "/v2/models/digits-diag.score/versions/%C2%B2/ready", None),
        ("GET", "/v2/models/digits-diag.score/ready?version=%C2%B9", None),
        ("GET", "/v2/models/digits-diag.score/versions/99999999999999999999999", None),
    ],
)
async def test_versions_made_of_non_ascii_digits_are_not_found(
    serving_repository: Path, method: str, path: str, body: object
) -> None:
    async with serving(serving_repository) as client:
        r = await client.request(method, path, json=body)
    assert r.status_code == 404, r.text
    assert "versions are 1, 2, 3" in r.json()["error"]


@pytest.mark.parametrize("version", ["²", True, 0, -1, 1.5, "1e3", [1]])
async def test_load_with_a_malformed_version_is_refused(repo: Path, version: object) -> None:
    async with serving(repo) as client:
        r = await client.post("/v2/repository/models/digits-diag/load", json={"parameters": {"version": version}})
    assert r.status_code == 422 and "parameters.version must be a positive integer" in r.json()["error"]


# 2. strict types: nothing coerced


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (SCORE, {"inputs": [ROW], "importance_samples": "16"}, "importance_samples"),
        (SCORE, {"inputs": [ROW], "importance_samples": True}, "importance_samples"),
        (SCORE, {"inputs": [ROW], "importance_samples": 16.0}, "importance_samples"),
        (SCORE, {"inputs": [ROW], "seed": "7"}, "seed"),
        (SCORE, {"inputs": [ROW], "seed": True}, "seed"),
        (SCORE, {"inputs": [ROW], "explain": "yes"}, "explain"),
        (SCORE, {"inputs": [ROW], "explain": 1}, "explain"),
        (SCORE, {"inputs": [ROW], "fresh_noise": "false"}, "fresh_noise"),
        (SCORE, {"inputs": [ROW], "threshold_quantile": "0.9"}, "threshold_quantile"),
        (SCORE, {"inputs": [[*ROW[:3], True, *ROW[4:]]]}, "inputs[0][3] must be a number, got boolean"),
        # booleans among the parameters too: the rows' own boolean is still found
        (SCORE, {"inputs": [[*ROW[:3], False, *ROW[4:]]], "explain": True}, "inputs[0][3] must be a number"),
        (SCORE, {"inputs": [ROW, [*ROW[:63], True]], "explain": False, "fresh_noise": True}, "inputs[1][63]"),
        ("/v1/models/digits-diag/sample", {"n": "4"}, "n"),
        ("/v1/models/digits-diag/sample", {"n": 4, "temperature": "1"}, "temperature"),
        ("/v1/models/digits-diag/sample", {"n": 4, "return_latents": 1}, "return_latents"),
        ("/v1/models/digits-diag/encode", {"inputs": [ROW], "samples": "2"}, "samples"),
        ("/v1/models/digits-diag/decode", {"latents": [[0.0] * 4], "sample": "true"}, "sample"),
        (V2_SCORE, _v2(ROW, seed="7"), "seed"),
        (V2_SCORE, _v2(ROW, importance_samples=True), "importance_samples"),
        (V2_SCORE, _v2(["0.5"] * 64), "found a string"),
        (V2_SCORE, _v2([True] * 64), "found a boolean"),
    ],
)
async def test_request_fields_are_strictly_typed(
    serving_repository: Path, path: str, body: dict[str, object], field: str
) -> None:
    async with serving(serving_repository) as client:
        r = await client.post(path, json=body)
    assert r.status_code == 422, r.text
    message = r.json().get("detail") or r.json()["error"]
    assert field in message


# 3 (in-process part). request bodies: compressed ones decoded within the size limit


async def test_a_gzip_body_is_decoded(serving_repository: Path) -> None:
    body = json.dumps({"inputs": [ROW], "seed": 1}).encode()
    async with serving(serving_repository) as client:
        plain = await client.post(SCORE, content=body, headers={"content-type": "application/json"})
        zipped = await client.post(
            SCORE, content=gzip.compress(body), headers={"content-type": "application/json", "content-encoding": "gzip"}
        )
    assert zipped.status_code == 200 and zipped.json() == plain.json()


@pytest.mark.parametrize(
    ("encoding", "content", "status", "detail"),
    [
        ("br", b"\x00\x01", 415, "Content-Encoding 'br' is not supported"),
        ("gzip", b"not gzip at all", 422, "not valid gzip"),
        ("gzip", gzip.compress(b'{"inputs": [[0.5]]}')[:-12], 422, "truncated"),
        ("gzip", gzip.compress(b" " * (4 << 20)), 413, "decompressed body is over the limit"),
    ],
)
async def test_bodies_that_cannot_or_must_not_be_decoded_are_refused(
    serving_repository: Path, encoding: str, content: bytes, status: int, detail: str
) -> None:
    async with serving(serving_repository, max_body_bytes=1 << 20) as client:
        r = await client.post(SCORE, content=content, headers={"content-encoding": encoding})
    assert r.status_code == status and detail in r.json()["detail"], r.text


async def test_a_small_gzip_body_that_would_inflate_into_megabytes_of_work_is_refused(serving_repository: Path) -> None:
    # one row of 8M zeros is 16 MiB of JSON and 16 KB of gzip: under the body limit, but a 16 MiB parse for the
    # event loop each time, for what a client pays 16 KB
    wide = b'{"inputs": [[' + b"0," * (8 << 20 - 1) + b"0]]}"
    ordinary = json.dumps({"inputs": [ROW] * 200}).encode()  # numbers compress a few times: decoded as ever
    async with serving(serving_repository) as client:
        bomb = await client.post(SCORE, content=gzip.compress(wide), headers={"content-encoding": "gzip"})
        fine = await client.post(SCORE, content=gzip.compress(ordinary), headers={"content-encoding": "gzip"})
    assert len(gzip.compress(wide)) < 20_000 and len(wide) < 16 << 20
    assert bomb.status_code == 413 and "inflates past" in bomb.json()["detail"], bomb.text
    assert fine.status_code == 200


async def test_a_v2_input_is_refused_by_its_declared_shape_before_its_values_are_read(serving_repository: Path) -> None:
    # as over gRPC: a declared shape of the wrong width is refused as such, before its data are converted (and
    # before their count is compared with the shape)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 10], "data": [0.5] * 5}]}
    async with serving(serving_repository) as client:
        r = await client.post("/v2/models/digits-diag.score/infer", json=body)
    assert r.status_code == 422 and "rows must have 64 values; row 0 has 10" in r.json()["error"], r.text


# 5. metrics labels only from loaded models and known routes


async def test_made_up_model_names_do_not_add_metric_series(serving_repository: Path) -> None:
    async with serving(serving_repository, api_keys=["k"]) as client:
        for i in range(200):
            await client.post(f"/v1/models/m{i}/score", json={"inputs": [ROW]})
            await client.post(f"/v2/models/m{i}.score/infer", json=_v2(ROW))
            await client.get(f"/random/{i}")
        text = (await client.get("/metrics")).text
    series = [line for line in text.splitlines() if line.startswith("vae_requests_total")]
    assert not any('model="m' in line for line in series)
    assert 'endpoint="/v1/models/{name}/score",model="unknown",status="401"} 200.0' in text
    assert 'endpoint="unmatched",model="-",status="404"} 200.0' in text
    assert len(series) <= 5


# 6. nothing says where the repository lives


async def test_refusals_and_listings_name_no_absolute_path(repo: Path) -> None:
    _unloadable(repo / "digits-full" / "1")
    async with serving(repo) as client:
        ready = await client.get("/readyz")
        listing = await client.get("/v1/models")
        missing = await client.post("/v2/repository/models/nothing-here/load")
        reload = await client.post("/v2/repository/models/digits-full/load")
    reason = ready.json()["refused"]["digits-full/1"]
    assert "onnxruntime cannot load it" in reason and "encoder.onnx" in reason
    for r in (ready, listing, missing, reload):
        assert str(repo) not in r.text and str(repo.resolve()) not in r.text, r.text
    assert listing.json()["models"][0]["path"] == "digits-diag/1"
    assert missing.status_code == 404 and reload.status_code == 422


# 8. versions


async def test_loading_an_older_version_serves_it_and_pins_it(repo: Path) -> None:
    _add_version(repo, "digits-diag", 2)
    async with serving(repo, keep_versions=1, poll_interval_s=0.05) as client:
        assert (await client.post(SCORE, json={"inputs": [ROW]})).json()["version"] == 2
        loaded = await client.post("/v2/repository/models/digits-diag/load", json={"parameters": {"version": 1}})
        assert loaded.status_code == 200 and loaded.json()["version"] == "1"
        for _ in range(5):  # polls come and go: the pinned version keeps serving
            assert (await client.post(SCORE, json={"inputs": [ROW]})).json()["version"] == 1
            await client.get("/healthz")
        index = (await client.post("/v2/repository/index")).json()
        ready = {(m["name"], m["version"]) for m in index if m["state"] == "READY"}
        assert ready == {
            (f"digits-{c}.{op}", "1") for c in ("diag", "full") for op in ("encode", "decode", "sample", "score")
        }
        assert (await client.post("/v2/repository/models/digits-diag.score/load")).json()["version"] == "2"
        assert (await client.post(SCORE, json={"inputs": [ROW]})).json()["version"] == 2


async def test_a_bad_newest_version_at_start_up_leaves_the_newest_good_one_serving(repo: Path) -> None:
    _unloadable(_add_version(repo, "digits-diag", 2))
    async with serving(repo) as client:
        r = await client.post(SCORE, json={"inputs": [ROW]})
        ready = (await client.get("/readyz")).json()
    assert r.status_code == 200 and r.json()["version"] == 1
    assert "digits-diag/2" in ready["refused"]


async def test_the_default_model_not_serving_is_an_error_not_another_model(repo: Path) -> None:
    _unloadable(repo / "digits-diag" / "1")  # the alphabetically first model, so the default one
    async with serving(repo) as client:
        r = await client.post("/v1/score", json={"inputs": [ROW]})
        listing = (await client.get("/v1/models")).json()
    assert r.status_code == 404 and "default model 'digits-diag' is not serving" in r.json()["detail"]
    assert "refused" in r.json()["detail"] and listing["default_model"] == "digits-diag"


async def test_a_wrong_width_names_the_model_that_answered(serving_repository: Path) -> None:
    async with serving(serving_repository) as client:
        v1 = await client.post("/v1/score", json={"inputs": [ROW[:3]]})
        v2 = await client.post(V2_SCORE, json=_v2(ROW[:3], shape=[1, 3]))
    assert "model 'digits-diag' version 1 takes 64" in v1.json()["detail"]
    assert "model 'digits-diag' version 1 takes 64" in v2.json()["error"]


# 9. the protocol and the OpenAPI document


@pytest.mark.parametrize("model", ["digits-diag.bogus", "nothing-here.score"])
async def test_repository_requests_on_unknown_v2_models_are_not_found(repo: Path, model: str) -> None:
    async with serving(repo) as client:
        r = await client.post(f"/v2/repository/models/{model}/load")
    assert r.status_code == 404


async def test_openapi_documents_the_real_error_body_and_the_key_schemes(serving_repository: Path) -> None:
    async with serving(serving_repository, api_keys=["k"]) as client:
        spec = (await client.get("/openapi.json")).json()
    text = json.dumps(spec)
    assert "HTTPValidationError" not in text
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    score = spec["paths"]["/v1/models/{name}/score"]["post"]
    assert score["responses"]["4XX"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/Error"
    assert score["security"] and "security" not in spec["paths"]["/healthz"]["get"]
    v2 = spec["paths"]["/v2/models/{model}/infer"]["post"]["responses"]["4XX"]
    assert v2["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/V2Error"


# 4 (in-process part). big requests run in chunks with the same numbers


async def test_a_request_bigger_than_a_batch_runs_in_chunks_with_the_same_scores(serving_repository: Path) -> None:
    rows = np.random.default_rng(3).uniform(0, 16, (37, 64)).round().tolist()
    async with serving(serving_repository, batch_max_draws=8 * 16) as client:  # 8 rows per run at K=16
        whole = (await client.post(SCORE, json={"inputs": rows, "importance_samples": 16})).json()
        alone = [(await client.post(SCORE, json={"inputs": [r], "importance_samples": 16})).json() for r in rows[:3]]
        text = (await client.get("/metrics")).text
    assert len(whole["anomaly_score"]) == 37
    assert [a["anomaly_score"][0] for a in alone] == whole["anomaly_score"][:3]  # shared noise: same numbers
    runs = {
        line.split('le="')[1].split('"')[0]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith('vae_batch_rows_bucket{graph="scorer"') and 'model="digits-diag"' in line
    }
    assert runs["8.0"] == runs["+Inf"]  # no run had more than 8 rows


async def test_a_chunked_request_stops_when_its_client_has_gone(serving_repository: Path) -> None:
    rows = np.full((37, 64), 0.5, np.float32)

    async def gone() -> bool:
        return False

    async with serving(serving_repository, batch_max_draws=8 * 16) as client:
        runner = client.app.state.repository.current["digits-diag"]  # type: ignore[attr-defined]
        with pytest.raises(ClientGone, match="stopped after 8 of 37 rows"):
            await runner.call("score", rows, ScoreRequest(inputs=[], importance_samples=16), alive=gone)
        text = (await client.get("/metrics")).text
    assert 'vae_batch_rows_count{graph="scorer",model="digits-diag"} 1.0' in text  # the first chunk only


@pytest.mark.parametrize(
    ("page", "assets"), [("/docs", ["swagger-ui-bundle.js", "swagger-ui.css"]), ("/redoc", ["redoc.standalone.js"])]
)
async def test_the_api_pages_load_their_assets_from_the_service_not_a_cdn(
    serving_repository: Path, page: str, assets: list[str]
) -> None:
    async with serving(serving_repository, api_keys=["k"]) as client:  # the pages stay open, like /openapi.json
        html = (await client.get(page)).text
        served = [await client.get(f"/docs-assets/{name}") for name in assets]
    assert "cdn" not in html.lower() and "fonts.googleapis" not in html
    assert all(f"/docs-assets/{name}" in html for name in assets)
    assert all(r.status_code == 200 and len(r.content) > 10_000 for r in served)


async def test_request_examples_have_the_default_models_width_and_work_as_sent(serving_repository: Path) -> None:
    async with serving(serving_repository) as client:
        spec = (await client.get("/openapi.json")).json()
        for op in ("encode", "decode", "score"):
            (example,) = spec["paths"][f"/v1/{op}"]["post"]["requestBody"]["content"]["application/json"]["schema"][
                "examples"
            ]
            rows = example.get("inputs") or example["latents"]
            assert len(rows[0]) == (64 if op != "decode" else 4), op
            assert (await client.post(f"/v1/{op}", json=example)).status_code == 200, op  # "Try it out" as shown


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"inputs": [[0, 1]]}', False),
        (b'{"inputs": [[0, 1]], "explain": true, "fresh_noise": false}', False),
        (b'{"inputs": [[0, true]]}', True),
        (b'{"inputs": [[false, 1]], "explain": true}', True),
    ],
)
def test_the_boolean_scan_is_skipped_only_when_the_body_has_no_boolean_beyond_its_parameters(
    body: bytes, expected: bool
) -> None:
    params = ScoreRequest.model_validate(orjson.loads(body))
    assert rows_may_hold_bool(body, params) is expected


@pytest.mark.parametrize(
    ("rows", "asked"),
    [([[0.25, 1.5], [2.0, -3.0]], False), ([[0.25, 1.0], [2.0, -3.0]], True), ([[0.0, 1.5]], True)],
)
def test_the_body_is_searched_for_booleans_only_when_the_rows_hold_an_exact_zero_or_one(
    rows: list[list[float]], asked: bool
) -> None:
    calls: list[None] = []

    def hint() -> bool:
        calls.append(None)
        return True

    assert to_matrix(rows, "inputs", 2, 10, may_hold_bool=hint).shape == (len(rows), 2)
    assert bool(calls) is asked


def test_a_boolean_among_the_rows_is_refused_when_the_hint_cannot_rule_it_out() -> None:
    with pytest.raises(InvalidInput, match=r"inputs\[0\]\[1\] must be a number, got boolean"):
        to_matrix([[0.5, True]], "inputs", 2, 10, may_hold_bool=lambda: True)


def test_counting_true_and_false_with_numpy_agrees_with_bytes_count() -> None:
    rng = np.random.default_rng(0)
    pieces = [b"true", b"false", b"tru", b"fals", b"e", b"t", b"f", b"1.5e-05", b",", b"[", b"]", b" "]
    bodies = [b"", b"t", b"tru", b"true", b"false", b"[true,false]", b"xtrue", b"1.5e-05,true"]
    bodies += [b"".join(rng.choice(pieces, size=int(rng.integers(0, 60)))) for _ in range(300)]
    assert sum(body.count(b"true") for body in bodies) > 100  # the words do occur, in every position
    for body in bodies:
        for word in (b"true", b"false"):
            assert count_words(body, word, numpy_from=0) == body.count(word), (body, word)  # numpy on every size
    large = b"".join(rng.choice(pieces, size=20_000))  # past the default size where numpy takes over
    assert len(large) >= NUMPY_FROM_BYTES
    for word in (b"true", b"false"):
        assert count_words(large, word) == count_words(large, word, numpy_from=0) == large.count(word)

"""Open Inference Protocol v2: a real client (tritonclient) over a socket, and every bad V2 input."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from tests.service.conftest import serving
from tests.service.test_live_repository import publish
from training.data import load_table

DIGITS = load_table("builtin:digits").x
INFER = "/v2/models/digits-diag.score/infer"


def _binary(header: dict, *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps(header)
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head))}


def test_tritonclient_reads_metadata_and_infers_like_v1(live_server: str) -> None:
    tc = pytest.importorskip("tritonclient.http")
    url = live_server.removeprefix("http://")
    client = tc.InferenceServerClient(url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("e2e.score")
    meta = client.get_model_metadata("e2e.score")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]
    assert client.get_model_metadata("e2e.encode", model_version="1")["outputs"][0]["shape"] == [-1, 3]
    x = DIGITS[:6]
    v1_score = httpx.post(f"{live_server}/v1/score", json={"inputs": x.tolist(), "seed": 11}).json()
    v1_encode = httpx.post(f"{live_server}/v1/encode", json={"inputs": x.tolist(), "samples": 2, "seed": 5}).json()
    for binary in (True, False):
        tensor = tc.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        outputs = [tc.InferRequestedOutput(n, binary_data=binary) for n in ("elbo", "log_likelihood", "is_anomaly")]
        scored = client.infer("e2e.score", [tensor], outputs=outputs, parameters={"seed": 11})
        np.testing.assert_array_equal(scored.as_numpy("elbo"), np.float32(v1_score["elbo"]))
        np.testing.assert_array_equal(scored.as_numpy("log_likelihood"), np.float32(v1_score["log_likelihood"]))
        assert scored.as_numpy("is_anomaly").tolist() == v1_score["is_anomaly"]
        encoded = client.infer("e2e.encode", [tensor], parameters={"seed": 5, "samples": 2})
        np.testing.assert_array_equal(encoded.as_numpy("mean"), np.float32(v1_encode["mean"]))
        np.testing.assert_array_equal(encoded.as_numpy("z"), np.float32(v1_encode["z"]))
    with pytest.raises(tc.InferenceServerException, match="rows must have 64 values"):
        bad = tc.InferInput("x", [2, 5], "FP32")
        bad.set_data_from_numpy(np.zeros((2, 5), np.float32))
        client.infer("e2e.score", [bad])


@pytest.mark.anyio
async def test_v2_health_metadata_sample_and_versions(serving_repository: Path) -> None:
    async with serving(serving_repository) as client:
        assert (await client.get("/v2")).json()["extensions"] == ["binary_tensor_data", "model_repository"]
        assert (await client.get("/v2/health/live")).status_code == 200
        assert (await client.get("/v2/health/ready")).status_code == 200
        meta = (await client.get("/v2/models/digits-full.encode/versions/1")).json()
        assert [o["name"] for o in meta["outputs"]] == ["mean", "log_var", "scale_tril", "z"]
        assert (await client.get("/v2/models/digits-full.encode/versions/2")).status_code == 404
        assert (await client.get("/v2/models/digits-full.nothing")).status_code == 404
        r = await client.post(
            "/v2/models/digits-diag.sample/infer", json={"inputs": [], "parameters": {"n": 3, "seed": 1}}
        )
        v1 = (await client.post("/v1/models/digits-diag/sample", json={"n": 3, "seed": 1})).json()
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["samples"]["shape"] == [3, 64]
    np.testing.assert_array_equal(np.float32(out["samples"]["data"]), np.float32(v1["samples"]).reshape(-1))


@pytest.mark.anyio
async def test_metadata_lists_every_version_a_client_may_ask_for(repo: Path) -> None:
    publish(repo, "digits-diag", 2)
    async with serving(repo, keep_versions=2) as client:
        load = "/v2/repository/models/digits-diag/load"
        assert (await client.post(load, json={"parameters": {"version": 1}})).status_code == 200
        assert (await client.post(load)).status_code == 200  # the newest again: 1 stays loaded, kept
        for path in ("/v2/models/digits-diag.score", "/v2/models/digits-diag.score/versions/1"):
            assert (await client.get(path)).json()["versions"] == ["1", "2"]  # 2 serves, 1 is kept and addressable
        assert (await client.get("/v2/models/digits-full.score")).json()["versions"] == ["1"]


@pytest.mark.anyio
async def test_binary_response_layout_and_selected_outputs(serving_repository: Path) -> None:
    x = DIGITS[:4].astype(np.float32)
    body, headers = _binary(
        {
            "inputs": [
                {"name": "x", "shape": [4, 64], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
            ],
            "outputs": [{"name": "anomaly_score", "parameters": {"binary_data": True}}, {"name": "percentile"}],
            "parameters": {"seed": 2},
            "id": "req-7",
        },
        x.tobytes(),
    )
    async with serving(serving_repository) as client:
        r = await client.post(INFER, content=body, headers=headers)
        v1 = (await client.post("/v1/models/digits-diag/score", json={"inputs": x.tolist(), "seed": 2})).json()
    split = int(r.headers["inference-header-content-length"])
    head = orjson.loads(r.content[:split])
    assert head["id"] == "req-7" and [o["name"] for o in head["outputs"]] == ["anomaly_score", "percentile"]
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 16 and "data" in head["outputs"][1]
    np.testing.assert_array_equal(np.frombuffer(r.content[split:], "<f4"), np.float32(v1["anomaly_score"]))
    assert head["parameters"]["importance_samples"] == 8


def _x_input(**overrides: object) -> dict:
    return {"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0.1] * 64, **overrides}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        ({"inputs": [_x_input(datatype="FP64")]}, {}, 422, "input 'x' must have datatype FP32"),
        ({"inputs": [_x_input(datatype="INT8")]}, {}, 422, "datatype 'INT8' is not supported"),
        ({"inputs": [_x_input(shape=[2, 64])]}, {}, 422, "64 values for shape [2, 64] (128 expected)"),
        ({"inputs": [_x_input(shape=[1, 32], data=[0.1] * 32)]}, {}, 422, "rows must have 64 values"),
        ({"inputs": [_x_input(shape=[64])]}, {}, 422, "must have shape (rows, 64)"),
        ({"inputs": [_x_input(name="y")]}, {}, 422, "score takes input(s) ['x'], got ['y']"),
        ({"inputs": []}, {}, 422, "score takes input(s) ['x'], got []"),
        ({"inputs": [_x_input(data=["a"] * 64)]}, {}, 422, "data must be numbers of datatype FP32"),
        (
            {"inputs": [_x_input()], "outputs": [{"name": "nope"}]},
            {},
            422,
            "unknown output(s) ['nope']; score gives ['anomaly_score', 'elbo', ",
        ),
        (
            {"inputs": [_x_input()], "outputs": [{"name": "n" * 1000}]},  # a caller's name quoted to 40 characters
            {},
            422,
            f"unknown output(s) ['{'n' * 40}'...]; score gives",
        ),
        ({"inputs": [_x_input()], "parameters": {"importance_samples": 0}}, {}, 422, "importance_samples"),
        ({"inputs": [_x_input(data=[1e39] * 64)]}, {}, 422, "x[0][0] is not a finite float32 number"),
        ([1, 2], {}, 422, "must be a JSON object"),
    ],
)
async def test_bad_v2_json_inputs_are_4xx_naming_the_problem(
    serving_repository: Path, body: object, headers: dict, status: int, message: str
) -> None:
    async with serving(serving_repository) as client:
        r = await client.post(INFER, content=orjson.dumps(body), headers=headers)
        ok = await client.post(INFER, json={"inputs": [_x_input()]})
    assert r.status_code == status and message in r.json()["error"], r.text
    assert ok.status_code == 200


def _binary_case(size: int, payload: bytes, header_len: str | None = None) -> tuple[bytes, dict[str, str]]:
    body, headers = _binary({"inputs": [_x_input(data=None, parameters={"binary_data_size": size})]}, payload)
    if header_len is not None:
        headers["Inference-Header-Content-Length"] = header_len
    return body, headers


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            lambda: _binary_case(100, b"\0" * 100),
            "binary_data_size 100 does not match shape [1, 64] of FP32 (256 bytes)",
        ),
        (lambda: _binary_case(256, b"\0" * 200), "body truncated, 256 bytes announced, 200 left"),
        (lambda: _binary_case(256, b"\0" * 300), "44 bytes after the last binary input"),
        (lambda: _binary_case(256, b"\0" * 256, header_len="99999"), "Inference-Header-Content-Length is '99999'"),
        (lambda: _binary_case(256, b"\0" * 256, header_len="5"), "the inference header is not valid JSON"),
        (lambda: _binary_case(256, np.full(64, np.nan, np.float32).tobytes()), "x[0][0] is not a finite float32"),
    ],
)
async def test_bad_v2_binary_inputs_are_4xx_naming_the_problem(serving_repository: Path, case, message: str) -> None:
    body, headers = case()
    async with serving(serving_repository) as client:
        r = await client.post(INFER, content=body, headers=headers)
        good, good_headers = _binary_case(256, np.zeros(64, np.float32).tobytes())
        ok = await client.post(INFER, content=good, headers=good_headers)
    assert r.status_code == 422 and message in r.json()["error"], r.text
    assert ok.status_code == 200


@pytest.mark.anyio
async def test_v2_body_limit_and_api_keys(serving_repository: Path) -> None:
    async with serving(serving_repository, max_body_bytes=2048, api_keys=["k"]) as client:
        big, headers = _binary_case(256 * 10, b"\0" * 2560)
        too_big = await client.post(INFER, content=big, headers={**headers, "X-API-Key": "k"})
        no_key = await client.post(INFER, json={"inputs": [_x_input()]})
        with_key = await client.post(INFER, json={"inputs": [_x_input()]}, headers={"X-API-Key": "k"})
        health = await client.get("/v2/health/ready")
        meta = await client.get("/v2/models/digits-diag.score")
    assert too_big.status_code == 413 and "VAE_MAX_BODY_BYTES" in too_big.json()["error"]
    assert no_key.status_code == 401 and with_key.status_code == 200 and health.status_code == 200
    assert meta.status_code == 401


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
@pytest.mark.parametrize("bundle", ["digits-diag", "digits-full"])
@pytest.mark.parametrize("op", ["encode", "decode", "sample", "score"])
async def test_asking_for_every_listed_output_computes_each_of_them(
    serving_repository: Path, bundle: str, op: str
) -> None:
    async with serving(serving_repository) as client:
        meta = (await client.get(f"/v2/models/{bundle}.{op}")).json()
        inputs = [
            {"name": t["name"], "datatype": "FP32", "shape": [2, t["shape"][1]], "data": [0.25] * (2 * t["shape"][1])}
            for t in meta["inputs"]
        ]
        listed = [o["name"] for o in meta["outputs"]]
        body = {"inputs": inputs, "outputs": [{"name": n} for n in listed], "parameters": {"seed": 4}}
        r = await client.post(f"/v2/models/{bundle}.{op}/infer", json=body)
        assert r.status_code == 200, r.text
        got = {o["name"]: o for o in r.json()["outputs"]}
        assert list(got) == listed  # every listed output, in the order asked
        if op == "encode":  # z: one draw per row by default
            assert got["z"]["shape"] == [2, 1, got["mean"]["shape"][1]]
        # asking computes exactly what the matching /v1 parameter computes
        v1_params = {"encode": {"samples": 1}, "decode": {"sample": True}, "score": {"explain": True}}.get(op, {})
        rows = {"encode": "inputs", "decode": "latents", "score": "inputs"}.get(op)
        v1_body = {**v1_params, "seed": 4, **({rows: [[0.25] * inputs[0]["shape"][1]] * 2} if rows else {})}
        if op == "sample":
            v1_body = {"n": 16, "seed": 4, "return_latents": True}
        v1 = (await client.post(f"/v1/models/{bundle}/{op}", json=v1_body)).json()
        for name in listed:
            np.testing.assert_allclose(np.asarray(got[name]["data"], float), np.ravel(v1[name]).astype(float))


ENCODE = "/v2/models/digits-diag.encode/infer"
# 200 rows of encode: 200 x (mean + log_var, 2 x 4) = 1,600 numbers, over VAE_MAX_ANSWER_VALUES=1024 in JSON and
# under the 4x binary outputs may hold
BIG = {"name": "x", "datatype": "FP32", "shape": [200, 64], "data": DIGITS[:200].reshape(-1).tolist()}
JSON_LIMIT = "one JSON answer holds at most 1024 (VAE_MAX_ANSWER_VALUES)"


@pytest.mark.anyio
async def test_an_empty_outputs_list_answers_every_output_held_to_the_json_limit(serving_repository: Path) -> None:
    # as gRPC (which cannot tell [] from no outputs) and Triton answer it
    async with serving(serving_repository, max_answer_values=1024) as client:
        empty = await client.post(INFER, json={"inputs": [_x_input()], "outputs": [], "parameters": {"seed": 1}})
        omitted = await client.post(INFER, json={"inputs": [_x_input()], "parameters": {"seed": 1}})
        big_json = await client.post(ENCODE, json={"inputs": [BIG], "outputs": []})
        binary = {"binary_data_output": True}
        big_binary = await client.post(ENCODE, json={"inputs": [BIG], "outputs": [], "parameters": binary})
    assert empty.status_code == 200 and empty.json()["outputs"] == omitted.json()["outputs"]
    names = ["elbo", "reconstruction", "kl", "log_likelihood", "anomaly_score", "percentile", "p_value", "is_anomaly"]
    assert [o["name"] for o in empty.json()["outputs"]] == names
    assert big_json.status_code == 413 and JSON_LIMIT in big_json.json()["error"]  # no binary allowance for JSON
    assert big_binary.status_code == 200 and big_binary.headers["content-type"] == "application/octet-stream"


@pytest.mark.anyio
async def test_an_outputs_own_binary_data_false_wins_over_binary_data_output(serving_repository: Path) -> None:
    # as in Triton; and an answer holding an output in JSON is held to the JSON limit
    outputs = [{"name": "elbo", "parameters": {"binary_data": False}}, {"name": "kl"}]
    big_outputs = [{"name": "mean", "parameters": {"binary_data": False}}, {"name": "log_var"}]
    binary = {"binary_data_output": True}
    async with serving(serving_repository, max_answer_values=1024) as client:
        r = await client.post(INFER, json={"inputs": [_x_input()], "outputs": outputs, "parameters": binary})
        big = await client.post(ENCODE, json={"inputs": [BIG], "outputs": big_outputs, "parameters": binary})
    split = int(r.headers["inference-header-content-length"])
    elbo, kl = orjson.loads(r.content[:split])["outputs"]
    assert elbo["name"] == "elbo" and len(elbo["data"]) == 1 and "parameters" not in elbo
    assert kl["parameters"] == {"binary_data_size": 4} and len(r.content) == split + 4
    assert big.status_code == 413 and JSON_LIMIT in big.json()["error"]


def _op_body(op: str, parameters: dict[str, object]) -> dict[str, object]:
    width = {"encode": 64, "score": 64, "decode": 4}.get(op)
    name = "z" if op == "decode" else "x"
    inputs = [{"name": name, "datatype": "FP32", "shape": [1, width], "data": [0.25] * width}] if width else []
    return {"inputs": inputs, "parameters": parameters}


@pytest.mark.anyio
async def test_a_parameter_of_the_wrong_type_is_refused_when_its_output_is_asked_for(serving_repository: Path) -> None:
    # types are strict: asking for the output a parameter adds fills in only a parameter left off (absent, null, or
    # its own type's off value), never a value validation refuses without the output
    refused = [
        ("encode", {"samples": False}, "z", "samples: Input should be a valid integer"),
        ("encode", {"samples": 0.0}, "z", "samples: Input should be a valid integer"),
        ("encode", {"samples": ""}, "z", "samples: Input should be a valid integer"),
        ("decode", {"sample": 0}, "x", "sample: Input should be a valid boolean"),
        ("score", {"explain": ""}, "feature_nll", "explain: Input should be a valid boolean"),
        ("sample", {"return_latents": 0}, "latents", "return_latents: Input should be a valid boolean"),
    ]
    filled = [
        ("encode", {"samples": 0}, "z"),
        ("encode", {"samples": None}, "z"),
        ("decode", {"sample": False}, "x"),
        ("sample", {"return_latents": None}, "latents"),
    ]
    async with serving(serving_repository) as client:
        for op, params, output, message in refused:
            path = f"/v2/models/digits-diag.{op}/infer"
            named = await client.post(path, json={**_op_body(op, params), "outputs": [{"name": output}]})
            unnamed = await client.post(path, json=_op_body(op, params))
            assert named.status_code == unnamed.status_code == 422, (op, params, named.text)
            assert named.json()["error"] == unnamed.json()["error"] == f"InvalidInput: {message}"
        for op, params, output in filled:
            path = f"/v2/models/digits-diag.{op}/infer"
            r = await client.post(path, json={**_op_body(op, params), "outputs": [{"name": output}]})
            assert r.status_code == 200 and [o["name"] for o in r.json()["outputs"]] == [output], (op, params, r.text)


def test_the_readme_names_service_functions_that_exist() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    cited = re.findall(r"`service/(\w+)\.py`,?\s+`(\w+)(?:\(\))?`", readme)  # `service/v2.py` `endpoints()`
    assert cited
    for module, name in cited:
        assert hasattr(importlib.import_module(f"service.{module}"), name), f"service/{module}.py has no {name}"

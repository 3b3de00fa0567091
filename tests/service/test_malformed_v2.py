"""Wrong JSON types and deep nesting in V2 (and /v1) bodies: each one a 4xx whose sentence names the field, never a
500 with a traceback in the log. JSON nested ~1,000 deep (orjson parses up to 1,024) is written by hand: Python's
json module cannot encode it, and repr() of it raised RecursionError inside the service's own error message."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from service.errors import InvalidInput
from service.v2_codec import HEADER_LENGTH, decode_request, shown
from tests.service.conftest import serving, vae_serve

MAX_ROWS = 8192  # VAE_MAX_ROWS's default

pytestmark = pytest.mark.anyio
ROW = [0.5] * 64
V2_SCORE = "/v2/models/digits-diag.score/infer"
LOAD = "/v2/repository/models/digits-diag/load"
JSON = {"Content-Type": "application/json"}
DEEP_ARRAY = "[" * 1000 + "1" + "]" * 1000
DEEP_OBJECT = '{"a":' * 1000 + "1" + "}" * 1000
LONG_STRING = '"' + "F" * 100_000 + '"'
TENSOR = {"name": '"x"', "datatype": '"FP32"', "shape": "[1,64]", "data": orjson.dumps(ROW).decode()}


def _object(fields: dict[str, str]) -> str:
    """A JSON object from raw JSON texts of its values (so a value may be nested deeper than json.dumps can go)."""
    return "{" + ",".join(f"{orjson.dumps(k).decode()}:{v}" for k, v in fields.items()) + "}"


def _with_tensor(**raw: str) -> bytes:
    """A score request whose one input has these fields replaced by raw JSON."""
    return _object({"inputs": f"[{_object({**TENSOR, **raw})}]"}).encode()


def _with_request(**raw: str) -> bytes:
    """A valid score request with these top-level fields set to raw JSON."""
    return _object({"inputs": f"[{_object(TENSOR)}]", **raw}).encode()


MALFORMED_V2 = [
    # datatype: a list or object was looked up in a dict (TypeError: unhashable), then repr()'d
    (_with_tensor(datatype="[]"), "input 'x': datatype must be a string such as \"FP32\", got an array"),
    (_with_tensor(datatype="{}"), 'datatype must be a string such as "FP32", got an object'),
    (_with_tensor(datatype=DEEP_ARRAY), 'datatype must be a string such as "FP32", got an array'),
    (_with_tensor(datatype=DEEP_OBJECT), 'datatype must be a string such as "FP32", got an object'),
    (_with_tensor(datatype="null"), 'datatype must be a string such as "FP32", got null'),
    (_with_tensor(datatype="true"), 'datatype must be a string such as "FP32", got true'),
    (_with_tensor(datatype="32"), 'datatype must be a string such as "FP32", got 32'),
    (_with_tensor(datatype=LONG_STRING), "datatype 'FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF'... is not supported"),
    (_with_tensor(name="[]"), "inputs[0].name must be a string, got an array"),
    (_with_tensor(name=DEEP_OBJECT), "inputs[0].name must be a string, got an object"),
    (_with_tensor(name="null"), "inputs[0].name must be a string, got null"),
    (_with_tensor(shape=DEEP_ARRAY), "input 'x': shape must be a list of non-negative integers; shape[0] is an array"),
    (_with_tensor(shape=DEEP_OBJECT), "shape must be a list of non-negative integers, got an object"),
    (_with_tensor(shape="null"), "shape must be a list of non-negative integers, got null"),
    (_with_tensor(shape='"1,64"'), "shape must be a list of non-negative integers, got '1,64'"),
    (_with_tensor(shape="[1e300,64]"), "shape[0] is 1e+300"),
    (_with_tensor(shape="[1,18446744073709551616]"), "shape[1] is 1.8446744073709552e+19"),
    (_with_tensor(shape="[true,64]"), "shape[0] is true"),
    (_with_tensor(shape="[1,{}]"), "shape[1] is an object"),
    (_with_tensor(data=DEEP_ARRAY), "input 'x': data must be a flat list or nested lists of equal lengths"),
    (_with_tensor(data=DEEP_OBJECT), "input 'x': data must be numbers of datatype FP32; found an object"),
    (_with_tensor(data="null"), "data must be numbers of datatype FP32; found null"),
    (_with_tensor(parameters="[]"), "input 'x' parameters must be a JSON object, got an array"),
    (_with_tensor(parameters=DEEP_ARRAY), "input 'x' parameters must be a JSON object, got an array"),
    (_with_tensor(parameters="null"), "input 'x' parameters must be a JSON object, got null"),
    (
        _with_tensor(parameters=f'{{"binary_data_size":{DEEP_ARRAY}}}'),
        "binary_data_size must be a non-negative integer, got an array",
    ),
    (
        _with_tensor(parameters='{"binary_data_size":{}}'),
        "binary_data_size must be a non-negative integer, got an object",
    ),
    (_with_tensor(parameters='{"binary_data_size":-1}'), "binary_data_size must be a non-negative integer, got -1"),
    (_with_tensor(parameters='{"binary_data_size":1.5}'), "binary_data_size must be a non-negative integer, got 1.5"),
    (_with_tensor(parameters='{"binary_data_size":true}'), "binary_data_size must be a non-negative integer, got true"),
    (
        _with_tensor(parameters='{"binary_data_size":18446744073709551616}'),
        "non-negative integer, got 1.8446744073709552e+19",
    ),
    (_with_request(outputs=f"[{DEEP_ARRAY}]"), "outputs[0] must be a JSON object, got an array"),
    (_with_request(outputs="{}"), "outputs must be an array"),
    (_with_request(outputs='[{"name":[]}]'), "outputs[0].name must be a string, got an array"),
    (
        _with_request(outputs='[{"name":"elbo","parameters":[]}]'),
        "output 'elbo' parameters must be a JSON object, got an array",
    ),
    (
        _with_request(outputs=f'[{{"name":"elbo","parameters":{{"binary_data":{DEEP_OBJECT}}}}}]'),
        "outputs[0].parameters.binary_data must be true or false, got an object",
    ),
    (
        _with_request(outputs='[{"name":"elbo","parameters":{"binary_data":[]}}]'),
        "outputs[0].parameters.binary_data must be true or false, got an array",
    ),
    (
        _with_request(outputs='[{"name":"elbo","parameters":{"binary_data":1}}]'),
        "outputs[0].parameters.binary_data must be true or false, got 1",
    ),
    (
        _with_request(parameters=f'{{"binary_data_output":{DEEP_ARRAY}}}'),
        "parameters.binary_data_output must be true or false, got an array",
    ),
    (
        _with_request(parameters='{"binary_data_output":"yes"}'),
        "parameters.binary_data_output must be true or false, got 'yes'",
    ),
    (_with_request(parameters=DEEP_ARRAY), "parameters must be a JSON object, got an array"),
    (_with_request(parameters="null"), "parameters must be a JSON object, got null"),
    (_with_request(id=DEEP_ARRAY), "id must be a string, got an array"),
    (_with_request(id=DEEP_OBJECT), "id must be a string, got an object"),
    (_object({"inputs": DEEP_ARRAY}).encode(), "inputs[0] must be a JSON object, got an array"),
    (_object({"inputs": DEEP_OBJECT}).encode(), "inputs must be an array of tensors"),
    (DEEP_ARRAY.encode(), "the inference request must be a JSON object"),
    (("[" * 1025 + "]" * 1025).encode(), "the inference header is not valid JSON"),
]
# checked by the model's request schema after decoding (in-process test only)
MALFORMED_V2_PARAMETERS = [
    (_with_request(parameters=f'{{"seed":{DEEP_ARRAY}}}'), "seed: Input should be a valid integer"),
    (
        _with_request(parameters=f'{{"importance_samples":{DEEP_OBJECT}}}'),
        "importance_samples: Input should be a valid integer",
    ),
    (
        _with_request(parameters=f'{{"threshold_quantile":{DEEP_ARRAY}}}'),
        "threshold_quantile: Input should be a valid number",
    ),
    (_with_request(parameters='{"explain":[]}'), "explain: Input should be a valid boolean"),
]
MALFORMED_VERSIONS = [
    DEEP_ARRAY,
    DEEP_OBJECT,
    "[]",
    "{}",
    "[1]",
    "true",
    "0",
    "-1",
    "1.5",
    "1e300",
    "18446744073709551616",
    '"' + "9" * 5000 + '"',
    LONG_STRING,
]


@pytest.mark.parametrize(("body", "fragment"), MALFORMED_V2, ids=[f[:60] for _, f in MALFORMED_V2])
def test_each_malformed_v2_field_is_invalid_input_naming_it(body: bytes, fragment: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_request(body, None, MAX_ROWS)
    assert fragment in str(caught.value)
    assert len(str(caught.value)) < 300  # names the value's type or quotes 40 characters, never echoes the body


def test_a_caller_value_is_shown_by_its_type_or_a_short_quote() -> None:
    deep = orjson.loads(DEEP_ARRAY)
    assert [shown(v) for v in (deep, orjson.loads(DEEP_OBJECT), None, True, 3, -2.5, "ab")] == [
        "an array",
        "an object",
        "null",
        "true",
        "3",
        "-2.5",
        "'ab'",
    ]
    assert shown("x" * 1000) == repr("x" * 40) + "..."
    assert shown(2**70) == "a number"  # bigger than JSON (orjson) ever gives, still no 4,000-digit str()


async def test_malformed_v2_bodies_are_422s_without_a_traceback(
    serving_repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(serving_repository) as client:
        answers = [
            (await client.post(V2_SCORE, content=body, headers=JSON), fragment)
            for body, fragment in MALFORMED_V2 + MALFORMED_V2_PARAMETERS
        ]
        header = b'{"inputs":[{"name":"x","datatype":[],"shape":[1,64],"parameters":{"binary_data_size":256}}]}'
        binary = await client.post(
            V2_SCORE, content=header + bytes(256), headers={**JSON, HEADER_LENGTH: str(len(header))}
        )
        after = await client.post(V2_SCORE, content=_with_request(), headers=JSON)
    for r, fragment in answers:
        assert r.status_code == 422 and fragment in r.json()["error"], (fragment, r.text[:300])
    assert binary.status_code == 422 and "datatype must be a string" in binary.json()["error"]
    assert after.status_code == 200
    assert not [rec for rec in caplog.records if rec.exc_info], "a traceback was logged"


async def test_load_with_a_version_of_any_wrong_json_type_is_a_422_naming_it(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(repo) as client:
        answers = [
            (v, await client.post(LOAD, content=_object({"parameters": _object({"version": v})}), headers=JSON))
            for v in MALFORMED_VERSIONS
        ]
        bodies = [
            await client.post(LOAD, content=body, headers=JSON)
            for body in (DEEP_ARRAY, _object({"parameters": DEEP_ARRAY}), _object({"parameters": "[]"}))
        ]
    for v, r in answers:
        assert r.status_code == 422, (v[:40], r.text)
        assert r.json()["error"].startswith("InvalidInput: parameters.version must be a positive integer, got ")
        assert len(r.text) < 300
    for r in bodies:
        assert r.status_code == 422 and "the load request must be a JSON object" in r.json()["error"], r.text
    assert not [rec for rec in caplog.records if rec.exc_info], "a traceback was logged"


async def test_a_deeply_nested_index_request_is_a_422(serving_repository: Path) -> None:
    async with serving(serving_repository) as client:
        answers = [
            await client.post("/v2/repository/index", content=body, headers=JSON)
            for body in (DEEP_ARRAY, _object({"ready": DEEP_ARRAY}), _object({"ready": DEEP_OBJECT}))
        ]
    for r in answers:
        assert r.status_code == 422 and 'optional boolean "ready"' in r.json()["error"], r.text


@pytest.mark.parametrize(
    ("op", "body", "fragment"),
    [
        ("score", _object({"inputs": DEEP_ARRAY}), "inputs rows must have 64 values"),
        ("score", _object({"inputs": "[[" + "[" * 1000 + "]" * 1000 + "]]"}), "inputs"),
        ("score", _object({"inputs": orjson.dumps([ROW]).decode(), "seed": DEEP_ARRAY}), "seed: Input should be"),
        (
            "score",
            _object({"inputs": orjson.dumps([ROW]).decode(), "importance_samples": DEEP_OBJECT}),
            "importance_samples",
        ),
        ("encode", _object({"inputs": orjson.dumps([ROW]).decode(), "samples": DEEP_ARRAY}), "samples"),
        ("encode", _object({"inputs": orjson.dumps([ROW]).decode(), "extra": DEEP_ARRAY}), "extra: Extra inputs"),
        ("decode", _object({"latents": DEEP_OBJECT}), "latents"),
        ("sample", _object({"n": DEEP_ARRAY}), "n: Input should be a valid integer"),
        ("sample", _object({"temperature": DEEP_OBJECT}), "temperature"),
        ("sample", DEEP_ARRAY, "the request body must be a JSON object"),
        ("sample", "[" * 1025 + "]" * 1025, "the body is not valid JSON"),
    ],
    ids=lambda value: value[:40] if isinstance(value, str) else None,
)
async def test_deep_nesting_in_a_v1_body_is_a_422(serving_repository: Path, op: str, body: str, fragment: str) -> None:
    async with serving(serving_repository) as client:
        r = await client.post(f"/v1/models/digits-diag/{op}", content=body, headers=JSON)
    assert r.status_code == 422 and fragment in r.json()["detail"], r.text[:300]


# against a real vae-serve: the two 500s of the security review


@pytest.fixture(scope="module")
def live(serving_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repo = tmp_path_factory.mktemp("malformed") / "repo"
    shutil.copytree(serving_repository, repo)
    with vae_serve(repo) as (base, _):
        yield base


def _no_500s(base: str) -> None:
    metrics = httpx.get(f"{base}/metrics", timeout=10).text
    assert 'status="500"' not in metrics
    assert httpx.post(f"{base}{V2_SCORE}", content=_with_request(), headers=JSON, timeout=10).status_code == 200


def test_a_list_as_v2_datatype_is_a_4xx(live: str) -> None:
    tensor = {"name": "x", "datatype": [], "shape": [1, 64], "data": ROW}
    r = httpx.post(f"{live}{V2_SCORE}", json={"inputs": [tensor]}, timeout=10)
    assert r.status_code == 422
    assert r.json() == {"error": "InvalidInput: input 'x': datatype must be a string such as \"FP32\", got an array"}
    _no_500s(live)


def test_a_1000_deep_load_version_is_a_4xx(live: str) -> None:
    body = _object({"parameters": _object({"version": DEEP_ARRAY})})
    r = httpx.post(f"{live}{LOAD}", content=body, headers=JSON, timeout=10)  # json= cannot nest 1,000 deep
    assert r.status_code == 422
    assert r.json() == {"error": "InvalidInput: parameters.version must be a positive integer, got an array"}
    _no_500s(live)

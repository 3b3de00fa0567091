"""decode_request: every malformed V2 body is InvalidInput naming the problem; valid tensors decode unchanged."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import InvalidInput, PayloadTooLarge
from service.v2_codec import DTYPES, InferRequest, decode_request

MAX_ROWS = 8192  # VAE_MAX_ROWS's default

HUGE_SHAPES = [[1099511627776, 1099511627776], [4611686018427387904, 4], [0, 9223372036854775807], [2**31]]


def _tensor(datatype: str = "FP32", shape: object = (2,), data: object = (0.5, 1.5), **extra: Any) -> dict[str, Any]:
    shape = list(shape) if isinstance(shape, tuple) else shape
    data = list(data) if isinstance(data, tuple) else data
    return {"name": "x", "datatype": datatype, "shape": shape, "data": data, **extra}


def _binary_tensor(shape: object, size: object, datatype: str = "FP32") -> dict[str, Any]:
    return {"name": "x", "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}


def _decode(header: object, blob: bytes | None = None) -> InferRequest:
    head = orjson.dumps(header)
    if blob is None:
        return decode_request(head, None, MAX_ROWS)
    return decode_request(head + blob, str(len(head)), MAX_ROWS)


def _refused(header: object, *fragments: str, blob: bytes | None = None) -> None:
    with pytest.raises(InvalidInput) as caught:
        _decode(header, blob)
    assert all(fragment in str(caught.value) for fragment in fragments), str(caught.value)


@pytest.mark.parametrize("shape", HUGE_SHAPES)
def test_shape_whose_size_overflows_is_refused_in_json(shape: list[int]) -> None:
    _refused({"inputs": [_tensor(shape=shape, data=[])]}, f"shape {shape} has a dimension over 2147483647")


@pytest.mark.parametrize("shape", HUGE_SHAPES)
def test_shape_whose_size_overflows_is_refused_in_binary(shape: list[int]) -> None:
    _refused({"inputs": [_binary_tensor(shape, 0)]}, f"shape {shape} has a dimension over 2147483647", blob=b"")


@pytest.mark.parametrize(
    ("shape", "fragment"),
    [
        ([0, 2**31 - 1, 2**31 - 1], "shape [0, 2147483647, 2147483647] is too large"),
        ([2**31 - 1] * 3, "shape [2147483647, 2147483647, 2147483647] is too large"),
        ([2**20, 2**20], "binary_data_size 0 does not match shape [1048576, 1048576] of FP32 (4398046511104 bytes)"),
        ([1] * 33, "shape has 33 dimensions; at most 32 are supported"),
        ([True, 2], "shape must be a list of non-negative integers"),
        ([2, False], "shape must be a list of non-negative integers"),
        ([-1], "shape must be a list of non-negative integers"),
        ([2.0], "shape must be a list of non-negative integers"),
        ("2", "shape must be a list of non-negative integers"),
    ],
)
def test_shape_that_numpy_cannot_hold_is_refused(shape: object, fragment: str) -> None:
    _refused({"inputs": [_binary_tensor(shape, 0)]}, fragment, blob=b"")


def test_empty_tensor_with_a_wide_dimension_still_decodes() -> None:
    request = _decode({"inputs": [_binary_tensor([0, 2**31 - 1], 0)]}, blob=b"")
    assert request.inputs["x"].shape == (0, 2**31 - 1)
    assert _decode({"inputs": [_tensor(shape=[0, 64], data=[])]}).inputs["x"].shape == (0, 64)


@pytest.mark.parametrize(
    ("datatype", "data", "fragment"),
    [
        ("INT64", [9223372036854775808], "9223372036854775808 is outside the range of datatype INT64 ["),
        ("INT64", [1, 18446744073709551615], "18446744073709551615 is outside the range of datatype INT64"),
        ("INT64", [0.5, 2**63], "found a number with a fraction (0.5)"),
        ("INT32", [1099511627776], "1099511627776 is outside the range of datatype INT32 [-2147483648, 2147483647]"),
        ("INT32", [2147483648], "2147483648 is outside the range of datatype INT32"),
        ("INT32", [-2147483649.0], "-2147483649.0 is outside the range of datatype INT32"),
    ],
)
def test_integer_outside_the_datatype_range_is_refused(datatype: str, data: list[Any], fragment: str) -> None:
    _refused({"inputs": [_tensor(datatype, [len(data)], data)]}, "input 'x': ", fragment)


@pytest.mark.parametrize(
    ("number", "fragment"),
    [
        (
            "18446744073709551616",
            "1.8446744073709552e+19 is outside the range of datatype INT64 [-92233",
        ),
        ("-10000000000000000000", "-1e+19 is outside the range of datatype INT64"),
        ("1e400", "the inference header is not valid JSON"),
    ],
)
def test_integer_beyond_64_bits_is_refused(number: str, fragment: str) -> None:
    # orjson reads integers beyond 64 bits as floats (and cannot write them, hence the hand-made body); one that
    # rounds to -2**63 exactly, such as -9223372036854775809, is in range by the time the codec sees it
    body = b'{"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [%s]}]}' % number.encode()
    with pytest.raises(InvalidInput) as caught:
        decode_request(body, None, MAX_ROWS)
    assert fragment in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    ("datatype", "data", "fragment"),
    [
        ("FP32", ["1.5"], "data must be numbers of datatype FP32; found a string"),
        ("FP32", [True], "data must be numbers of datatype FP32; found a boolean"),
        ("FP32", [True, 1.5], "data must be numbers of datatype FP32; found a boolean"),
        ("FP32", [[0.5, 0.0], [1.0, False]], "data must be numbers of datatype FP32; found a boolean"),
        ("FP32", [1.5, "a"], "data must be numbers of datatype FP32; found a string"),
        ("FP32", [{"a": 1}], "found an object"),
        ("FP64", [None, 1.0], "data must be numbers of datatype FP64; found null"),
        ("FP64", "1.5", "data must be numbers of datatype FP64; found a string"),
        ("INT64", [1.5], "data must be integers of datatype INT64; found a number with a fraction (1.5)"),
        ("INT64", [1, 2.25], "found a number with a fraction (2.25)"),
        ("INT32", ["1"], "data must be integers of datatype INT32; found a string"),
        ("INT64", [True, 2], "data must be integers of datatype INT64; found a boolean"),
        ("INT32", [False], "data must be integers of datatype INT32; found a boolean"),
        ("BOOL", [1], "data must be booleans of datatype BOOL; found a number"),
        ("BOOL", [True, 0], "data must be booleans of datatype BOOL; found a number"),
        ("BOOL", [0.5], "found a number"),
        ("BOOL", ["true"], "data must be booleans of datatype BOOL; found a string"),
    ],
)
def test_data_of_the_wrong_json_type_is_refused(datatype: str, data: object, fragment: str) -> None:
    size = int(np.size(np.asarray(data, dtype=object)))
    _refused({"inputs": [_tensor(datatype, [size], data)]}, "input 'x': ", fragment)


@pytest.mark.parametrize(
    "data",
    [[[1.0, 2.0], [3.0]], [[1.0, 2.0], 3.0], [1.0, [2.0]], [[[1.0]], [2.0]], [[[[[[[[[[1.0]]]]]]]]]] * 2 + [[1.0]]],
)
def test_ragged_data_is_refused(data: list[Any]) -> None:
    _refused({"inputs": [_tensor(shape=[3], data=data)]}, "data must be a flat list or nested lists of equal lengths")


def test_data_nested_deeper_than_numpy_allows_is_refused() -> None:
    data: object = 1.0
    for _ in range(100):
        data = [data]
    _refused({"inputs": [_tensor(shape=[1], data=data)]}, "input 'x': data must be a flat list or nested lists")


@pytest.mark.parametrize(
    ("datatype", "data", "expected"),
    [
        ("FP32", [1, 2], [1.0, 2.0]),
        ("FP32", [0, 1, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0]),
        ("FP32", [1e39, -1e39], [np.inf, -np.inf]),  # the caller reports non-finite values
        ("FP64", [[0.25, 3], [1, 0]], [0.25, 3.0, 1.0, 0.0]),
        ("INT64", [9223372036854775807, -9223372036854775808], [2**63 - 1, -(2**63)]),
        ("INT64", [1.0, 2], [1, 2]),
        ("INT64", [2**62 + 1, 1.0], [2**62 + 1, 1]),  # exact, although numpy would go through float64
        ("INT64", [0, 2**63 - 1], [0, 2**63 - 1]),
        ("INT32", [2147483647, -2147483648], [2**31 - 1, -(2**31)]),
        ("BOOL", [True, False], [True, False]),
    ],
)
def test_valid_json_data_decodes_exactly(datatype: str, data: list[Any], expected: list[Any]) -> None:
    got = _decode({"inputs": [_tensor(datatype, [len(expected)], data)]}).inputs["x"]
    assert got.dtype == DTYPES[datatype] and got.tolist() == expected


@pytest.mark.parametrize(
    ("header_length", "fragment"),
    [
        ("\xb2", "Inference-Header-Content-Length is '²', not a byte count in ASCII digits"),
        ("\u0661\u0662", "not a byte count in ASCII digits"),
        ("9" * 5000, "Inference-Header-Content-Length is '9999999999"),
        ("-1", "not a byte count in ASCII digits"),
        (" 12", "not a byte count in ASCII digits"),
        ("", "not a byte count in ASCII digits"),
        ("99999", "Inference-Header-Content-Length is '99999' but the body has"),
    ],
)
def test_header_length_that_is_not_an_ascii_byte_count_is_refused(header_length: str, fragment: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_request(orjson.dumps({"inputs": []}), header_length, MAX_ROWS)
    assert fragment in str(caught.value) and len(str(caught.value)) < 200


@pytest.mark.parametrize("request_id", [7, 1.5, True, ["a"], {"a": "b"}])
def test_id_that_is_not_a_string_is_refused(request_id: object) -> None:
    _refused({"id": request_id, "inputs": []}, "id must be a string")


def test_id_and_unknown_parameters_pass_through() -> None:
    params = {"seed": 3, "whatever": [1, {"a": None}]}
    assert _decode({"id": "req-7", "inputs": [], "parameters": params}).id == "req-7"
    assert _decode({"inputs": [], "parameters": params}).parameters == params
    assert _decode({"id": None, "inputs": []}).id is None


@pytest.mark.parametrize("size", [True, False, 8.0, "8", -1, None])
def test_binary_data_size_that_is_not_a_count_is_refused(size: object) -> None:
    _refused({"inputs": [_binary_tensor([2], size)]}, "binary_data_size must be a non-negative integer", blob=b"\0" * 8)


def test_bulk_tensor_decodes_to_the_same_array_from_json_and_binary() -> None:
    x = np.random.default_rng(0).standard_normal((1024, 64)).astype(np.float32)
    x[:, :8] = 0.0  # exact zeros send the JSON path through its boolean scan
    nested = _decode({"inputs": [_tensor(shape=[1024, 64], data=x.tolist())]}).inputs["x"]
    flat = _decode({"inputs": [_tensor(shape=[1024, 64], data=x.reshape(-1).tolist())]}).inputs["x"]
    binary = _decode({"inputs": [_binary_tensor([1024, 64], x.nbytes)]}, x.tobytes()).inputs["x"]
    for got in (nested, flat, binary):
        assert got.dtype == np.float32 and got.shape == (1024, 64)
        np.testing.assert_array_equal(got, x)


JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False) | st.text()
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(
    datatype=st.sampled_from(["FP32", "FP64", "INT32", "INT64", "BOOL"]),
    shape=st.lists(st.integers(0, 2**64) | st.booleans(), max_size=4) | JSON_VALUES,
    data=JSON_VALUES,
)
def test_any_json_tensor_decodes_or_is_invalid_input(datatype: str, shape: object, data: object) -> None:
    try:
        body = orjson.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": data}]})
    except orjson.JSONEncodeError:  # integers beyond 64 bits, which no client can send either
        return
    try:
        decode_request(body, None, MAX_ROWS)
    except InvalidInput:
        pass  # a refusal with the service's own error is an answer too; any other exception fails the test


def test_more_inputs_than_an_operation_takes_are_refused_by_their_count_before_any_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import service.grpc_codec as grpc_codec
    import service.v2_codec as v2_codec

    def no_decoding(*args: object) -> None:
        raise AssertionError("a tensor was decoded")

    monkeypatch.setattr(v2_codec, "_decode_input", no_decoding)
    monkeypatch.setattr(grpc_codec, "_decode_tensor", no_decoding)
    empty = {"name": "a", "datatype": "FP32", "shape": [0], "data": []}
    expected = "the request has 100000 inputs; an operation takes at most 1"
    with pytest.raises(InvalidInput, match="the request has 200 inputs; an operation takes at most 1"):
        decode_request(orjson.dumps({"inputs": [empty] * 200}), None, 10**6)
    with pytest.raises(PayloadTooLarge, match="each counted as a JSON object key"):  # so many are refused unparsed
        decode_request(orjson.dumps({"inputs": [empty] * 100_000}), None, 10**6)
    # outputs are counted before any input is decoded, as over gRPC
    many = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["a"]}], "outputs": [{"name": "o"}] * 10}
    with pytest.raises(InvalidInput, match="the request asks for 10 outputs; an operation has at most 9"):
        decode_request(orjson.dumps(many), None, 10**6)
    message = grpc_codec.proto().ModelInferRequest(model_name="m.score")
    for i in range(100_000):
        message.inputs.add(name=f"a{i}", datatype="FP32").shape.append(0)
    with pytest.raises(InvalidInput, match=expected):
        grpc_codec.decode_infer(message)


def test_a_shape_of_a_million_dimensions_is_refused_by_its_length() -> None:
    from service.grpc_codec import decode_infer, proto

    expected = "input 'x': shape has 1000000 dimensions; at most 32 are supported"
    with pytest.raises(InvalidInput, match=expected):
        decode_request(orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1] * 10**6}]}), None, 8192)
    message = proto().ModelInferRequest(model_name="m.score")
    message.inputs.add(name="x", datatype="FP32").shape.extend([1] * 10**6)
    with pytest.raises(InvalidInput, match=expected):
        decode_infer(message)


def test_typed_grpc_contents_of_the_wrong_count_are_refused_naming_both_counts() -> None:
    from service.grpc_codec import decode_infer, proto

    message = proto().ModelInferRequest(model_name="m.score")
    tensor = message.inputs.add(name="x", datatype="FP32")
    tensor.shape.extend([2, 3])
    tensor.contents.fp32_contents.extend([0.5] * 5)
    with pytest.raises(InvalidInput, match=r"input 'x': 5 values for shape \[2, 3\] \(6 expected\)"):
        decode_infer(message)
    tensor.contents.fp32_contents.append(0.5)
    np.testing.assert_array_equal(decode_infer(message).inputs["x"], np.full((2, 3), 0.5, np.float32))


def test_a_json_body_of_more_arrays_and_objects_than_its_rows_allow_is_refused_before_parsing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import service.v2_codec as v2_codec
    from service.plumbing import parse_json

    rows = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [8192, 2], "data": [[0.5, 0.5]] * 8192}]}
    assert decode_request(orjson.dumps(rows), None, 8192).inputs["x"].shape == (8192, 2)  # a full request passes
    empties = b"[" + b",".join([b"[]"] * 100_000) + b"]"  # 200 KB, 100,001 arrays
    monkeypatch.setattr(v2_codec.orjson, "loads", lambda data: pytest.fail("parsed"))
    with pytest.raises(PayloadTooLarge, match="the body holds 100001 JSON arrays and objects; .* at most 8192 rows"):
        parse_json(empties, 8192)
    with pytest.raises(PayloadTooLarge, match="the body holds 100004 JSON arrays and objects"):
        decode_request(b'{"inputs": [{"data": ' + empties + b"}]}", None, 8192)
    keys = orjson.dumps({"inputs": rows["inputs"], "parameters": {f"p{i}": 0 for i in range(100_000)}})
    with pytest.raises(PayloadTooLarge, match="the body holds 100006 colons, each counted as a JSON object key"):
        decode_request(keys, None, 8192)  # one object of 100,000 keys
    with pytest.raises(PayloadTooLarge, match="JSON object key"):
        parse_json(keys, 8192)
    header = (
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1024], "parameters": {"binary_data_size": 4096}}]}'
    )
    blob = b"[" * 4096  # binary data that happens to be brackets: not JSON, not counted
    monkeypatch.undo()
    assert decode_request(header + blob, str(len(header)), 1).inputs["x"].shape == (1, 1024)

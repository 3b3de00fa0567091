"""Open Inference Protocol (KServe V2) tensors in JSON and in Triton's binary tensor extension.

A binary request is `<JSON header><raw bytes of each binary input, in order>`; the header's length is given by
the `Inference-Header-Content-Length` HTTP header, and each binary input says its byte count in
`parameters.binary_data_size`. Responses use the same layout when any output is asked for as binary: by its own
`binary_data`, else by the request's `binary_data_output` (an output's own choice wins, as in Triton).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from contract.operations import OPERATIONS
from service.answers import REST_FORMS, AnswerForms, render
from service.errors import InvalidInput, quoted
from service.schemas import check_json_containers, holds_bool

HEADER_LENGTH = "inference-header-content-length"
DTYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "INT64": np.dtype("<i8"),
    "INT32": np.dtype("<i4"),
    "BOOL": np.dtype("?"),
}
NAMES = {v: k for k, v in DTYPES.items()}
VALUES = {"FP32": "numbers", "FP64": "numbers", "INT64": "integers", "INT32": "integers", "BOOL": "booleans"}
JSON_TYPES = {
    bool: "a boolean",
    int: "a number",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "an object",
    type(None): "null",
}
MAX_DIM = 2**31 - 1
MAX_DIMS = 32  # numpy 1.26's limit (numpy 2 allows 64)
# The most inputs an operation takes (x, z, or none for sample). A request with more is refused by their count before
# any is decoded: a million empty tensors would otherwise each be decoded, and named in the error, on the event loop.
MAX_INPUTS = max(int(spec.tensor is not None) for spec in OPERATIONS.values())
# The most outputs an operation has. Each name asked for is one output of the answer, so a request may name each at
# most once (repeats would multiply an answer past VAE_MAX_ANSWER_VALUES, which counts each output once), and one
# naming more than this is refused by their count before any name is read.
MAX_OUTPUTS = max(len(spec.outputs) for spec in OPERATIONS.values())
# Request parameters read at most: an operation's fields, binary_data_output, and what clients add (Triton's
# priority, timeout, sequence ids) fit many times over; a map of millions would be walked on the event loop.
MAX_PARAMETERS = 64
# ASCII digits only: str.isdigit() also accepts '²', which int() refuses; 19 digits already exceed any body.
BYTE_COUNT = re.compile(r"[0-9]{1,19}")


Declared = Callable[[str, str, list[int]], None]  # (input name, datatype, shape): raises when refused


@dataclass
class InferRequest:
    id: str | None
    parameters: dict[str, Any]
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None  # None: every output; so is an empty list, as over gRPC (which cannot tell) and Triton
    binary_outputs: dict[str, bool]  # an output's own binary_data, which wins over binary_default (as in Triton)
    binary_default: bool
    forms: AnswerForms = REST_FORMS  # what a refusal of its size calls the answer's forms

    def binary(self, name: str) -> bool:
        """Whether output `name` is answered as raw bytes."""
        return self.binary_outputs.get(name, self.binary_default)

    def all_binary(self) -> bool:
        """Whether every output the answer holds is raw bytes: what earns the 4x VAE_MAX_ANSWER_VALUES allowance."""
        return self.binary_default if self.outputs is None else all(map(self.binary, self.outputs))


def decode_request(
    body: bytes, header_length: str | None, max_rows: int, declared: Declared | None = None
) -> InferRequest:
    """Parse a JSON or binary-extension body into numpy inputs; every malformation is InvalidInput naming it. A JSON
    header holding more arrays and objects than a request of max_rows rows may is refused before it is parsed, and
    an input whose declared name, datatype or shape `declared` refuses before its values are read."""
    if header_length is not None:
        if not BYTE_COUNT.fullmatch(header_length):
            raise InvalidInput(
                f"Inference-Header-Content-Length is {header_length[:40]!r}, not a byte count in ASCII digits"
            )
        split = int(header_length)
        if split > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length is {header_length!r} but the body has {len(body)} bytes"
            )
        header_bytes, blob = body[:split], memoryview(body)[split:]
    else:
        header_bytes, blob = body, memoryview(b"")
    check_json_containers(header_bytes, max_rows)
    try:
        header = orjson.loads(header_bytes)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the inference header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidInput("the inference request must be a JSON object")
    params = _dict(header.get("parameters", {}), "parameters")
    check_parameter_count(len(params))
    raw_inputs = header.get("inputs", [])
    if not isinstance(raw_inputs, list):
        raise InvalidInput("inputs must be an array of tensors")
    check_input_count(len(raw_inputs))
    if isinstance(header.get("outputs"), list):  # counted before any input is decoded, as over gRPC
        check_output_count(len(header["outputs"]))
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, item in enumerate(raw_inputs):
        tensor, used = _decode_input(_dict(item, f"inputs[{i}]"), i, blob[offset:], declared)
        name = item["name"]
        if name in inputs:
            raise InvalidInput(f"input {shown(name)} is given twice")
        inputs[name] = tensor
        offset += used
    if offset != len(blob):
        raise InvalidInput(f"the body has {len(blob) - offset} bytes after the last binary input")
    outputs, binary = _requested_outputs(header.get("outputs"))
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"id must be a string, got {shown(request_id)}")
    return InferRequest(
        id=request_id,
        parameters=params,
        inputs=inputs,
        outputs=outputs,
        binary_outputs=binary,
        binary_default=_flag(params, "binary_data_output", "parameters"),
    )


def json_type(value: object) -> str:
    return JSON_TYPES.get(type(value), "a value JSON does not have")


def shown(value: object) -> str:
    """A caller's JSON value as an error message quotes it: a string cut to 40 characters, a number or literal as
    JSON writes it, an array or object by its type alone. Never repr() a caller's array or object: one nested 1,000
    deep (orjson parses up to 1,024) raises RecursionError in repr, and a long one would echo the whole body."""
    if isinstance(value, str):
        return quoted(value)
    if isinstance(value, bool) or value is None:
        return "null" if value is None else str(value).lower()
    if isinstance(value, float) or (isinstance(value, int) and abs(value) < 2**64):  # orjson parses no bigger int
        return repr(value)
    return json_type(value)


def _dict(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be a JSON object, got {shown(value)}")
    return value


def _flag(params: dict[str, Any], key: str, where: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}.{key} must be true or false, got {shown(value)}")
    return value


def _decode_input(
    item: dict[str, Any], i: int, blob: memoryview, declared: Declared | None = None
) -> tuple[np.ndarray, int]:
    name, datatype = item.get("name"), item.get("datatype")
    if not isinstance(name, str):
        raise InvalidInput(f"inputs[{i}].name must be a string, got {shown(name)}")
    if not isinstance(datatype, str):  # checked before the lookup: a list or object is no dict key (TypeError)
        raise InvalidInput(f'input {shown(name)}: datatype must be a string such as "FP32", got {shown(datatype)}')
    if datatype not in DTYPES:
        raise InvalidInput(f"input {shown(name)}: datatype {shown(datatype)} is not supported; use FP32")
    dtype = DTYPES[datatype]
    shape, count = check_shape(name, item.get("shape"), dtype.itemsize)
    if declared is not None:  # one wide row of 8M values is refused here, not after they are all converted
        declared(name, datatype, shape)
    params = _dict(item.get("parameters", {}), f"input {shown(name)} parameters")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(
                f"input {shown(name)}: binary_data_size must be a non-negative integer, got {shown(size)}"
            )
        if size != count * dtype.itemsize:
            raise InvalidInput(
                f"input {shown(name)}: binary_data_size {size} does not match shape {shape} of {datatype} "
                f"({count * dtype.itemsize} bytes)"
            )
        if size > len(blob):
            raise InvalidInput(f"input {shown(name)}: body truncated, {size} bytes announced, {len(blob)} left")
        return np.frombuffer(blob[:size], dtype=dtype).reshape(shape), size
    if "data" not in item:
        raise InvalidInput(f"input {shown(name)} has neither data nor parameters.binary_data_size")
    flat = _json_values(name, datatype, item["data"]).reshape(-1)
    if flat.size != count:
        raise InvalidInput(f"input {shown(name)}: {flat.size} values for shape {shape} ({count} expected)")
    return flat.reshape(shape), 0


def check_input_count(count: int) -> None:
    if count > MAX_INPUTS:
        raise InvalidInput(f"the request has {count} inputs; an operation takes at most {MAX_INPUTS}")


def check_output_count(count: int) -> None:
    if count > MAX_OUTPUTS:
        raise InvalidInput(f"the request asks for {count} outputs; an operation has at most {MAX_OUTPUTS}")


def check_parameter_count(count: int) -> None:
    if count > MAX_PARAMETERS:
        raise InvalidInput(f"parameters has {count} entries; a request may give at most {MAX_PARAMETERS}")


def once_each(names: list[str]) -> list[str]:
    """The output names a request asks for, each at most once (count checked first: check_output_count)."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidInput(f"output {shown(name)} is asked for twice; name each output once")
        seen.add(name)
    return names


def check_rank(name: str, dims: int) -> None:
    """Before the dimensions are read one by one: a shape of millions of 1s is refused by its length."""
    if dims > MAX_DIMS:
        raise InvalidInput(f"input {shown(name)}: shape has {dims} dimensions; at most {MAX_DIMS} are supported")


def check_shape(name: str, shape: object, itemsize: int) -> tuple[list[int], int]:
    """(shape, element count), counted in Python ints: np.prod would overflow int64 without a word."""
    if not isinstance(shape, list):
        raise InvalidInput(f"input {shown(name)}: shape must be a list of non-negative integers, got {shown(shape)}")
    check_rank(name, len(shape))
    for j, d in enumerate(shape):
        if type(d) is not int or d < 0:  # bool is not a size
            raise InvalidInput(
                f"input {shown(name)}: shape must be a list of non-negative integers; shape[{j}] is {shown(d)}"
            )
    if any(d > MAX_DIM for d in shape):
        raise InvalidInput(f"input {shown(name)}: shape {shape} has a dimension over {MAX_DIM}")
    # numpy refuses even an empty array whose non-zero dimensions span more bytes than an index can address
    if math.prod(d for d in shape if d) * itemsize > np.iinfo(np.intp).max:
        raise InvalidInput(f"input {shown(name)}: shape {shape} is too large")
    return shape, math.prod(shape)


def _json_values(name: str, datatype: str, data: object) -> np.ndarray:
    """`data`, flat or row-major nested, as an array of `datatype`; strict about JSON types where numpy is not."""
    try:
        arr = np.asarray(data)  # one C pass finds the shape and the common kind: f/i/u, b, U (strings) or O
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"input {shown(name)}: data must be a flat list or nested lists of equal lengths") from None
    if arr.size == 0 or _plainly_valid(arr, datatype, data):
        with np.errstate(over="ignore"):  # out-of-range values become inf; the caller reports non-finite ones
            return arr.astype(DTYPES[datatype], copy=False)
    return _checked_values(name, datatype, data)


def _plainly_valid(arr: np.ndarray, datatype: str, data: object) -> bool:
    """The fast path's test: numpy's kind fits `datatype`, integers are in range and no boolean hides in numbers."""
    kind = arr.dtype.kind
    if datatype == "BOOL":
        return kind == "b"
    if kind not in ("fiu" if VALUES[datatype] == "numbers" else "iu"):  # floats for INT take the exact path
        return False
    if kind in "iu" and VALUES[datatype] == "integers":
        info = np.iinfo(DTYPES[datatype])
        if int(arr.min()) < info.min or int(arr.max()) > info.max:
            return False
    return not holds_bool(arr, data)


def _checked_values(name: str, datatype: str, data: object) -> np.ndarray:
    """The slow path: name the first value numpy would have coerced, or convert exactly (big INT64 among floats)."""
    for value in _leaves(data):
        problem = _problem(value, datatype)
        if problem is not None:
            raise InvalidInput(f"input {shown(name)}: {problem}")
    try:
        with np.errstate(over="ignore"):
            return np.asarray(data, dtype=DTYPES[datatype])
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"input {shown(name)}: data must be {VALUES[datatype]} of datatype {datatype}") from None


def _leaves(data: object) -> Iterator[object]:
    stack = [iter([data])]  # no recursion: orjson nests up to 1024 deep, past Python's recursion limit
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            yield value
        else:
            stack.pop()


def _problem(value: object, datatype: str) -> str | None:
    """Why `value` cannot be an element of a `datatype` tensor; None when it can."""
    wanted = VALUES[datatype]
    if isinstance(value, bool) or not isinstance(value, int | float):
        ok = isinstance(value, bool) and wanted == "booleans"
    elif wanted != "integers":
        ok = wanted == "numbers"
    elif isinstance(value, float) and not value.is_integer():
        return f"data must be integers of datatype {datatype}; found a number with a fraction ({value!r})"
    else:
        info = np.iinfo(DTYPES[datatype])
        if not info.min <= value <= info.max:  # Python compares an int with a float exactly
            return f"{value!r} is outside the range of datatype {datatype} [{info.min}, {info.max}]"
        ok = True
    return None if ok else f"data must be {wanted} of datatype {datatype}; found {json_type(value)}"


def _requested_outputs(raw: object) -> tuple[list[str] | None, dict[str, bool]]:
    """(the output names asked for, None for every output; each one's own binary_data choice where it makes one)"""
    if raw is None:
        return None, {}
    if not isinstance(raw, list):
        raise InvalidInput("outputs must be an array")
    check_output_count(len(raw))
    names, binary = [], {}
    for i, item in enumerate(raw):
        item = _dict(item, f"outputs[{i}]")
        name = item.get("name")
        if not isinstance(name, str):
            raise InvalidInput(f"outputs[{i}].name must be a string, got {shown(name)}")
        names.append(name)
        parameters = _dict(item.get("parameters", {}), f"output {shown(name)} parameters")
        if "binary_data" in parameters:
            binary[name] = _flag(parameters, "binary_data", f"outputs[{i}].parameters")
    return once_each(names) or None, binary


def encode_response(
    model_name: str,
    version: str,
    request: InferRequest,
    tensors: dict[str, np.ndarray],
    parameters: dict[str, Any],
    values: int = 0,
) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when the body is plain JSON); `values`: the numbers the answer holds, which
    decide how its JSON is written (service/answers.py)."""
    outputs, blobs = [], []
    for name in request.outputs if request.outputs is not None else list(tensors):
        arr = np.ascontiguousarray(tensors[name])
        if arr.dtype not in NAMES:
            arr = arr.astype(np.float32)
        entry: dict[str, Any] = {"name": name, "datatype": NAMES[arr.dtype], "shape": list(arr.shape)}
        if request.binary(name):
            data = arr.tobytes()  # little-endian on every platform onnxruntime-gpu ships for
            entry["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        else:
            entry["data"] = arr.reshape(-1)
        outputs.append(entry)
    head: dict[str, Any] = {"model_name": model_name, "model_version": version, "outputs": outputs}
    if request.id is not None:
        head["id"] = request.id
    if parameters:
        head["parameters"] = parameters
    header = render(head, values)  # big outputs a slice at a time: then this runs off the event loop
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)

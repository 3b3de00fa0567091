"""Open Inference Protocol (KServe V2) tensors in JSON and in Triton's binary tensor extension.

A binary request is `<JSON header><raw bytes of each binary input, in order>`; the header's length is given by
the `Inference-Header-Content-Length` HTTP header, and each binary input says its byte count in
`parameters.binary_data_size`. Responses use the same layout when any output is asked for as binary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from service.errors import InvalidInput

HEADER_LENGTH = "inference-header-content-length"
DTYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "INT64": np.dtype("<i8"),
    "INT32": np.dtype("<i4"),
    "BOOL": np.dtype("?"),
}
NAMES = {v: k for k, v in DTYPES.items()}


@dataclass
class InferRequest:
    id: str | None
    parameters: dict[str, Any]
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None  # None: every output
    binary_outputs: set[str]
    binary_default: bool


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse a JSON or binary-extension body into numpy inputs; every malformation is InvalidInput naming it."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length is {header_length!r} but the body has {len(body)} bytes"
            )
        split = int(header_length)
        header_bytes, blob = body[:split], memoryview(body)[split:]
    else:
        header_bytes, blob = body, memoryview(b"")
    try:
        header = orjson.loads(header_bytes)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the inference header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidInput("the inference request must be a JSON object")
    params = _dict(header.get("parameters", {}), "parameters")
    raw_inputs = header.get("inputs", [])
    if not isinstance(raw_inputs, list):
        raise InvalidInput("inputs must be an array of tensors")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, item in enumerate(raw_inputs):
        tensor, used = _decode_input(_dict(item, f"inputs[{i}]"), i, blob[offset:])
        name = item["name"]
        if name in inputs:
            raise InvalidInput(f"input {name!r} is given twice")
        inputs[name] = tensor
        offset += used
    if offset != len(blob):
        raise InvalidInput(f"the body has {len(blob) - offset} bytes after the last binary input")
    outputs, binary = _requested_outputs(header.get("outputs"))
    request_id = header.get("id")
    return InferRequest(
        id=str(request_id) if request_id is not None else None,
        parameters=params,
        inputs=inputs,
        outputs=outputs,
        binary_outputs=binary,
        binary_default=bool(params.get("binary_data_output", False)),
    )


def _dict(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be a JSON object")
    return value


def _decode_input(item: dict[str, Any], i: int, blob: memoryview) -> tuple[np.ndarray, int]:
    name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
    if not isinstance(name, str):
        raise InvalidInput(f"inputs[{i}].name must be a string")
    if datatype not in DTYPES:
        raise InvalidInput(f"input {name!r}: datatype {datatype!r} is not supported; use FP32")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape must be a list of non-negative integers")
    dtype, count = DTYPES[datatype], int(np.prod(shape, dtype=np.int64))
    params = _dict(item.get("parameters", {}), f"input {name!r} parameters")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or size < 0:
            raise InvalidInput(f"input {name!r}: binary_data_size must be a non-negative integer")
        if size != count * dtype.itemsize:
            raise InvalidInput(
                f"input {name!r}: binary_data_size {size} does not match shape {shape} of {datatype} "
                f"({count * dtype.itemsize} bytes)"
            )
        if size > len(blob):
            raise InvalidInput(f"input {name!r}: body truncated, {size} bytes announced, {len(blob)} left")
        return np.frombuffer(blob[:size], dtype=dtype).reshape(shape), size
    if "data" not in item:
        raise InvalidInput(f"input {name!r} has neither data nor parameters.binary_data_size")
    try:
        with np.errstate(over="ignore"):  # out-of-range values become inf; the caller reports non-finite ones
            flat = np.asarray(item["data"], dtype=dtype).reshape(-1)
    except (TypeError, ValueError):
        raise InvalidInput(f"input {name!r}: data must be numbers of datatype {datatype}") from None
    if flat.size != count:
        raise InvalidInput(f"input {name!r}: {flat.size} values for shape {shape} ({count} expected)")
    return flat.reshape(shape), 0


def _requested_outputs(raw: object) -> tuple[list[str] | None, set[str]]:
    if raw is None:
        return None, set()
    if not isinstance(raw, list):
        raise InvalidInput("outputs must be an array")
    names, binary = [], set()
    for i, item in enumerate(raw):
        item = _dict(item, f"outputs[{i}]")
        name = item.get("name")
        if not isinstance(name, str):
            raise InvalidInput(f"outputs[{i}].name must be a string")
        names.append(name)
        if _dict(item.get("parameters", {}), f"output {name!r} parameters").get("binary_data", False):
            binary.add(name)
    return names, binary


def encode_response(
    model_name: str, version: str, request: InferRequest, tensors: dict[str, np.ndarray], parameters: dict[str, Any]
) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when the body is plain JSON)."""
    outputs, blobs = [], []
    for name in request.outputs if request.outputs is not None else list(tensors):
        arr = np.ascontiguousarray(tensors[name])
        if arr.dtype not in NAMES:
            arr = arr.astype(np.float32)
        entry: dict[str, Any] = {"name": name, "datatype": NAMES[arr.dtype], "shape": list(arr.shape)}
        if request.binary_default or name in request.binary_outputs:
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
    header = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)

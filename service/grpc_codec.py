"""Open Inference Protocol messages over gRPC: the protobuf classes of service/protos/open_inference.proto, and
ModelInferRequest / ModelInferResponse to and from the V2 REST face's InferRequest and tensors (service/v2_codec.py).

The classes come from the descriptor set compiled from the vendored .proto (open_inference.binpb, regenerated and
compared by tests/service/test_grpc_proto.py) into a descriptor pool of their own: tritonclient.grpc registers
Triton's full grpc_service.proto, with the same `inference.*` names, in protobuf's default pool, and a second,
different file of those names there would make whichever is imported second fail in a process that has both.

Inputs come as typed contents (the field of their datatype) or as raw little-endian bytes (raw_input_contents, one
entry per input). The answer is as the request parameter binary_data_output asks: true raw (raw_output_contents), false
typed contents; without it, typed when the client sent its inputs so, else raw, as Triton answers: tritonclient.grpc
reads only raw outputs, and a sample request has no input to tell.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from service.answers import GRPC_FORMS
from service.errors import InvalidInput
from service.v2_codec import (
    DTYPES,
    MAX_INPUTS,
    NAMES,
    Declared,
    InferRequest,
    check_input_count,
    check_output_count,
    check_parameter_count,
    check_rank,
    check_shape,
    once_each,
    shown,
)

DESCRIPTORS = Path(__file__).with_name("protos") / "open_inference.binpb"
PROTO_FILE = "open_inference.proto"
SERVICE = "inference.GRPCInferenceService"
# a datatype's field in InferTensorContents
CONTENTS = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT64": "int64_contents",
    "INT32": "int_contents",
    "BOOL": "bool_contents",
}


class Proto:
    """The message classes of open_inference.proto by name (proto().ModelInferRequest), and its service."""

    def __init__(self, path: Path = DESCRIPTORS) -> None:
        files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
        self.pool = descriptor_pool.DescriptorPool()
        for file in files.file:
            self.pool.Add(file)
        source = self.pool.FindFileByName(PROTO_FILE)
        self.classes = {
            name: message_factory.GetMessageClass(desc) for name, desc in source.message_types_by_name.items()
        }
        self.service = self.pool.FindServiceByName(SERVICE)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.classes[name]
        except KeyError:
            raise AttributeError(name) from None


@cache
def proto() -> Proto:
    return Proto()


def parameter_value(param: Any) -> object:
    """The value an InferParameter or ModelRepositoryParameter holds (None when it holds none)."""
    which = param.WhichOneof("parameter_choice")
    return None if which is None else getattr(param, which)


def decode_infer(message: Any, declared: Declared | None = None) -> InferRequest:
    """A ModelInferRequest as the REST face's InferRequest; every malformation is InvalidInput naming it (or what
    `declared` raises). Every repeated field is refused by its length before it is walked, and `declared` checks
    each input's name, datatype and shape before its values are read (typed values pass one by one through numpy,
    holding the GIL)."""
    check_input_count(len(message.inputs))
    raw_count = len(message.raw_input_contents)
    if raw_count and raw_count != len(message.inputs):
        raise InvalidInput(
            f"raw_input_contents has {raw_count} entries for {len(message.inputs)} inputs; give one each"
        )
    check_parameter_count(len(message.parameters))
    check_output_count(len(message.outputs))
    raw = list(message.raw_input_contents)
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(message.inputs):
        if tensor.name in inputs:
            raise InvalidInput(f"input {shown(tensor.name)} is given twice")
        if raw and tensor.HasField("contents"):
            raise InvalidInput(
                f"input {shown(tensor.name)} has contents while raw_input_contents is given; use one form"
            )
        inputs[tensor.name] = _decode_tensor(tensor, raw[i] if raw else None, declared)
    params = {key: parameter_value(value) for key, value in message.parameters.items()}
    typed = any(tensor.HasField("contents") for tensor in message.inputs)
    # raw unless the inputs came typed (tritonclient.grpc reads raw answers only; sample sends no input), or as asked
    binary = params.get("binary_data_output", not typed)
    if not isinstance(binary, bool):
        raise InvalidInput(f"parameters.binary_data_output must be true or false, got {shown(binary)}")
    return InferRequest(
        id=message.id or None,
        parameters=params,
        inputs=inputs,
        outputs=once_each([o.name for o in message.outputs]) or None,
        binary_outputs={},
        binary_default=binary,
        forms=GRPC_FORMS,
    )


def typed_values(message: Any) -> int:
    """The values a ModelInferRequest carries in typed contents (decoding 2^19 of them takes about 40 ms); 0 when it
    has more inputs than an operation takes, which decode_infer refuses by their count."""
    if len(message.inputs) > MAX_INPUTS:
        return 0
    return sum(len(getattr(t.contents, CONTENTS.get(t.datatype, "fp32_contents"))) for t in message.inputs)


def _decode_tensor(tensor: Any, raw: bytes | None, declared: Declared | None) -> np.ndarray:
    name, datatype = tensor.name, tensor.datatype
    if datatype not in DTYPES:
        raise InvalidInput(f"input {shown(name)}: datatype {shown(datatype)} is not supported; use FP32")
    dtype = DTYPES[datatype]
    check_rank(name, len(tensor.shape))  # before list(): a packed field of 64M dimensions is a 512 MB list
    shape, count = check_shape(name, list(tensor.shape), dtype.itemsize)
    if declared is not None:
        declared(name, datatype, shape)
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise InvalidInput(
                f"input {shown(name)}: raw_input_contents holds {len(raw)} bytes; shape {shape} of {datatype} is "
                f"{count * dtype.itemsize} bytes"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    given = [field.name for field, _ in tensor.contents.ListFields()]
    if given and given != [CONTENTS[datatype]]:
        raise InvalidInput(
            f"input {shown(name)}: datatype {datatype} takes its values in contents.{CONTENTS[datatype]}"
        )
    values = getattr(tensor.contents, CONTENTS[datatype])
    if len(values) != count:  # counted before the conversion, which passes through a Python float a value
        raise InvalidInput(f"input {shown(name)}: {len(values)} values for shape {shape} ({count} expected)")
    return np.asarray(values, dtype=dtype).reshape(shape)


def encode_infer(
    model_name: str, version: str, request: InferRequest, tensors: dict[str, np.ndarray], parameters: dict[str, Any]
) -> Any:
    """The ModelInferResponse of an answer: the requested outputs (else every one) in request order, raw or typed."""
    response = proto().ModelInferResponse(model_name=model_name, model_version=version, id=request.id or "")
    for name in request.outputs if request.outputs is not None else list(tensors):
        arr = np.ascontiguousarray(tensors[name])
        if arr.dtype not in NAMES:
            arr = arr.astype(np.float32)
        datatype = NAMES[arr.dtype]
        out = response.outputs.add(name=name, datatype=datatype, shape=arr.shape)
        if request.binary_default:
            response.raw_output_contents.append(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
        else:
            getattr(out.contents, CONTENTS[datatype]).extend(arr.reshape(-1).tolist())
    for key, value in parameters.items():
        set_parameter(response.parameters[key], value)
    return response


def tensor_bytes(response: Any) -> int:
    """The bytes of a ModelInferResponse's tensors, raw and typed (its framing aside): what bounds its size, counted
    without ByteSize(), which serialises the message (about 90 ms for 16 MiB here)."""
    typed = sum(len(getattr(o.contents, CONTENTS[o.datatype])) * DTYPES[o.datatype].itemsize for o in response.outputs)
    return typed + sum(len(raw) for raw in response.raw_output_contents)


def set_parameter(param: Any, value: object) -> None:
    """An InferParameter holding `value` (bool, int, float; anything else as its text)."""
    if isinstance(value, bool | np.bool_):
        param.bool_param = bool(value)
    elif isinstance(value, int | np.integer):
        param.int64_param = int(value)
    elif isinstance(value, float | np.floating):
        param.double_param = float(value)
    else:
        param.string_param = str(value)

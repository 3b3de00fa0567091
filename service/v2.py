"""Open Inference Protocol v2 (KServe / Triton) over REST, next to /v1, on the same runners and batchers.

Every bundle appears as four V2 models, `<bundle>.encode`, `<bundle>.decode`, `<bundle>.sample` and
`<bundle>.score` (bundle names cannot contain a dot, so the split is unambiguous). Request `parameters` carry
what /v1 takes as fields: seed, fresh_noise, samples, sample, n, temperature, noise, return_latents,
importance_samples, explain, threshold_quantile. A V2 request and a /v1 request with the same rows and parameters
return the same numbers (with no seed, both use the same fixed default).
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

import numpy as np
import orjson
from fastapi import Request, Response

from contract.operations import OPERATIONS, Output, asked_for
from contract.requests import REQUESTS
from runtime.operations import Operations
from runtime.rows import check_row_shape, check_rows
from service.access import Role
from service.answers import off_loop
from service.endpoints import Endpoint
from service.errors import InternalError, InvalidInput, ModelNotFound, NotReady, quoted
from service.inference import Alive, Columns, ModelRunner
from service.middleware import UNKNOWN
from service.plumbing import JSON_OR_BINARY, alive, max_rows, parse_json, read_body, using
from service.repository import ModelRepository
from service.responses import (
    V2IndexEntry,
    V2InferResponse,
    V2Live,
    V2LoadState,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2ServerMetadata,
    ok,
)
from service.schemas import parse_body
from service.v2_codec import HEADER_LENGTH, InferRequest, decode_request, encode_response, shown

OPS = tuple(OPERATIONS)
# Triton's names: the binary tensor extension (REST only: gRPC carries raw contents itself), the model repository
EXTENSIONS = ("binary_tensor_data", "model_repository")
SERVER_NAME, SERVER_VERSION = "gaussian-vae", "0.1.0"

TAGS = ("open inference protocol v2",)


INFERRED: dict[int | str, dict[str, Any]] = {
    200: {
        "model": V2InferResponse,
        "description": "JSON; or, with binary outputs, application/octet-stream: the JSON header "
        "(Inference-Header-Content-Length bytes) then each binary output's raw bytes",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def _json(payload: object, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


VERSION = re.compile(r"[1-9][0-9]{0,17}")  # ASCII digits only ("²".isdigit() is true), within int64


def split_model(model: str, version: str | None) -> tuple[str, str, int | None]:
    """(bundle, op, version or None) of a V2 model name <bundle>.<op> and an optional version; else ModelNotFound."""
    bundle, _, op = model.rpartition(".")
    if not bundle or op not in OPS:
        raise ModelNotFound(f"no V2 model {quoted(model)}: V2 models are <bundle>.<op> with op one of {', '.join(OPS)}")
    if version is not None and not VERSION.fullmatch(version):
        raise ModelNotFound(f"no version {quoted(version)} of {quoted(model)}: versions are 1, 2, 3, ...")
    return bundle, op, int(version) if version is not None else None


def _path(request: Request) -> tuple[str, str, int | None]:
    """(bundle, op, version or None) of a /v2/models/{model}[/versions/{version}] path; an unversioned path also
    takes the version as a query parameter (?version=2), as it always has."""
    version = request.path_params.get("version", request.query_params.get("version"))
    return split_model(request.path_params["model"], version)


def bundle_of(model: str) -> str:
    """The bundle a repository request acts on: <bundle>.<op> as the index lists it, or the bundle's own name."""
    return split_model(model, None)[0] if "." in model else model


def _tensor(name: str, datatype: str, *shape: int) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": list(shape)}


def metadata(runner: ModelRunner, model: str, op: str, versions: list[int]) -> dict[str, Any]:
    """Inputs and outputs of a V2 model, from the operation table (-1: a dynamic axis), and its versions a client may
    ask for by number (those loaded: the one serving and the kept older ones, VAE_KEEP_VERSIONS)."""
    spec, ops = OPERATIONS[op], runner.operations
    axes = {"D": ops.input_dim, "d": ops.latent_dim, "K": -1}
    inputs = [_tensor(spec.tensor, "FP32", -1, ops.width(op))] if spec.tensor else []
    tensors = [_tensor(o.name, o.datatype, -1, *(axes[a] for a in o.shape)) for o in answered(ops, op)]
    return {
        "name": model,
        "versions": [str(v) for v in sorted({*versions, runner.model.manifest.version})],  # its own, if let go since
        "platform": "onnxruntime_onnx",
        "inputs": inputs,
        "outputs": tensors,
        "parameters": {"accepted": sorted(set(REQUESTS[op].model_fields) - {spec.rows})},
    }


async def server_metadata(request: Request) -> Response:
    return _json({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)})


def metric_label(repository: ModelRepository | None, name: str) -> str:
    """The metrics' model label of a model name a request gave: a loaded bundle's name (/v1, V2 repository) or
    <bundle>.<op> of a loaded bundle (V2), else "unknown": a client cannot add a series per made-up name."""
    if repository is None:
        return UNKNOWN
    bundle, _, op = name.rpartition(".")
    if name in repository.loaded or (op in OPS and bundle in repository.loaded):
        return name
    return UNKNOWN


async def live(request: Request) -> Response:
    return _json({"live": True})


async def ready(request: Request) -> Response:
    repo = request.app.state.repository
    ok = bool(repo is not None and repo.current)
    return _json({"ready": ok}, 200 if ok else 503)


async def model_metadata(request: Request) -> Response:
    model, (bundle, op, v) = request.path_params["model"], _path(request)
    async with using(request, bundle, v) as runner:
        return _json(metadata(runner, model, op, list(_repository(request).loaded.get(bundle, {}))))


async def model_ready(request: Request) -> Response:
    model, (bundle, _, v) = request.path_params["model"], _path(request)
    async with using(request, bundle, v):
        return _json({"name": model, "ready": True})


async def infer(request: Request) -> Response:
    model, (bundle, op, v) = request.path_params["model"], _path(request)
    async with using(request, bundle, v) as runner:
        body = await read_body(request, JSON_OR_BINARY)
        declared = partial(check_declared, runner, op)  # datatype, rows and width before values are read
        req = decode_request(body, request.headers.get(HEADER_LENGTH), max_rows(request), declared)
        columns, values = await run_request(runner, op, req, alive(request))
        served_version = str(runner.model.manifest.version)
    tensors, scalars = answer_parts(req, columns)
    body, header_length = await off_loop(values, encode_response, model, served_version, req, tensors, scalars, values)
    if header_length is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)})


def answer_parts(req: InferRequest, columns: Columns) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(output tensors, response parameters) of an answer (run_request has refused outputs it does not give)."""
    tensors = {k: v for k, v in columns.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in columns.items() if not isinstance(v, np.ndarray)}
    unknown = [n for n in req.outputs or [] if n not in tensors]
    if unknown:  # run_request refuses names the operation does not answer: here only an output not made is
        raise InternalError(f"output(s) {unknown} asked for and not computed; this answer holds {sorted(tensors)}")
    return tensors, scalars


def check_declared(runner: ModelRunner, op: str, name: str, datatype: str, shape: list[int]) -> None:
    """run_request's checks of operation `op`'s input, on the name, datatype and shape a request declares for it,
    before its values are read."""
    spec, ops = OPERATIONS[op], runner.operations
    if name != spec.tensor:  # a request has at most one input (check_input_count): this one is not it
        raise InvalidInput(_takes(op, [name]))
    if datatype != "FP32":
        raise InvalidInput(f"input {spec.tensor!r} must have datatype FP32")
    check_row_shape(tuple(shape), spec.tensor, ops.width(op), ops.limits.max_rows, ops.label)


def _takes(op: str, given: list[str]) -> str:
    tensor = OPERATIONS[op].tensor
    return f"{op} takes input(s) {[tensor] if tensor else []}, got [{', '.join(shown(n) for n in given)}]"


def answered(ops: Operations, op: str) -> list[Output]:
    """The outputs operation `op` of this bundle can answer (scale_tril only for a full-covariance encoder)."""
    return [o for o in OPERATIONS[op].outputs if o.when != "full" or ops.full]


async def run_request(runner: ModelRunner, op: str, req: InferRequest, alive: Alive) -> tuple[Columns, int]:
    """A decoded V2 request (REST or gRPC) run as operation `op`: inputs checked, parameters validated as /v1
    validates its fields, outputs asked for by name computed. (the answer's columns, the numbers they hold)"""
    spec, schema, ops = OPERATIONS[op], REQUESTS[op], runner.operations
    if set(req.inputs) != ({spec.tensor} if spec.tensor else set()):
        raise InvalidInput(_takes(op, sorted(req.inputs)))
    names = {o.name for o in answered(ops, op)}
    unknown = [n for n in req.outputs or [] if n not in names]
    if unknown:  # before any work: asking for an output computes it, so any other name is unknown
        raise InvalidInput(f"unknown output(s) [{', '.join(shown(n) for n in unknown)}]; {op} gives {sorted(names)}")
    rows = None
    if spec.tensor is not None:
        arr = req.inputs[spec.tensor]
        if arr.dtype != np.float32:
            raise InvalidInput(f"input {spec.tensor!r} must have datatype FP32")
        rows = check_rows(arr, spec.tensor, ops.width(op), ops.limits.max_rows, ops.label)
    known = {k: v for k, v in req.parameters.items() if k in schema.model_fields}
    known |= asked_for(op, req.outputs or (), known)
    params = parse_body(schema, {**known, **({spec.rows: []} if spec.rows else {})})
    return await runner.call(op, rows, params, alive, binary=req.all_binary(), forms=req.forms)


# Triton's model repository extension: index (readers), load and unload (the admin role).


def _repository(request: Request) -> ModelRepository:
    return opened(request.app.state.repository)


def opened(repo: ModelRepository | None) -> ModelRepository:
    if repo is None:
        raise NotReady("the model repository is not open yet")
    return repo


async def repository_index(request: Request) -> Response:
    body = await read_body(request)
    raw = parse_json(body, max_rows(request)) if body.strip() else {}
    if not isinstance(raw, dict) or not isinstance(raw.get("ready", False), bool):
        raise InvalidInput('the index request is a JSON object with an optional boolean "ready"')
    return _json(await index_rows(_repository(request), raw.get("ready", False)))


async def index_rows(repo: ModelRepository, ready_only: bool) -> list[dict[str, str]]:
    """The repository index as V2 lists it: each <bundle>.<op> at each version, with its state and reason."""
    rows: list[dict[str, str]] = []
    for entry in await repo.index():
        loaded: list[int] = entry["loaded_versions"]
        for version in sorted(set(entry["versions_on_disk"]) | set(loaded)):
            ready = version in loaded
            idle = "unloaded" if entry["unloaded"] else "not loaded"
            reason = entry["refused"].get(str(version), "" if ready else idle)
            if ready_only and not ready:
                continue
            rows.extend(
                {
                    "name": f"{entry['name']}.{op}",
                    "version": str(version),
                    "state": "READY" if ready else "UNAVAILABLE",
                    "reason": reason,
                }
                for op in OPS
            )
    return rows


async def repository_load(request: Request) -> Response:
    model = request.path_params["model"]
    body = await read_body(request)
    raw = parse_json(body, max_rows(request)) if body.strip() else {}
    params = raw.get("parameters", {}) if isinstance(raw, dict) else None
    if not isinstance(params, dict):
        raise InvalidInput("the load request must be a JSON object with an optional parameters object")
    runner = await _repository(request).load(bundle_of(model), load_version(params.get("version")))
    return _json({"name": model, "version": str(runner.model.manifest.version), "state": "READY"})


def load_version(version: object) -> int | None:
    """A load request's parameters.version (a positive integer, or its digits) as an int; None when not given."""
    if version is not None and not (
        (type(version) is int and 1 <= version < 2**63) or (isinstance(version, str) and VERSION.fullmatch(version))
    ):
        raise InvalidInput(f"parameters.version must be a positive integer, got {shown(version)}")
    return int(version) if version is not None else None


async def repository_unload(request: Request) -> Response:
    model = request.path_params["model"]
    body = await read_body(request)  # Triton's clients send {"parameters": {"unload_dependents": ...}}
    if body.strip() and not isinstance(parse_json(body, max_rows(request)), dict):
        raise InvalidInput("the unload request must be a JSON object (or empty)")
    await _repository(request).unload(bundle_of(model))
    return _json({"name": model, "state": "UNAVAILABLE"})


def endpoints() -> list[Endpoint]:
    """Every V2 endpoint: health and server metadata open, models and inference for readers, repository changes for
    the admin role."""
    versioned = "/v2/models/{model}/versions/{version}"
    ready_doc = {**ok(V2Ready), 503: {"model": V2Ready, "description": "not ready"}}
    index_summary = (
        "The V2 models a client can call (<bundle>.<op>), each version with its state and the reason it is not "
        'ready; body {"ready": true} lists only ready ones'
    )
    r, a = Role.READER, Role.ADMIN
    return [
        Endpoint("/v2", "GET", server_metadata, "server_metadata", "Server metadata", TAGS, None, ok(V2ServerMetadata)),
        Endpoint("/v2/health/live", "GET", live, "live", "Liveness", TAGS, None, ok(V2Live)),
        Endpoint("/v2/health/ready", "GET", ready, "ready", READY_SUMMARY, TAGS, None, ready_doc),
        Endpoint("/v2/models/{model}", "GET", model_metadata, "model_metadata", METADATA, TAGS, r, ok(V2ModelMetadata)),
        Endpoint(
            versioned,
            "GET",
            model_metadata,
            "model_version_metadata",
            f"{METADATA} of one version",
            TAGS,
            r,
            ok(V2ModelMetadata),
        ),
        Endpoint(
            "/v2/models/{model}/ready",
            "GET",
            model_ready,
            "model_ready",
            "V2 model readiness",
            TAGS,
            r,
            ok(V2ModelReady),
        ),
        Endpoint(
            f"{versioned}/ready",
            "GET",
            model_ready,
            "model_version_ready",
            "V2 model readiness of one version",
            TAGS,
            r,
            ok(V2ModelReady),
        ),
        Endpoint(
            "/v2/models/{model}/infer",
            "POST",
            infer,
            "infer",
            "V2 inference (JSON or binary tensor data)",
            TAGS,
            r,
            INFERRED,
        ),
        Endpoint(
            f"{versioned}/infer", "POST", infer, "infer_version", "V2 inference on one version", TAGS, r, INFERRED
        ),
        Endpoint(
            "/v2/repository/index",
            "POST",
            repository_index,
            "repository_index",
            index_summary,
            TAGS,
            r,
            ok(list[V2IndexEntry]),
        ),
        Endpoint(
            "/v2/repository/models/{model}/load",
            "POST",
            repository_load,
            "repository_load",
            "Verify and serve the newest (or a given) version",
            TAGS,
            a,
            ok(V2LoadState),
        ),
        Endpoint(
            "/v2/repository/models/{model}/unload",
            "POST",
            repository_unload,
            "repository_unload",
            "Stop serving a model (in-flight requests finish)",
            TAGS,
            a,
            ok(V2LoadState),
        ),
    ]


METADATA = "V2 model metadata (inputs and outputs; -1 is a dynamic axis)"
READY_SUMMARY = "Readiness: at least one bundle loaded and warmed up"

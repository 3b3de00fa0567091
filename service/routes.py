"""/v1: the four operations (on a named or the default model) and the model facts, declared as endpoints
(service/endpoints.py). A route parses -> runs (batched onnxruntime) -> answers columnar JSON; errors are raised,
never returned."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, TypeVar

import orjson
from fastapi import Request, Response

from contract import Manifest
from contract.operations import OPERATIONS
from contract.requests import REQUESTS
from service.access import Access, Role
from service.answers import INLINE_VALUES, off_loop, render
from service.endpoints import Endpoint
from service.inference import ModelRunner
from service.monitoring import Monitoring
from service.pages import report_file, report_files
from service.plumbing import alive, max_rows, parse_json, read_body, using
from service.repository import ModelRepository
from service.responses import OPERATION_RESPONSES, ModelDetail, ModelList, ModelMonitoring, ok
from service.schemas import parse_body, rows_may_hold_bool, to_matrix

TAGS = ("inference",)
T = TypeVar("T")


def _json_response(payload: dict[str, Any], values: int) -> Response:
    return Response(render(payload, values), media_type="application/json")


async def operate(op: str, request: Request) -> Response:
    """Any of the four operations over /v1 (on the model the path names, else the default one): parse the body,
    check the rows, run, answer (columns)."""
    async with using(request, request.path_params.get("name")) as runner:
        body = await read_body(request)
        params = parse_body(REQUESTS[op], parse_json(body, max_rows(request)))
        field, ops = OPERATIONS[op].rows, runner.operations
        rows = None
        if field is not None:
            value, may_hold_bool = getattr(params, field), partial(rows_may_hold_bool, body, params)
            rows = to_matrix(value, field, ops.width(op), ops.limits.max_rows, ops.label, may_hold_bool)
        columns, values = await runner.call(op, rows, params, alive(request))
        payload = {"model": runner.model.name, "version": runner.model.manifest.version, **columns}
        if values <= INLINE_VALUES:  # no coroutine of its own for the common small answer
            return _json_response(payload, values)
        return await off_loop(values, _json_response, payload, values)


SUMMARY = {
    "encode": "Embed rows: posterior mean and log-variance (+ scale_tril when full, + z draws when samples > 0)",
    "decode": "Decode latents to raw-space means and log-variances (+ x draws when sample)",
    "sample": "Generate rows: decoder means of prior draws (+ decoder noise when noise)",
    "score": "Score rows: ELBO, IWAE log-likelihood, anomaly score, percentile, p-value and flag (+ feature_nll)",
}


def model_summary(runner: ModelRunner) -> dict[str, Any]:
    m = runner.model.manifest
    return {
        "name": m.name,
        "version": m.version,
        "input_dim": m.input_dim,
        "latent_dim": m.latent_dim,
        "covariance": m.covariance,
        "provider": runner.model.provider,
        "path": f"{m.name}/{m.version}",  # inside the model repository
        "default_importance_samples": m.anomaly.importance_samples,
        "threshold": m.anomaly.threshold,
        "threshold_quantile": m.anomaly.default_quantile,
    }


def shared_manifest(manifest: Manifest, with_scores: bool) -> dict[str, Any]:
    """The manifest as callers see it: training arguments that are file-system paths shown by their last part (the
    manifest keeps them as typed), and the validation scores behind the reference for the admin role only."""
    shown = manifest.model_dump(mode="json")
    shown["training"]["arguments"] = {k: _no_path(v) for k, v in manifest.training.arguments.items()}
    if not with_scores:
        del shown["anomaly"]["sample"]
    return shown


def _no_path(value: Any) -> Any:
    if isinstance(value, list):
        return [_no_path(v) for v in value]
    if isinstance(value, str) and (PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute()):
        return PureWindowsPath(value).name if "\\" in value else PurePosixPath(value).name
    return value


async def list_models(request: Request) -> Response:
    repo: ModelRepository | None = request.app.state.repository
    current = repo.current if repo else {}
    payload = {
        "models": [model_summary(r) for r in current.values()],
        "default_model": repo.default_name if repo else None,
        "repository": await repo.index() if repo else [],
        "refused": repo.refused if repo else {},
    }
    return Response(orjson.dumps(payload), media_type="application/json")


async def get_model(request: Request) -> Response:
    access: Access = request.app.state.access
    async with using(request, request.path_params["name"]) as runner:
        m = runner.model.manifest
        # warnings: what a user should know about the anomaly reference (e.g. too few validation rows behind the
        # threshold's quantile); also in manifest.anomaly.warnings
        payload = {
            **model_summary(runner),
            "warnings": m.anomaly.warnings,
            "report": await _on_volume(request, report_files, runner.model.path),
            "manifest": shared_manifest(m, with_scores=access.is_admin(request)),
        }
        return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


async def get_monitoring(request: Request) -> Response:
    monitoring: Monitoring = request.app.state.monitoring
    async with using(request, request.path_params["name"]) as runner:
        m = runner.model.manifest
        if runner.watch is None:
            payload = {"model": m.name, "version": m.version, "enabled": False, "summary": MONITOR_OFF}
        else:
            payload = monitoring.report(runner.watch)
        return Response(orjson.dumps(payload), media_type="application/json")


MONITOR_OFF = "monitoring is off (VAE_MONITOR=false)"


async def get_report_file(request: Request) -> Response:
    async with using(request, request.path_params["name"]) as runner:
        # its folder checks and read, and a missing file's listing, wait on the volume, not the loop
        return await _on_volume(request, report_file, runner.model.path, request.path_params["file"], runner.label)


async def _on_volume(request: Request, read: Callable[..., T], *args: Any) -> T:
    # a read of the model repository's folders, on its own threads (ModelRepository.on_volume); a thread without one
    repo: ModelRepository | None = request.app.state.repository
    return await repo.on_volume(read, *args) if repo else await asyncio.to_thread(read, *args)


REPORT_FILE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the file: a PNG plot, the report's index.html, or metrics.json",
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "text/html": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
}


def endpoints() -> list[Endpoint]:
    """Every /v1 endpoint, the operations first (matched first); each needs a reader key when keys are configured."""
    facts = [
        Endpoint(
            "/v1/models",
            "GET",
            list_models,
            "list_models",
            "Loaded models, their versions, and refused bundles",
            TAGS,
            Role.READER,
            ok(ModelList),
        ),
        Endpoint(
            "/v1/models/{name}",
            "GET",
            get_model,
            "get_model",
            "One model's manifest (diagnostics, thresholds) and runtime facts",
            TAGS,
            Role.READER,
            ok(ModelDetail),
        ),
        Endpoint(
            "/v1/models/{name}/monitoring",
            "GET",
            get_monitoring,
            "get_monitoring",
            "What the model's score answers look like lately: a drift test of the recent window's scores against "
            "the validation scores, the flagged share against the expected one, the p-value histogram, and the "
            "features whose NLL moved (all workers' rows)",
            TAGS,
            Role.READER,
            ok(ModelMonitoring),
        ),
        Endpoint(
            "/v1/models/{name}/report/{file}",
            "GET",
            get_report_file,
            "get_report_file",
            "One file of the model's training report (plots, index.html, metrics.json), as listed in its `report`",
            TAGS,
            Role.READER,
            REPORT_FILE,
        ),
    ]
    declared = []
    for op in OPERATIONS:
        answer = ok(OPERATION_RESPONSES[op], "columns, one entry per input row, in request order")
        for kind, path, summary in (
            ("named", f"/v1/models/{{name}}/{op}", SUMMARY[op]),
            ("default", f"/v1/{op}", f"{SUMMARY[op]} (default model)"),
        ):
            handler = partial(operate, op)
            declared.append(
                Endpoint(path, "POST", handler, f"{op}_{kind}", summary, TAGS, Role.READER, answer, REQUESTS[op])
            )
    return [*declared, *facts]

"""HTTP routes: parse -> runner (batched onnxruntime) -> columnar JSON. Errors are raised, never returned."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request, Response
from starlette.routing import Route

from contract import Manifest
from contract.operations import OPERATIONS
from contract.requests import REQUESTS
from service.access import Access, require_reader
from service.answers import off_loop, render
from service.inference import Columns, ModelRunner
from service.pages import report_file, report_files
from service.plumbing import PlainRoute, alive, parse_json, read_body, using
from service.repository import ModelRepository
from service.responses import OPERATION_RESPONSES, ModelDetail, ModelList, ok
from service.schemas import parse_body, rows_may_hold_bool, to_matrix

router = APIRouter(prefix="/v1", dependencies=[Depends(require_reader)], tags=["inference"])


def _body_doc(model: type) -> dict[str, Any]:
    schema = model.model_json_schema()  # type: ignore[attr-defined]
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def respond(runner: ModelRunner, columns: Columns, values: int) -> Awaitable[Response]:
    payload = {"model": runner.model.name, "version": runner.model.manifest.version, **columns}
    return off_loop(values, _json_response, payload, values)


def _json_response(payload: dict[str, Any], values: int) -> Response:
    return Response(render(payload, values), media_type="application/json")


async def operate(request: Request, name: str | None, op: str) -> Response:
    """Any of the four operations over /v1: parse the body, check the rows, run, answer (columns)."""
    async with using(request, name) as runner:
        body = await read_body(request)
        params = parse_body(REQUESTS[op], parse_json(body))
        field, ops = OPERATIONS[op].rows, runner.operations
        rows = None
        if field is not None:
            value, may_hold_bool = getattr(params, field), partial(rows_may_hold_bool, body, params)
            rows = to_matrix(value, field, ops.width(op), ops.limits.max_rows, ops.label, may_hold_bool)
        columns, values = await runner.call(op, rows, params, alive(request))
        return await respond(runner, columns, values)


_SUMMARY = {
    "encode": "Embed rows: posterior mean and log-variance (+ scale_tril when full, + z draws when samples > 0)",
    "decode": "Decode latents to raw-space means and log-variances (+ x draws when sample)",
    "sample": "Generate rows: decoder means of prior draws (+ decoder noise when noise)",
    "score": "Score rows: ELBO, IWAE log-likelihood, anomaly score, percentile, p-value and flag (+ feature_nll)",
}


def _named(op: str) -> Callable[[str, Request], Awaitable[Response]]:
    async def route(name: str, request: Request) -> Response:
        return await operate(request, name, op)

    return route


def _default(op: str) -> Callable[[Request], Awaitable[Response]]:
    async def route(request: Request) -> Response:
        return await operate(request, None, op)

    return route


def _add_routes() -> None:
    for op in OPERATIONS:
        doc = _body_doc(REQUESTS[op])
        router.add_api_route(
            f"/models/{{name}}/{op}",
            _named(op),
            methods=["POST"],
            openapi_extra=doc,
            summary=_SUMMARY[op],
            responses=ok(OPERATION_RESPONSES[op], "columns, one entry per input row, in request order"),
            name=f"{op}_named",
        )
        router.add_api_route(
            f"/{op}",
            _default(op),
            methods=["POST"],
            openapi_extra=doc,
            summary=f"{_SUMMARY[op]} (default model)",
            responses=ok(OPERATION_RESPONSES[op], "columns, one entry per input row, in request order"),
            name=f"{op}_default",
        )


_add_routes()


def operation_routes() -> list[Route]:
    """The eight operation endpoints as plain Starlette routes, to be matched before the documented ones above.

    Why: on a 1-row request FastAPI's own handling of a route (dependency solving, its exit stacks, parameter
    extraction) took about a third of the event loop's time (py-spy under wrk), and these endpoints need none
    of it: the body is read and checked by hand and the key check is one call. The documented APIRoutes stay
    for /openapi.json and /docs; paths, names, errors and metrics labels are the same."""

    def endpoint(op: str) -> Callable[[Request], Awaitable[Response]]:
        async def call(request: Request) -> Response:
            await require_reader(request)
            return await operate(request, request.path_params.get("name"), op)

        return call

    return [
        PlainRoute(path, endpoint(op), methods=["POST"], name=f"{op}_{kind}", include_in_schema=False)
        for op in OPERATIONS
        for kind, path in (("named", f"/v1/models/{{name}}/{op}"), ("default", f"/v1/{op}"))
    ]


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


@router.get("/models", summary="Loaded models, their versions, and refused bundles", responses=ok(ModelList))
async def list_models(request: Request) -> Response:
    repo: ModelRepository | None = request.app.state.repository
    current = repo.current if repo else {}
    payload = {
        "models": [model_summary(r) for r in current.values()],
        "default_model": repo.default_name if repo else None,
        "repository": repo.index() if repo else [],
        "refused": repo.refused if repo else {},
    }
    return Response(orjson.dumps(payload), media_type="application/json")


@router.get(
    "/models/{name}",
    summary="One model's manifest (diagnostics, thresholds) and runtime facts",
    responses=ok(ModelDetail),
)
async def get_model(name: str, request: Request) -> Response:
    access: Access = request.app.state.access
    async with using(request, name) as runner:
        m = runner.model.manifest
        # warnings: what a user should know about the anomaly reference (e.g. too few validation rows behind the
        # threshold's quantile); also in manifest.anomaly.warnings
        payload = {
            **model_summary(runner),
            "warnings": m.anomaly.warnings,
            "report": report_files(runner.model.path),
            "manifest": shared_manifest(m, with_scores=access.is_admin(request)),
        }
        return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


@router.get(
    "/models/{name}/report/{file}",
    summary="One file of the model's training report (plots, index.html, metrics.json), as listed in its `report`",
    responses={
        200: {
            "description": "the file: a PNG plot, the report's index.html, or metrics.json",
            "content": {
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "text/html": {"schema": {"type": "string"}},
                "application/json": {"schema": {"type": "object"}},
            },
        }
    },
)
async def get_report_file(name: str, file: str, request: Request) -> Response:
    async with using(request, name) as runner:
        return report_file(runner.model.path, file, runner.label)

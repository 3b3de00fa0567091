"""HTTP routes: parse -> runner (batched onnxruntime) -> columnar JSON. Errors are raised, never returned."""

from __future__ import annotations

import asyncio
import hmac
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request, Response
from starlette.routing import Match, Route
from starlette.types import Scope

from contract.operations import OPERATIONS
from contract.requests import REQUESTS
from service.errors import (
    InvalidInput,
    ModelNotFound,
    NotReady,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    UnsupportedMediaType,
)
from service.inference import Alive, Columns, ModelRunner
from service.pages import report_file, report_files
from service.repository import ModelRepository
from service.responses import OPERATION_RESPONSES, ModelDetail, ModelList, ok
from service.schemas import parse_body, rows_may_hold_bool, to_matrix
from service.settings import ServiceSettings


async def require_api_key(request: Request) -> None:
    # async on purpose: FastAPI runs a sync dependency on its thread pool, a thread hop on every request
    keys: list[str] = request.app.state.settings.api_keys
    if not keys:
        return
    auth = request.headers.get("authorization", "")
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
    # compare_digest against every key: the time taken does not reveal which key (or how much of it) matched
    if not any([hmac.compare_digest(given.encode(), k.encode()) for k in keys]) or not given:
        raise Unauthorized("a valid API key is required (Authorization: Bearer <key> or X-API-Key)")


router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], tags=["inference"])


def _body_doc(model: type) -> dict[str, Any]:
    schema = model.model_json_schema()  # type: ignore[attr-defined]
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def repository(request: Request) -> ModelRepository:
    repo: ModelRepository | None = request.app.state.repository
    if repo is None or not repo.current:
        raise NotReady("no model is loaded")
    return repo


@asynccontextmanager
async def using(request: Request, name: str | None, version: int | None = None) -> AsyncIterator[ModelRunner]:
    """The runner serving <name> (default model when None), held for the whole request: a version swapped out
    meanwhile is stopped only after this request is done with it."""
    repo = repository(request)
    runner = repo.get(name if name is not None else repo.default_name or "", version)
    if runner is None:
        loaded = sorted(repo.current)
        if name is None:  # never another model in its place: the caller would not know whose scores it got
            refused = {k: v for k, v in repo.refused.items() if k.split("/")[0] == repo.default_name}
            raise ModelNotFound(
                f"the default model {repo.default_name!r} is not serving"
                + (f" (refused: {refused})" if refused else "")
                + f"; loaded: {loaded}; name one in the path (/v1/models/<name>/...) or set VAE_DEFAULT_MODEL"
            )
        what = f"{name!r}" if version is None else f"{name!r} version {version}"
        raise ModelNotFound(f"no model {what} is loaded; loaded: {loaded}")
    runner.acquire()
    try:
        yield runner
    finally:
        runner.release()


async def read_body(request: Request) -> bytes:
    """The raw body, refusing anything over VAE_MAX_BODY_BYTES before reading (or parsing) it all, and any body
    that has not arrived within VAE_BODY_TIMEOUT_S (408). A gzip Content-Encoding is decoded, within the same
    size limit; any other encoding gets 415."""
    settings: ServiceSettings = request.app.state.settings
    limit = settings.max_body_bytes
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; send identity or gzip")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit} (VAE_MAX_BODY_BYTES)")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"body is over the limit of {limit} bytes (VAE_MAX_BODY_BYTES)")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(
            f"the body did not arrive within {settings.body_timeout_s:g}s ({size} bytes came; VAE_BODY_TIMEOUT_S)"
        ) from None
    body = b"".join(chunks)
    return gunzip(body, limit) if encoding == "gzip" else body


def gunzip(data: bytes, limit: int) -> bytes:
    """A gzip body decoded to at most `limit` bytes (a small body must not expand into gigabytes)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"the body is not valid gzip ({exc})") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"the decompressed body is over the limit of {limit} bytes (VAE_MAX_BODY_BYTES)")
    if not inflater.eof:
        raise InvalidInput("the gzip body is truncated")
    return out


def parse_json(data: bytes) -> object:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}") from None


def alive(request: Request) -> Alive:
    """False once the client has closed the connection (checked between the chunks of a big request)."""

    async def check() -> bool:
        return not await request.is_disconnected()

    return check


def respond(runner: ModelRunner, columns: Columns) -> Response:
    payload = {"model": runner.model.name, "version": runner.model.manifest.version, **columns}
    body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, media_type="application/json")


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
        return respond(runner, await runner.call(op, rows, params, alive(request)))


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


class PlainRoute(Route):
    """A Starlette route that names itself in the scope when it matches, as FastAPI's routes do (the metrics'
    endpoint label is the matched route's path)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.NONE:
            child["route"] = self
        return match, child


def operation_routes() -> list[Route]:
    """The eight operation endpoints as plain Starlette routes, to be matched before the documented ones above.

    Why: on a 1-row request FastAPI's own handling of a route (dependency solving, its exit stacks, parameter
    extraction) took about a third of the event loop's time (py-spy under wrk), and these endpoints need none
    of it: the body is read and checked by hand and the key check is one call. The documented APIRoutes stay
    for /openapi.json and /docs; paths, names, errors and metrics labels are the same."""

    def endpoint(op: str) -> Callable[[Request], Awaitable[Response]]:
        async def call(request: Request) -> Response:
            await require_api_key(request)
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
    async with using(request, name) as runner:
        m = runner.model.manifest
        # warnings: what a user should know about the anomaly reference (e.g. too few validation rows behind the
        # threshold's quantile); also in manifest.anomaly.warnings
        payload = {
            **model_summary(runner),
            "warnings": m.anomaly.warnings,
            "report": report_files(runner.model.path),
            "manifest": m.model_dump(mode="json"),
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

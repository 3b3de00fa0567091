"""create_app(settings) -> FastAPI. The lifespan loads the model repository and starts/stops the batchers;
request-time state lives on app.state only."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from runtime.errors import OperationError
from service import openapi, probes, routes, v2
from service.access import Access, BrowserGuard
from service.endpoints import served
from service.errors import ServiceError, on_http_error, on_operation_error, on_service_error, on_validation_error
from service.metrics import Metrics
from service.middleware import UNKNOWN, ModelLabel, RequestContext
from service.pages import install_pages
from service.peers import Peers
from service.plumbing import BodyBudget
from service.repository import ModelRepository
from service.settings import ServiceSettings
from service.v2_codec import HEADER_LENGTH as HEADER

log = logging.getLogger(__name__)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics.worker_started()
        repository = ModelRepository(settings, metrics, Peers.from_env())
        await repository.start()  # DeviceUnavailable (VAE_DEVICE=cuda without CUDA) stops start-up here
        app.state.repository = repository
        log.info("access: %s", access.describe())
        log.info(
            "ready: %d model(s) %s; refused %s",
            len(repository.current),
            sorted(repository.current),
            sorted(repository.refused),
        )
        try:
            yield
        finally:
            await repository.stop()
            metrics.worker_stopped()

    app = FastAPI(
        title="Gaussian VAE service",
        version="0.1.0",
        description="Embeddings (encode), decoding, generation (sample) and ELBO anomaly scoring (score) from ONNX "
        'bundles written by vae-train. Errors are JSON, `{"error": "<kind>", "detail": "<sentence>"}` on /v1, '
        '`{"error": "<kind>: <sentence>"}` on /v2. The model page is at `/models/<name>`.',
        lifespan=lifespan,
        # off: FastAPI asks OpenTelemetry for its providers on every request even when none is configured
        telemetry=None if settings.opentelemetry else {"tracing": False, "metrics": False, "logs": False},
        docs_url=None,  # /docs and /redoc come from openapi.install_docs, with local assets
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.access = access = Access(settings)
    app.state.body_budget = BodyBudget(settings.max_body_bytes_in_flight)
    app.state.repository = None  # set by the lifespan
    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(OperationError, on_operation_error)
    declared = [*probes.endpoints(settings), *routes.endpoints(), *v2.endpoints()]
    app.router.routes.extend(served(declared))
    openapi.install(app, keys_configured=access.keys, endpoints=declared)
    openapi.install_docs(app)
    install_pages(app)

    app.add_middleware(BrowserGuard, hosts=BrowserGuard.hosts_for(settings), origins=frozenset(settings.cors_origins))
    if settings.cors_origins:  # outside the guard: it answers the preflights of the origins it allows
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "x-api-key", "content-type", "content-encoding", "x-request-id", HEADER],
            expose_headers=["x-request-id", "retry-after", HEADER],
        )
    app.add_middleware(
        RequestContext, metrics=metrics, log_requests=settings.log_requests, model_label=_model_label(app)
    )
    return app


def _model_label(app: FastAPI) -> ModelLabel:
    """The metrics' model label: a loaded bundle's name (/v1, V2 repository) or <bundle>.<op> (V2), else unknown."""

    def label(scope: Scope, params: dict[str, object]) -> str:
        repository: ModelRepository | None = app.state.repository
        name = params.get("name", params.get("model"))
        if repository is None or not isinstance(name, str):
            return UNKNOWN
        bundle, _, op = name.rpartition(".")
        if name in repository.loaded or (op in v2.OPS and bundle in repository.loaded):
            return name
        return UNKNOWN

    return label


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory service.app:create_app_from_env` (settings from VAE_* variables)."""
    return create_app(ServiceSettings())

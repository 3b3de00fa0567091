"""create_app(settings) -> FastAPI. The lifespan loads the model repository and starts/stops the batchers;
request-time state lives on app.state only."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import v2
from service.errors import ServiceError, on_service_error, on_validation_error
from service.inference import ModelRunner
from service.metrics import Metrics
from service.middleware import RequestContext
from service.registry import load_repository
from service.routes import router
from service.settings import ServiceSettings

log = logging.getLogger(__name__)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = await asyncio.to_thread(
            load_repository, settings.model_repository, settings.device, settings.intra_op_threads
        )
        runners = {name: ModelRunner(model, settings, metrics) for name, model in registry.models.items()}
        for name, runner in runners.items():
            runner.start()
            m = runner.model
            metrics.model_info.labels(name, str(m.manifest.version), m.manifest.covariance, m.provider).set(1)
        metrics.refused.set(len(registry.refused))
        app.state.runners = runners
        app.state.refused = registry.refused
        app.state.default_model = _default_model(settings, runners)
        app.state.ready = bool(runners)
        log.info("ready: %d model(s) %s; refused %s", len(runners), sorted(runners), sorted(registry.refused))
        try:
            yield
        finally:
            app.state.ready = False
            for runner in runners.values():
                await runner.stop()

    app = FastAPI(
        title="Gaussian VAE service",
        version="0.1.0",
        description="Embeddings (encode), decoding, generation (sample) and ELBO anomaly scoring (score) from ONNX "
        'bundles written by vae-train. Errors are JSON: {"error": <kind>, "detail": <sentence>}.',
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.runners = {}
    app.state.refused = {}
    app.state.default_model = None
    app.state.ready = False
    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.include_router(router)
    app.include_router(v2.router)
    app.include_router(v2.guarded)

    @app.get("/healthz", tags=["health"], summary="Liveness: 200 while the process runs")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.get("/readyz", tags=["health"], summary="Readiness: 200 once models are loaded and warmed up")
    async def readyz(request: Request) -> Response:
        state = request.app.state
        body = {"ready": state.ready, "models": sorted(state.runners), "refused": state.refused}
        if not state.ready:
            body["reason"] = "no model loaded" if not state.refused else "no bundle passed verification"
            return Response(
                orjson.dumps(body), status_code=503, media_type="application/json", headers={"Retry-After": "5"}
            )
        return Response(orjson.dumps(body), media_type="application/json")

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics (text format)")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(RequestContext, metrics=metrics, log_requests=settings.log_requests)
    return app


def _default_model(settings: ServiceSettings, runners: dict[str, ModelRunner]) -> str | None:
    if settings.default_model is not None:
        if settings.default_model not in runners:
            log.error("VAE_DEFAULT_MODEL=%s is not loaded; /v1/<op> will answer 404", settings.default_model)
        return settings.default_model
    return sorted(runners)[0] if runners else None


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory service.app:create_app_from_env` (settings from VAE_* variables)."""
    return create_app(ServiceSettings())

"""create_app(settings) -> FastAPI. The lifespan loads the model repository and starts/stops the batchers;
request-time state lives on app.state only."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from runtime.bundle import DeviceUnavailable
from runtime.errors import OperationError
from service import openapi, probes, routes, v2
from service.access import Access, BrowserGuard
from service.endpoints import served
from service.errors import ServiceError, on_http_error, on_operation_error, on_service_error, on_validation_error
from service.metrics import Metrics
from service.middleware import UNKNOWN, ModelLabel, RequestContext
from service.monitoring import Monitoring
from service.pages import install_pages
from service.peers import Peers, StartupFailure
from service.plumbing import BodyBudget
from service.repository import ModelRepository
from service.settings import ServiceSettings
from service.signals import on_stop_signals
from service.v2_codec import HEADER_LENGTH as HEADER

log = logging.getLogger(__name__)
# Start-up failures whose message says it all (VAE_DEVICE=cuda without CUDA, a port that cannot be bound): each worker
# logs that one line, as vae-serve's own refusals are one line, instead of a traceback; any other keeps its traceback.
WORDED_STARTUP_FAILURES = (DeviceUnavailable, StartupFailure)


def create_app(
    settings: ServiceSettings | None = None, *, serve_grpc: bool = False, freeze_gc: bool = False
) -> FastAPI:
    """The app; with serve_grpc (as vae-serve's workers create it) its lifespan also serves the Open Inference
    Protocol's gRPC face on VAE_GRPC_PORT (0: not), on the same event loop, runners and batchers. With freeze_gc
    (the process's one app, as in vae-serve's workers) what start-up built is moved out of the garbage collector's
    reach: a 1-row request allocates enough small objects to trigger young collections often, and each of them
    walked everything start-up left behind (1-row req/s one worker, wrk, 4 rounds each, medians: encode 4,400
    against 3,850, score 2,300 against 1,900). Not for apps created and dropped many times in one process (tests):
    frozen objects are never collected."""
    settings = settings or ServiceSettings()
    metrics = Metrics()
    monitoring = Monitoring(settings)
    if settings.monitor:
        metrics.add_computed(monitoring)

    worded: list[str] = []  # the start-up failure's own words, when it is one of WORDED_STARTUP_FAILURES

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        peers = Peers.from_env()
        # any failure before serving is noted for vae-serve's parent (service/peers.py): with several workers it
        # is how the parent learns to exit with a failing status
        with peers.told_if_startup_fails(), _worded(worded):
            metrics.worker_started()
            monitoring.start()
            repository = ModelRepository(settings, metrics, peers, monitoring)
            # uvicorn acts on SIGTERM only once start-up is over; a worker asked to stop while loading a repository of
            # many models would load them all first
            heard = on_stop_signals(repository.stop_loading)
            try:
                await repository.start()  # DeviceUnavailable (VAE_DEVICE=cuda without CUDA) stops start-up here
            finally:
                heard()
            app.state.repository = repository
            face = None
            if serve_grpc and settings.grpc_port:
                from service.grpc_face import GrpcFace  # grpcio is imported only where gRPC is served

                face = GrpcFace(settings, access, metrics, lambda: app.state.repository)
            if freeze_gc:
                gc.collect()
                gc.freeze()
            log.info("access: %s", access.describe())
            log.info(
                "ready: %d model(s) %s; refused %s",
                len(repository.current),
                sorted(repository.current),
                sorted(repository.refused),
            )
            default = repository.default_name
            if default is not None and default not in repository.current:  # /v1/{op} would answer 404 while ready
                log.warning(
                    "the default model %r (behind /v1/{encode,decode,sample,score}) is not serving: %s",
                    default,
                    next((why for key, why in repository.refused.items() if key.split("/")[0] == default), "not found"),
                )
        restore_signals = None
        try:
            if face is not None:
                with peers.told_if_startup_fails(), _worded(worded):
                    await face.start()  # a port that cannot be bound stops start-up here
                restore_signals = face.stop_on_signals()  # SIGTERM: gRPC drains beside HTTP, not after it
            yield
        finally:
            if face is not None:
                await face.stop()  # gRPC calls in flight finish on the runners before they stop
            if restore_signals is not None:
                restore_signals()
            await repository.stop()
            await monitoring.stop()
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
    app.router.lifespan = _startup_failure_in_words(app.router.lifespan, worded)  # type: ignore[method-assign,assignment]
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.monitoring = monitoring
    app.state.access = access = Access(settings)
    app.state.body_budget = BodyBudget(settings.max_body_bytes_in_flight)
    app.state.repository = None  # set by the lifespan
    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(OperationError, on_operation_error)
    declared = [*routes.endpoints(), *v2.endpoints(), *probes.endpoints(settings)]
    # matched before FastAPI's own routes, the POSTs (the operations, /v1 then V2) first: each route tried before
    # the match costs a 1-row request ~3 us (cProfile), and health checks can afford the wait
    app.router.routes[0:0] = served(sorted(declared, key=lambda e: e.method != "POST"))
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


@contextmanager
def _worded(worded: list[str]) -> Iterator[None]:
    try:
        yield
    except WORDED_STARTUP_FAILURES as exc:
        worded.append(str(exc))
        raise


LifespanHandler = Callable[[Scope, Receive, Send], Awaitable[None]]


def _startup_failure_in_words(lifespan: LifespanHandler, worded: list[str]) -> LifespanHandler:
    """The router's lifespan handler, its failed start-up told to uvicorn in the failure's own words when it has
    them: Starlette sends the traceback as the message, which uvicorn logs (the exception still stops the worker,
    exit status 3). Only the lifespan's messages pass through here, never a request's."""

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and worded:
                message = {**message, "message": f"start-up failed: {worded[-1]}"}
            await send(message)

        await lifespan(scope, receive, sending)

    return handler


def _model_label(app: FastAPI) -> ModelLabel:
    """The metrics' model label: a loaded bundle's name (/v1, V2 repository) or <bundle>.<op> (V2), else unknown."""

    def label(scope: Scope, params: dict[str, object]) -> str:
        name = params.get("name", params.get("model"))
        return v2.metric_label(app.state.repository, name) if isinstance(name, str) else UNKNOWN

    return label


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory service.app:create_app_from_env` (settings from VAE_* variables), as vae-serve
    runs it in each worker: with the gRPC face on VAE_GRPC_PORT."""
    return create_app(ServiceSettings(), serve_grpc=True, freeze_gc=True)

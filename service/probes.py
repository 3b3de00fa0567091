"""The health endpoints: liveness, readiness and the Prometheus metrics, declared as endpoints (service/endpoints.py).
What they show the unauthenticated carries no model data: readiness gives names and refusal reasons only to a caller
who may read model facts, and /metrics can require a key (VAE_METRICS_REQUIRE_KEY)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.access import Access, Role
from service.endpoints import Endpoint
from service.metrics import Metrics
from service.repository import ModelRepository
from service.responses import Liveness, Readiness, ok
from service.settings import ServiceSettings

TAGS = ("health",)
LIVE = b'{"status":"ok"}'


async def healthz(request: Request) -> Response:
    return Response(LIVE, media_type="application/json")


async def readyz(request: Request) -> Response:
    repository: ModelRepository | None = request.app.state.repository
    access: Access = request.app.state.access
    current = repository.current if repository else {}
    refused = repository.refused if repository else {}
    body: dict[str, object] = {"ready": bool(current), "serving": len(current), "refused_count": len(refused)}
    if access.role(request) is not None:  # names and reasons only to a caller who may read model facts
        body |= {"models": sorted(current), "refused": refused}
    if not current:
        body["reason"] = "no model loaded" if not refused else "no bundle passed verification"
        return Response(
            orjson.dumps(body), status_code=503, media_type="application/json", headers={"Retry-After": "5"}
        )
    return Response(orjson.dumps(body), media_type="application/json")


async def prometheus(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def endpoints(settings: ServiceSettings) -> list[Endpoint]:
    not_ready: dict[int | str, dict[str, Any]] = {503: {"model": Readiness, "description": "no model serving yet"}}
    return [
        Endpoint(
            "/healthz", "GET", healthz, "healthz", "Liveness: 200 while the process runs", TAGS, None, ok(Liveness)
        ),
        Endpoint(
            "/readyz",
            "GET",
            readyz,
            "readyz",
            "Readiness: 200 once a model is loaded and warmed up, else 503 with the reason",
            TAGS,
            None,
            {**ok(Readiness), **not_ready},
        ),
        Endpoint(
            "/metrics",
            "GET",
            prometheus,
            "prometheus",
            "Prometheus metrics (text format)",
            TAGS,
            Role.READER if settings.metrics_require_key else None,
            response_class=PlainTextResponse,
        ),
    ]

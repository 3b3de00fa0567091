"""gRPC's standard health service (grpc.health.v1.Health) on the gRPC port, through gRPC's own health client stub:
what Kubernetes' and Knative's `grpc` probes and clients' health checking call."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.app import create_app
from service.grpc_face import SERVICE
from service.settings import ServiceSettings
from tests.conftest import free_port

SERVING, NOT_SERVING, UNKNOWN = (
    health_pb2.HealthCheckResponse.SERVING,
    health_pb2.HealthCheckResponse.NOT_SERVING,
    health_pb2.HealthCheckResponse.SERVICE_UNKNOWN,
)
pytestmark = pytest.mark.anyio


@asynccontextmanager
async def _serving(repository: Path, **settings: Any) -> AsyncIterator[tuple[Any, Any]]:
    """(the app, a health stub on its gRPC port), the app's lifespan running: gRPC on the same event loop."""
    port = free_port()
    app = create_app(
        ServiceSettings(model_repository=repository, grpc_port=port, log_requests=False, **settings), serve_grpc=True
    )
    async with app.router.lifespan_context(app), grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield app, health_pb2_grpc.HealthStub(channel)


async def _check(stub: Any, service: str = "") -> int:
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return int(response.status)


async def _unload_all(app: Any) -> None:
    repository = app.state.repository
    for name in list(repository.current):
        await repository.unload(name)


async def _metrics_holding(app: Any, lines: list[str]) -> str:
    """/metrics once it holds every line, or after 10 s: a call is counted when its handler ends, which may come just
    after its client heard the answer (here client and server share one event loop)."""
    deadline = time.monotonic() + 10
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as rest:
        while True:
            text = (await rest.get("/metrics")).text
            if all(line in text for line in lines) or time.monotonic() > deadline:
                return text
            await asyncio.sleep(0.05)


async def _next(stream: Any) -> int:
    return int((await asyncio.wait_for(stream.read(), 10)).status)


async def _end(stream: Any) -> Any:
    """The stream's code once it has ended, with no more messages."""
    assert await asyncio.wait_for(stream.read(), 10) is grpc.aio.EOF
    return await asyncio.wait_for(stream.code(), 10)


async def test_check_and_list_answer_as_server_ready_does(serving_repository: Path) -> None:
    async with _serving(serving_repository) as (app, stub):
        assert await _check(stub) == SERVING and await _check(stub, SERVICE) == SERVING
        listed = await stub.List(health_pb2.HealthListRequest(), timeout=10)
        assert {name: r.status for name, r in listed.statuses.items()} == {"": SERVING, SERVICE: SERVING}
        await _unload_all(app)  # nothing serves: not ready, as ServerReady and /v2/health/ready say
        assert await _check(stub) == NOT_SERVING and await _check(stub, SERVICE) == NOT_SERVING
        await app.state.repository.load("digits-diag")
        assert await _check(stub) == SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _check(stub, "no.such.Service")
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert caught.value.details() == (
            "ServiceNotFound: no health status for service 'no.such.Service'; this server has '' and "
            "'inference.GRPCInferenceService'"
        )
        # counted as every gRPC call is, without a model
        counted = [
            'vae_requests_total{endpoint="grpc:Check",model="-",status="OK"} 5.0',
            'vae_requests_total{endpoint="grpc:Check",model="-",status="NOT_FOUND"} 1.0',
            'vae_requests_total{endpoint="grpc:List",model="-",status="OK"} 1.0',
        ]
        metrics = await _metrics_holding(app, counted)
    assert [line for line in counted if line not in metrics] == []


async def test_a_watch_hears_each_change_and_ends_when_the_server_stops(serving_repository: Path) -> None:
    heard: list[int] = []
    found = signal.signal(signal.SIGTERM, lambda signum, frame: heard.append(signum))  # uvicorn's, standing in
    try:
        # a long grace: a stream left open would hold the stop for all of it
        async with _serving(serving_repository, graceful_shutdown_s=60) as (app, stub):
            stream = stub.Watch(health_pb2.HealthCheckRequest(service=""))
            assert await _next(stream) == SERVING
            await _unload_all(app)
            assert await _next(stream) == NOT_SERVING  # within a re-check
            await app.state.repository.load("digits-diag")
            assert await _next(stream) == SERVING
            unknown = stub.Watch(health_pb2.HealthCheckRequest(service="no.such.Service"))
            assert await _next(unknown) == UNKNOWN  # the protocol's answer for a name it does not know, stream open
            signal.raise_signal(signal.SIGTERM)
            assert await _next(stream) == NOT_SERVING  # told at the signal, then the stream ends with OK
            assert await _end(stream) == grpc.StatusCode.OK
            assert await _end(unknown) == grpc.StatusCode.OK
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 10  # the lifespan's end did not wait out the 60 s grace
        assert heard == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, found)


async def test_open_watches_are_bounded_and_a_client_checking_health_still_calls(serving_repository: Path) -> None:
    # a quarter of VAE_GRPC_MAX_CONCURRENT_RPCS: 2 here
    async with _serving(serving_repository, grpc_max_concurrent_rpcs=8) as (app, stub):
        streams = [stub.Watch(health_pb2.HealthCheckRequest()) for _ in range(2)]
        assert [await _next(s) for s in streams] == [SERVING, SERVING]
        third = stub.Watch(health_pb2.HealthCheckRequest())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _next(third)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED  # gRFC A17: such a client checks no health
        assert caught.value.details() == (
            "TooManyWatches: health Watch streams may hold a quarter of this worker's 8 calls "
            "(VAE_GRPC_MAX_CONCURRENT_RPCS), 2, and hold them all; check with Check"
        )
        assert await _check(stub) == SERVING
        # a client with client-side health checking (a Watch per connection) calls the server all the same
        config = {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}
        options = [("grpc.service_config", json.dumps(config)), ("grpc.use_local_subchannel_pool", 1)]
        port = app.state.settings.grpc_port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as checking:
            live = checking.unary_unary(f"/{SERVICE}/ServerLive")  # bytes in, bytes out
            assert await live(b"", timeout=10) == b"\x08\x01"  # ServerLiveResponse(live=True)
        streams[0].cancel()  # a client leaving frees its place
        deadline = time.monotonic() + 10
        while True:
            fourth = stub.Watch(health_pb2.HealthCheckRequest())
            try:
                assert await _next(fourth) == SERVING
                break
            except grpc.aio.AioRpcError:
                assert time.monotonic() < deadline, "a cancelled watch kept its place"
                await asyncio.sleep(0.1)
        fourth.cancel()
        streams[1].cancel()
        # the third watch, and the health-checking client's own (then no more: it checks no health after that)
        refused = 'vae_requests_total{endpoint="grpc:Watch",model="-",status="UNIMPLEMENTED"} 2.0'
        metrics = await _metrics_holding(app, [refused])
    assert refused in metrics
    latencies = [line for line in metrics.splitlines() if line.startswith("vae_request_seconds")]
    assert latencies and not [line for line in latencies if "grpc:Watch" in line]  # a stream's life is no latency

"""The Open Inference Protocol's gRPC face (KServe V2 / Triton's inference.GRPCInferenceService) on VAE_GRPC_PORT.

A grpc.aio server on the event loop uvicorn runs the app on, started and stopped by the app's lifespan: it reaches
the same repository, runners and batchers as the REST faces (a gRPC and a REST request can share a batch), runs
each request through the same V2 function (service/v2.py run_request), checks roles by the same rule
(service/access.py Access.check, the key from `authorization: Bearer <key>` or `x-api-key` metadata, the client's
address from the peer or, behind a proxy uvicorn trusts, from `x-forwarded-for` as REST's), answers
failures with the code of errors.GRPC_STATUS and the message the REST face gives, and counts every call in
vae_requests_total with endpoint "grpc:<Method>", the REST faces' model label rule, and the gRPC status code name.

The same port serves gRPC's standard health service (grpc.health.v1.Health, what Kubernetes' and Knative's `grpc`
probes call): Check, List and Watch, open to anyone as ServerReady is, answering by ServerReady's rule.

With several workers each one binds the port with SO_REUSEPORT and the kernel spreads connections over them; with
one, the port is bound alone, so a second server on it fails at start-up instead of sharing it unseen.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import unquote

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

from runtime.errors import OperationError
from service import v2
from service.access import Access, ForwardedFor, Role, bearer_key
from service.answers import off_loop
from service.errors import (
    GRPC_RETRY_AFTER_S,
    GRPC_STATUS,
    ClientGone,
    InternalError,
    InvalidInput,
    ModelNotFound,
    NotReady,
    PayloadTooLarge,
    ServiceError,
    ServiceNotFound,
    TooManyWatches,
    from_operation_error,
    quoted,
    v2_message,
)
from service.grpc_codec import (
    SERVICE,
    decode_infer,
    encode_infer,
    parameter_value,
    proto,
    tensor_bytes,
    typed_values,
)
from service.inference import Alive
from service.metrics import Metrics
from service.middleware import UNKNOWN
from service.peers import StartupFailure
from service.plumbing import held
from service.repository import ModelRepository
from service.settings import ANSWER_ENVELOPE_BYTES, ServiceSettings
from service.signals import on_stop_signals

log = logging.getLogger(__name__)
access_log = logging.getLogger("service.access")  # REST's per-request lines (VAE_LOG_REQUESTS), one per call here
Handler = Callable[[Any, Any], Awaitable[Any]]  # (request message, grpc.aio.ServicerContext) -> response message
Streamer = Callable[[Any, Any], AsyncIterator[Any]]  # (request message, context) -> response messages
SERVER_EXTENSIONS = tuple(e for e in v2.EXTENSIONS if e != "binary_tensor_data")  # raw contents are gRPC's own
# Every RPC's message but ModelInfer's holds a name or two and a few parameters; a bigger one is refused unread.
MAX_CONTROL_BYTES = 1 << 16
# An error's message as the client gets it, in UTF-8 bytes (grpc-message is percent-encoded in the trailers, up to 3x,
# and clients accept 8-16 KiB of metadata in all); a message quoting a caller's long value is cut to this.
MAX_DETAILS = 2048
HEALTH = "grpc.health.v1.Health"
# The names Check answers for: the server as a whole (what a probe asks without a service), and the inference service.
HEALTH_SERVICES = ("", SERVICE)
# Watch streams open at once in a worker, as a share of VAE_GRPC_MAX_CONCURRENT_RPCS: each holds one of its calls for
# as long as its client keeps it, so without a bound open streams from anyone could take every call inference needs.
WATCH_SHARE = 4  # at most a quarter of them
WATCH_RECHECK_S = 1.0  # an open Watch re-reads the status this often (loads, unloads and polls change it)
SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN: int = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


@dataclass
class Outcome:
    """How a call ended, as its count and log line give it."""

    code: str = "OK"  # the gRPC status code's name
    request_id: str = ""  # the id an unexpected failure was logged under


@dataclass(frozen=True)
class Rpc:
    handler: Handler
    role: Role | None  # the least role that may call it; None: open to anyone
    model: str | None = None  # the request field naming the model (the metrics' model label)


def metadata_key(metadata: Any) -> str:
    """The key a call sent: its first `authorization` entry (a bearer key), else its first `x-api-key`."""
    first: dict[str, str] = {}
    for name, value in metadata:
        first.setdefault(name, str(value))
    return bearer_key(first.get("authorization", ""), first.get("x-api-key", ""))


class _KeyFirst(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc has no type hints
    """The role check of the inference service's calls as they start (service/grpc_face.py start)."""

    def __init__(self, face: GrpcFace, rpcs: dict[str, Rpc]) -> None:
        self.face, self.rpcs = face, rpcs

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        service, _, method = details.method.lstrip("/").partition("/")
        rpc = self.rpcs.get(method) if service == SERVICE else None
        refuse = None if rpc is None else self.face.refusal(method, rpc, details.invocation_metadata)
        if refuse is None:
            return await continuation(details)
        # a client-streaming handler: grpc runs it at once, and it ends the call without reading a message
        return grpc.stream_unary_rpc_method_handler(refuse)


def client_address(peer: str) -> str:
    """The address of a gRPC peer as uvicorn gives an HTTP client's ("ipv4:127.0.0.1:5000" -> "127.0.0.1",
    "ipv6:[::1]:5000", also percent-encoded, -> "::1"); "" for any other kind."""
    kind, _, rest = unquote(peer).partition(":")
    if kind not in ("ipv4", "ipv6"):
        return ""
    host = rest.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class GrpcFace:
    """The gRPC server of one worker: start() after the repository opens, stop() before it closes."""

    def __init__(
        self,
        settings: ServiceSettings,
        access: Access,
        metrics: Metrics,
        repository: Callable[[], ModelRepository | None],
    ) -> None:
        self.settings, self.access, self.metrics, self.repository = settings, access, metrics, repository
        self.forwarded = ForwardedFor.from_env()  # the proxies uvicorn trusts for REST, trusted here the same way
        self.server: Any = None
        self._stopping: asyncio.Future[None] | None = None  # the server's stop, once begun
        self._stop_begun = asyncio.Event()  # wakes the Watch streams at the stop's start, to end them
        self._watches = 0  # Watch streams open
        self._grace_ends = float("inf")  # time.monotonic() when that stop cancels the calls still running
        self.port = 0
        self._ids = itertools.count(1)
        self._id_prefix = "grpc-" + uuid.uuid4().hex[:8]
        self._counters: dict[tuple[str, str, str], Any] = {}

    def rpcs(self) -> dict[str, Rpc]:
        r, a = Role.READER, Role.ADMIN
        return {
            "ServerLive": Rpc(self.server_live, None),
            "ServerReady": Rpc(self.server_ready, None),
            "ServerMetadata": Rpc(self.server_metadata, None),
            "ModelReady": Rpc(self.model_ready, r, "name"),
            "ModelMetadata": Rpc(self.model_metadata, r, "name"),
            "ModelInfer": Rpc(self.model_infer, r, "model_name"),
            "RepositoryIndex": Rpc(self.repository_index, r),
            "RepositoryModelLoad": Rpc(self.repository_load, a, "model_name"),
            "RepositoryModelUnload": Rpc(self.repository_unload, a, "model_name"),
        }

    async def start(self) -> None:
        s, pb = self.settings, proto()
        options = [
            ("grpc.max_receive_message_length", s.max_body_bytes),  # REST's body limit: the same requests pass
            ("grpc.max_send_message_length", s.grpc_max_message_bytes),
            ("grpc.so_reuseport", 1 if s.processes() > 1 else 0),
        ]
        rpcs = self.rpcs()
        # with keys, a call its key cannot make is refused as it starts, before its message arrives: grpc holds a
        # message whole before a unary handler runs, up to VAE_MAX_BODY_BYTES a call (REST reads no such body)
        interceptors = [_KeyFirst(self, rpcs)] if self.access.keys else []
        server = grpc.aio.server(
            options=options, maximum_concurrent_rpcs=s.grpc_max_concurrent_rpcs, interceptors=interceptors
        )
        handlers = {}
        for method in pb.service.methods:  # every RPC of the vendored proto has its handler
            # no request_deserializer: the handler gets the message's bytes and parses them after the role check
            # (service/grpc_face.py _served), as REST reads no body of a request its key does not allow
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                self._served(method.name, rpcs[method.name], pb.classes[method.input_type.name]),
                response_serializer=pb.classes[method.output_type.name].SerializeToString,
            )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(HEALTH, self._health_handlers()),))
        try:
            self.port = server.add_insecure_port(listen_address(s.host, s.grpc_port))
        except RuntimeError as exc:  # grpcio's "Failed to bind to address ...; set GRPC_VERBOSITY=debug ..."
            raise StartupFailure(
                f"the gRPC port {s.grpc_port} on {s.host} cannot be bound ({str(exc).split(';')[0]}): free it, or "
                "--grpc-port (VAE_GRPC_PORT; 0: no gRPC)"
            ) from exc
        await server.start()
        self.server = server
        log.info("gRPC: the Open Inference Protocol (%s) on %s", SERVICE, listen_address(s.host, self.port))

    async def stop(self) -> None:
        """Refuse new calls, let those in flight finish for up to VAE_GRACEFUL_SHUTDOWN_S, then cancel them. Begun at
        most once: at SIGTERM (stop_on_signals) or here, at the lifespan's end, whichever comes first."""
        self._begin_stop()
        if self._stopping is not None:
            await self._stopping
            self.server = None

    def _begin_stop(self) -> None:
        if self.server is not None and self._stopping is None:
            self._grace_ends = time.monotonic() + self.settings.graceful_shutdown_s
            self._stopping = asyncio.ensure_future(self.server.stop(self.settings.graceful_shutdown_s))
            self._stop_begun.set()

    def stop_on_signals(self) -> Callable[[], None]:
        """At SIGTERM or SIGINT begin stop() at once, while uvicorn drains its HTTP connections: new gRPC calls are
        refused from the signal on, as new HTTP connections are, and the calls in flight get their grace at the same
        time as HTTP's (not after it). The handler found (uvicorn's) still runs. Returns what puts it back."""
        loop = asyncio.get_running_loop()
        return on_stop_signals(lambda: loop.call_soon_threadsafe(self._begin_stop))

    def _served(self, method: str, rpc: Rpc, message: Any, service: str = SERVICE) -> Handler:
        """The RPC with its role check, its message parsed after it, its errors as status codes, its count and
        latency."""
        endpoint, path = f"grpc:{method}", f"/{service}/{method}"
        latency = self.metrics.latency.labels(endpoint)
        parse = parser(method, message)

        async def call(raw: bytes, context: Any) -> Any:
            started, outcome, request = time.perf_counter(), Outcome(), None
            try:
                if rpc.role is not None:
                    key, client, through_proxy = self._caller(context)
                    self.access.check(key, client, rpc.role, through_proxy)
                request = parse(raw)
                return await rpc.handler(request, context)
            except asyncio.CancelledError:  # the client cancelled, or its deadline passed: gRPC cancels the task
                outcome.code = self._cancelled_code(context)
                raise
            except Exception as exc:
                await self._fail(exc, method, context, outcome)
            finally:
                if rpc.model is None:
                    model = "-"
                elif request is None:  # refused before its message was read
                    model = UNKNOWN
                else:
                    model = v2.metric_label(self.repository(), getattr(request, rpc.model))
                self._record(endpoint, path, model, outcome, started, latency)

        return call

    def _streamed(self, method: str, streamer: Streamer, message: Any, service: str) -> Callable[[bytes, Any], Any]:
        """A server-streaming RPC open to anyone (the health service's Watch) with _served's parse, status codes,
        count and log line: one, when the stream ends."""
        endpoint, path = f"grpc:{method}", f"/{service}/{method}"
        parse = parser(method, message)

        async def call(raw: bytes, context: Any) -> AsyncIterator[Any]:
            started, outcome = time.perf_counter(), Outcome()
            try:
                async for response in streamer(parse(raw), context):
                    yield response
            except asyncio.CancelledError:  # the client went away (a watch ends so), or the shutdown's grace passed
                outcome.code = self._cancelled_code(context)
                raise
            except Exception as exc:
                await self._fail(exc, method, context, outcome)
            finally:
                self._record(endpoint, path, "-", outcome, started, None)  # a stream's life is no latency

        return call

    async def _fail(self, exc: Exception, method: str, context: Any, outcome: Outcome) -> None:
        """End a call that raised `exc` with its kind's code and the REST face's message (and a retry hint where REST
        gives Retry-After), noted in `outcome`; an unexpected exception is logged under a request id. Raises."""
        if isinstance(exc, ServiceError):
            error = exc
        elif isinstance(exc, OperationError):
            error = from_operation_error(exc)
        else:
            outcome.request_id = self._request_id()
            log.exception("unhandled error request_id=%s rpc=%s", outcome.request_id, method)
            error = InternalError(f"unexpected error; the service log has it under request id {outcome.request_id}")
        outcome.code = GRPC_STATUS[type(error)]
        if isinstance(error, ClientGone) and _past_deadline(context):
            # the check between chunks saw the deadline pass before gRPC's own timer cancelled the call
            outcome.code = "DEADLINE_EXCEEDED"
        retry = GRPC_RETRY_AFTER_S.get(type(error))
        trailing = (("retry-after", retry),) if retry is not None else ()
        await context.abort(grpc.StatusCode[outcome.code], cut(v2_message(error), MAX_DETAILS), trailing)
        raise AssertionError("context.abort returned")  # it raises

    def _cancelled_code(self, context: Any) -> str:
        """The code the client of a cancelled call hears: its deadline passed, the shutdown's grace ended (the server
        cancels what still runs), or it cancelled."""
        if _past_deadline(context):
            return "DEADLINE_EXCEEDED"
        return "UNAVAILABLE" if time.monotonic() >= self._grace_ends else "CANCELLED"

    def _record(self, endpoint: str, path: str, model: str, outcome: Outcome, started: float, latency: Any) -> None:
        """Count a call, observe its latency (None: not observed) and, with VAE_LOG_REQUESTS, log it as REST logs a
        request."""
        self._count(endpoint, model, outcome.code)
        elapsed = time.perf_counter() - started
        if latency is not None:
            latency.observe(elapsed)
        if self.settings.log_requests:
            access_log.info(
                "request_id=%s method=GRPC path=%s status=%s ms=%.2f",
                outcome.request_id or self._request_id(),
                path,
                outcome.code,
                elapsed * 1000,
            )

    def _caller(self, context: Any) -> tuple[str, str, bool]:
        """(the key, the client's address, whether it came through a proxy) of a call, as REST reads them: the first
        `authorization` (or `x-api-key`) entry, as Starlette's headers.get takes the first, and the peer or, behind a
        trusted proxy, the client its `x-forwarded-for` names, as uvicorn does."""
        metadata = context.invocation_metadata() or ()
        forwarded = [str(value) for name, value in metadata if name == "x-forwarded-for"]
        client = self.forwarded.client(client_address(context.peer()), forwarded)
        return metadata_key(metadata), client, bool(forwarded)

    def refusal(self, method: str, rpc: Rpc, metadata: Any) -> Callable[[Any, Any], Any] | None:
        """A handler ending a call of `method` that its key cannot make (only with keys, where the client's address
        does not count), without reading its message; None when the key may make it."""
        if rpc.role is None:
            return None
        try:
            self.access.check(metadata_key(metadata or ()), "", rpc.role)
        except ServiceError as exc:
            return self._refuser(exc, method, rpc)
        return None

    def _refuser(self, error: ServiceError, method: str, rpc: Rpc) -> Callable[[Any, Any], Any]:
        endpoint, path = f"grpc:{method}", f"/{SERVICE}/{method}"
        latency = self.metrics.latency.labels(endpoint)

        async def refuse(_requests: Any, context: Any) -> Any:
            started, outcome = time.perf_counter(), Outcome()
            try:
                await self._fail(error, method, context, outcome)
            finally:  # counted as _served counts a call refused before its message was read
                self._record(endpoint, path, UNKNOWN if rpc.model else "-", outcome, started, latency)

        return refuse

    def _request_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    def _count(self, endpoint: str, model: str, code: str) -> None:
        counter = self._counters.get((endpoint, model, code))
        if counter is None:
            counter = self._counters[(endpoint, model, code)] = self.metrics.requests.labels(endpoint, model, code)
        counter.inc()

    # The RPCs: each the REST face's endpoint of the same name, through the same functions.

    async def server_live(self, request: Any, context: Any) -> Any:
        return proto().ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: Any) -> Any:
        repo = self.repository()
        return proto().ServerReadyResponse(ready=bool(repo is not None and repo.current))

    async def server_metadata(self, request: Any, context: Any) -> Any:
        pb = proto()
        return pb.ServerMetadataResponse(name=v2.SERVER_NAME, version=v2.SERVER_VERSION, extensions=SERVER_EXTENSIONS)

    async def model_ready(self, request: Any, context: Any) -> Any:
        # a model not served is ready=false, not an error, as Triton answers (tritonclient's is_model_ready() then
        # returns False, the poll after a load); REST's 404 reads as False to the same client
        try:
            bundle, _, version = v2.split_model(request.name, request.version or None)
            async with held(self.repository(), bundle, version):
                return proto().ModelReadyResponse(ready=True)
        except (ModelNotFound, NotReady):
            return proto().ModelReadyResponse(ready=False)

    async def model_metadata(self, request: Any, context: Any) -> Any:
        pb = proto()
        bundle, op, version = v2.split_model(request.name, request.version or None)
        async with held(self.repository(), bundle, version) as runner:
            versions = list(v2.opened(self.repository()).loaded.get(bundle, {}))
            meta = v2.metadata(runner, request.name, op, versions)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    async def model_infer(self, request: Any, context: Any) -> Any:
        model = request.model_name
        bundle, op, version = v2.split_model(model, request.model_version or None)
        async with held(self.repository(), bundle, version) as runner:
            declared = partial(v2.check_declared, runner, op)  # datatype, rows and width before values are read
            req = await off_loop(typed_values(request), decode_infer, request, declared)  # big typed inputs off it
            columns, values = await v2.run_request(runner, op, req, _alive(context))
            served_version = str(runner.model.manifest.version)
        tensors, scalars = v2.answer_parts(req, columns)
        response = await off_loop(values, encode_infer, model, served_version, req, tensors, scalars)
        size, limit = tensor_bytes(response), self.settings.grpc_max_message_bytes
        if size + ANSWER_ENVELOPE_BYTES > limit:  # a backstop: start-up checks that the largest allowed answer fits
            raise PayloadTooLarge(
                f"this answer holds {size} bytes of tensors; a gRPC message holds at most {limit} with its envelope"
            )
        return response

    async def repository_index(self, request: Any, context: Any) -> Any:
        pb = proto()
        rows = await v2.index_rows(v2.opened(self.repository()), request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows])

    async def repository_load(self, request: Any, context: Any) -> Any:
        params = {key: parameter_value(value) for key, value in request.parameters.items()}
        version = v2.load_version(params.get("version"))
        await v2.opened(self.repository()).load(v2.bundle_of(request.model_name), version)
        return proto().RepositoryModelLoadResponse()

    async def repository_unload(self, request: Any, context: Any) -> Any:
        await v2.opened(self.repository()).unload(v2.bundle_of(request.model_name))
        return proto().RepositoryModelUnloadResponse()

    # gRPC's standard health service (grpc.health.v1.Health), for probes and clients' health checking.

    def _health_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        h = health_pb2
        return {
            "Check": grpc.unary_unary_rpc_method_handler(
                self._served("Check", Rpc(self.health_check, None), h.HealthCheckRequest, HEALTH),
                response_serializer=h.HealthCheckResponse.SerializeToString,
            ),
            "List": grpc.unary_unary_rpc_method_handler(
                self._served("List", Rpc(self.health_list, None), h.HealthListRequest, HEALTH),
                response_serializer=h.HealthListResponse.SerializeToString,
            ),
            "Watch": grpc.unary_stream_rpc_method_handler(
                self._streamed("Watch", self.health_watch, h.HealthCheckRequest, HEALTH),
                response_serializer=h.HealthCheckResponse.SerializeToString,
            ),
        }

    def health(self, service: str) -> int:
        """The status of `service` in this worker: SERVING while a model serves here (ServerReady's rule) and the
        server is not stopping, else NOT_SERVING; SERVICE_UNKNOWN for a name it does not report on."""
        if service not in HEALTH_SERVICES:
            return SERVICE_UNKNOWN
        repo = self.repository()
        return SERVING if self._stopping is None and repo is not None and repo.current else NOT_SERVING

    async def health_check(self, request: Any, context: Any) -> Any:
        status = self.health(request.service)
        if status == SERVICE_UNKNOWN:
            names = " and ".join(repr(name) for name in HEALTH_SERVICES)
            raise ServiceNotFound(f"no health status for service {quoted(request.service)}; this server has {names}")
        return health_pb2.HealthCheckResponse(status=status)

    async def health_list(self, request: Any, context: Any) -> Any:
        response = health_pb2.HealthListResponse()
        for name in HEALTH_SERVICES:
            response.statuses[name].status = self.health(name)
        return response

    async def health_watch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        """The status now, then each change (re-read every WATCH_RECHECK_S); SERVICE_UNKNOWN, once, for a name the
        server does not report on, and the stream stays open, as the protocol asks. When the server's stop begins:
        NOT_SERVING, and the stream ends, so the drain does not wait for its client to leave."""
        calls = self.settings.grpc_max_concurrent_rpcs
        if self._watches >= calls // WATCH_SHARE:  # below 4 calls, none: a watch would hold a call a probe needs
            raise TooManyWatches(
                f"health Watch streams may hold a quarter of this worker's {calls} calls "
                f"(VAE_GRPC_MAX_CONCURRENT_RPCS), {calls // WATCH_SHARE}, and hold them all; check with Check"
            )
        self._watches += 1
        try:
            last = None
            while True:
                status = self.health(request.service)
                if status != last:
                    yield health_pb2.HealthCheckResponse(status=status)
                    last = status
                if self._stopping is not None:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_begun.wait(), WATCH_RECHECK_S)
        finally:
            self._watches -= 1


def parser(method: str, message: Any) -> Callable[[bytes], Any]:
    """The message class's parse of a call's bytes: refused by size past MAX_CONTROL_BYTES (any RPC but
    ModelInfer, whose bound is VAE_MAX_BODY_BYTES, gRPC's own), InvalidInput when they are not such a message."""
    limit = None if method == "ModelInfer" else MAX_CONTROL_BYTES

    def parse(raw: bytes) -> Any:
        if limit is not None and len(raw) > limit:
            raise PayloadTooLarge(f"a {method} message of {len(raw)} bytes; {method} takes at most {limit}")
        try:
            return message.FromString(raw)
        except DecodeError:
            raise InvalidInput(f"the message is not a valid {message.DESCRIPTOR.full_name}") from None

    return parse


def cut(text: str, limit: int) -> str:
    """`text` in at most `limit` bytes of UTF-8, ending "..." when cut (never inside a character)."""
    data = text.encode()
    return text if len(data) <= limit else data[: limit - 3].decode(errors="ignore") + "..."


def _past_deadline(context: Any) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def _alive(context: Any) -> Alive:
    """False once the call is cancelled or past its deadline (checked between the chunks of a big request)."""

    async def check() -> bool:
        return not context.cancelled() and not _past_deadline(context)

    return check

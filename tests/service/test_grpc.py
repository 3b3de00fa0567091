"""The Open Inference Protocol over gRPC: a real client (tritonclient.grpc) against a real vae-serve, the same answers,
messages, roles and batches as REST."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from runtime.errors import LimitExceeded
from service.access import UVICORN_FORWARDED_ALLOW_IPS, Access, ForwardedFor
from service.app import create_app
from service.errors import GRPC_STATUS, ClientGone, InferenceTimeout, InvalidInput, ServiceError, WorkerTimeout
from service.grpc_codec import decode_infer, proto, tensor_bytes
from service.grpc_face import MAX_DETAILS, GrpcFace, Rpc, client_address, cut, listen_address
from service.metrics import Metrics
from service.settings import ServiceSettings
from tests.conftest import free_port
from tests.service.conftest import vae_serve
from training.data import load_table

grpcclient = pytest.importorskip("tritonclient.grpc")
grpc = pytest.importorskip("grpc")
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

DIGITS = load_table("builtin:digits").x
READER, ADMIN = {"authorization": "Bearer reader-key"}, {"authorization": "Bearer admin-key"}
KEYS = {"VAE_API_KEYS": "reader-key", "VAE_ADMIN_KEYS": "admin-key"}
ROWS = {"encode": "inputs", "decode": "latents", "score": "inputs"}  # the /v1 field of each op's rows
ASKS = {"encode": {"samples": 1}, "decode": {"sample": True}, "score": {"explain": True}}  # /v1 for every output
Server = tuple[str, str, subprocess.Popen[bytes]]  # (REST base URL, gRPC address, process)


@pytest.fixture(scope="module")
def server(serving_repository: Path) -> Iterator[Server]:
    """vae-serve with keys and a batch window long enough for a REST and a gRPC request to meet in it; one thread a
    run, so that a big request takes long enough to be cut short on any machine."""
    port = free_port()
    env = {**KEYS, "VAE_GRPC_PORT": str(port), "VAE_BATCH_MAX_DELAY_MS": "150", "VAE_INTRA_OP_THREADS": "1"}
    with vae_serve(serving_repository, **env) as (base, proc):
        yield base, f"127.0.0.1:{port}", proc


def _client(server: Server) -> Any:
    return grpcclient.InferenceServerClient(server[1])


def _code(exc: InferenceServerException) -> str:
    return str(exc.status()).removeprefix("StatusCode.")


def _rest_v2_error(server: Server, model: str, body: dict[str, Any]) -> str:
    r = httpx.post(f"{server[0]}/v2/models/{model}/infer", json=body, headers=READER, timeout=30)
    assert r.status_code >= 400
    return str(r.json()["error"])


def _rows(op: str, n: int = 3) -> np.ndarray:
    width = {"encode": 64, "score": 64, "decode": 4}[op]
    if op == "decode":
        return np.random.default_rng(1).normal(size=(n, width)).astype(np.float32)
    return DIGITS[:n].astype(np.float32)


def _typed(response: Any, name: str) -> np.ndarray:
    """An output of a ModelInferResponse in typed contents (tritonclient.grpc reads only raw ones)."""
    (out,) = [o for o in response.outputs if o.name == name]
    field = {"FP32": "fp32_contents", "FP64": "fp64_contents", "BOOL": "bool_contents"}[out.datatype]
    dtype = {"FP32": np.float32, "FP64": np.float64, "BOOL": np.bool_}[out.datatype]
    return np.asarray(getattr(out.contents, field), dtype=dtype).reshape(list(out.shape))


def _metric(base: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_every_service_error_kind_has_a_grpc_status_code() -> None:
    kinds = set(ServiceError.__subclasses__())
    assert kinds <= set(GRPC_STATUS)
    assert all(code in grpc.StatusCode.__members__ for code in GRPC_STATUS.values())


def test_peer_addresses_and_listen_addresses() -> None:
    assert client_address("ipv4:127.0.0.1:5000") == "127.0.0.1"
    assert client_address("ipv6:[::1]:5000") == "::1"  # as uvicorn's scope["client"] has it
    assert client_address("ipv6:%5B::1%5D:5000") == "::1"
    assert client_address("unix:/tmp/s") == ""
    assert listen_address("::", 8081) == "[::]:8081" and listen_address("0.0.0.0", 8081) == "0.0.0.0:8081"


@pytest.mark.anyio
async def test_keyless_repository_changes_come_from_loopback_clients_in_process(serving_repository: Path) -> None:
    # the app's lifespan serves gRPC on its own event loop: an asyncio client on the same loop
    aio = pytest.importorskip("tritonclient.grpc.aio")
    port = free_port()
    settings = ServiceSettings(model_repository=serving_repository, grpc_port=port, log_requests=False)
    app = create_app(settings, serve_grpc=True)
    async with app.router.lifespan_context(app):
        client = aio.InferenceServerClient(f"127.0.0.1:{port}")
        # behind a sidecar (Knative's queue-proxy) every caller connects from loopback: the client it names decides,
        # on gRPC as on REST
        with pytest.raises(InferenceServerException) as caught:
            await client.unload_model("digits-diag", headers={"x-forwarded-for": "203.0.113.7"})
        assert _code(caught.value) == "PERMISSION_DENIED" and "loopback clients only" in caught.value.message()
        assert app.state.repository.current.get("digits-diag")
        await client.unload_model("digits-diag")  # no keys: every client a reader, loopback ones may change
        assert not app.state.repository.current.get("digits-diag")
        # a model not served is ready=false, as Triton answers, not an error
        assert await client.is_model_ready("digits-diag.encode") is False
        assert await client.is_model_ready("no-such-bundle.encode") is False
        for chain in ("127.0.0.1", "203.0.113.7, 127.0.0.6"):  # through a proxy in the pod: not a loopback client
            with pytest.raises(InferenceServerException) as caught:
                await client.load_model("digits-diag", headers={"x-forwarded-for": chain})
            assert _code(caught.value) == "PERMISSION_DENIED" and "not through a proxy" in caught.value.message()
        await client.load_model("digits-diag")
        assert await client.is_model_ready("digits-diag.encode") is True
        await client.close()
    plain = create_app(settings)  # without serve_grpc (the tests' in-process apps): no gRPC port is opened
    async with plain.router.lifespan_context(plain):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the closed connections, not a listener
            s.bind(("127.0.0.1", port))


@pytest.mark.anyio
async def test_sigterm_refuses_new_grpc_calls_at_once_and_hands_the_signal_on(serving_repository: Path) -> None:
    # uvicorn's handler (here a stand-in) sets should_exit and drains HTTP before the lifespan ends; gRPC must stop
    # taking calls at the signal, not only at the lifespan's end
    aio = pytest.importorskip("tritonclient.grpc.aio")
    heard: list[int] = []
    found = signal.signal(signal.SIGTERM, lambda signum, frame: heard.append(signum))
    try:
        port = free_port()
        settings = ServiceSettings(model_repository=serving_repository, grpc_port=port, log_requests=False)
        app = create_app(settings, serve_grpc=True)
        async with app.router.lifespan_context(app):
            client = aio.InferenceServerClient(f"127.0.0.1:{port}")
            assert await client.is_server_ready()
            await client.close()
            signal.raise_signal(signal.SIGTERM)
            assert heard == [signal.SIGTERM]  # the server's own handler still ran
            deadline = time.monotonic() + 5
            while True:  # the lifespan has not ended (HTTP would still be draining), yet new calls are refused
                fresh = aio.InferenceServerClient(f"127.0.0.1:{port}")
                try:
                    await fresh.is_server_ready(client_timeout=1)
                except InferenceServerException:
                    break
                finally:
                    await fresh.close()
                assert time.monotonic() < deadline, "gRPC still took new calls after SIGTERM"
                await asyncio.sleep(0.05)
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler) and handler(signal.SIGTERM, None) is None and heard[-1] == signal.SIGTERM
        assert len(heard) == 2  # the lifespan put the handler it found back
    finally:
        signal.signal(signal.SIGTERM, found)


@pytest.mark.anyio
async def test_a_grpc_port_in_use_stops_start_up(serving_repository: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = ServiceSettings(model_repository=serving_repository, grpc_port=port, log_requests=False)
        app = create_app(settings, serve_grpc=True)
        with pytest.raises(RuntimeError):
            async with app.router.lifespan_context(app):
                pass
        # as uvicorn runs it: the failure in its own words, one line, not Starlette's traceback
        app = create_app(settings, serve_grpc=True)
        sent: list[dict[str, Any]] = []
        asked = iter([{"type": "lifespan.startup"}])

        async def receive() -> dict[str, Any]:
            return next(asked)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        with pytest.raises(RuntimeError):
            await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert sent[0]["message"] == (
        f"start-up failed: the gRPC port {port} on 127.0.0.1 cannot be bound (Failed to bind to address "
        f"127.0.0.1:{port}): free it, or --grpc-port (VAE_GRPC_PORT; 0: no gRPC)"
    )


def test_health_metadata_and_index_answer_as_rest(server: Server) -> None:
    client = _client(server)
    assert client.is_server_live() and client.is_server_ready()  # open, like /v2/health/*
    with grpc.insecure_channel(server[1]) as channel:  # gRPC's standard health service, keyless as a probe is
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    assert client.get_server_metadata(as_json=True)["name"] == "gaussian-vae"
    assert client.is_model_ready("digits-diag.score", headers=READER)
    for model in ("digits-diag.encode", "digits-full.score", "digits-full.sample"):
        meta = client.get_model_metadata(model, headers=READER, as_json=True)
        rest = httpx.get(f"{server[0]}/v2/models/{model}", headers=READER).json()
        for side in ("inputs", "outputs"):
            got = [{**t, "shape": [int(d) for d in t.get("shape", [])]} for t in meta.get(side, [])]
            assert got == rest[side]
        assert meta["versions"] == rest["versions"] and meta["platform"] == rest["platform"]
    index = client.get_model_repository_index(headers=READER, as_json=True)["models"]
    rest_index = httpx.post(f"{server[0]}/v2/repository/index", headers=READER).json()
    assert [(m["name"], m["version"], m["state"]) for m in index] == [
        (m["name"], m["version"], m["state"]) for m in rest_index
    ]


@pytest.mark.parametrize("bundle", ["digits-diag", "digits-full"])
@pytest.mark.parametrize("op", ["encode", "decode", "sample", "score"])
def test_infer_with_raw_and_typed_contents_equals_v1(server: Server, bundle: str, op: str) -> None:
    client, model = _client(server), f"{bundle}.{op}"
    meta = client.get_model_metadata(model, headers=READER, as_json=True)
    listed = [o["name"] for o in meta["outputs"]]
    rows = _rows(op) if op in ROWS else None
    params = {"seed": 4, **({"n": 3} if op == "sample" else {})}
    v1_body = {**ASKS.get(op, {}), "seed": 4, **({ROWS[op]: rows.tolist()} if rows is not None else {})}
    if op == "sample":
        v1_body = {"n": 3, "seed": 4, "return_latents": True}
    v1 = httpx.post(f"{server[0]}/v1/models/{bundle}/{op}", json=v1_body, headers=READER, timeout=30).json()
    asked = [grpcclient.InferRequestedOutput(n) for n in listed]
    # raw: tritonclient sends raw_input_contents and reads raw_output_contents
    inputs = []
    if rows is not None:
        tensor = grpcclient.InferInput(meta["inputs"][0]["name"], list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        inputs.append(tensor)
    raw = client.infer(model, inputs, outputs=asked, parameters=params, headers=READER)
    assert raw.get_response().raw_output_contents or op == "sample"
    # typed: the values in contents.fp32_contents, the answer in typed contents too
    pb = grpcclient.service_pb2
    request = pb.ModelInferRequest(model_name=model, id="typed-1", outputs=[{"name": n} for n in listed])
    for key, value in params.items():
        request.parameters[key].int64_param = value
    if rows is not None:
        request.inputs.add(name=meta["inputs"][0]["name"], datatype="FP32", shape=rows.shape)
        request.inputs[0].contents.fp32_contents.extend(rows.ravel().tolist())
    channel = grpc.insecure_channel(server[1])
    stub = grpcclient.service_pb2_grpc.GRPCInferenceServiceStub(channel)
    response = stub.ModelInfer(request, metadata=tuple(READER.items()))
    channel.close()
    assert response.id == "typed-1" and bool(response.raw_output_contents) == (rows is None)  # sample: no input
    for name in listed:
        np.testing.assert_allclose(raw.as_numpy(name).astype(float), np.asarray(v1[name], float), rtol=1e-6)
        typed = grpcclient.InferResult(response).as_numpy(name) if rows is None else _typed(response, name)
        np.testing.assert_array_equal(typed, raw.as_numpy(name))


def test_bad_requests_get_their_status_code_and_the_rest_message(server: Server) -> None:
    client = _client(server)

    def refused(model: str, x: np.ndarray | None, datatype: str = "FP32", headers: Any = READER) -> Any:
        inputs = []
        if x is not None:
            tensor = grpcclient.InferInput("x", list(x.shape), datatype)
            tensor.set_data_from_numpy(x)
            inputs.append(tensor)
        with pytest.raises(InferenceServerException) as caught:
            client.infer(model, inputs, headers=headers)
        return caught.value

    wide = refused("digits-diag.score", np.zeros((2, 5), np.float32))
    assert _code(wide) == "INVALID_ARGUMENT"
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 5], "data": [0.0] * 10}]}
    assert wide.message() == _rest_v2_error(server, "digits-diag.score", body)
    doubles = refused("digits-diag.score", np.zeros((2, 64), np.float64), "FP64")
    assert _code(doubles) == "INVALID_ARGUMENT" and "must have datatype FP32" in doubles.message()
    unknown = refused("nope.score", np.zeros((1, 64), np.float32))
    assert _code(unknown) == "NOT_FOUND"
    assert unknown.message() == _rest_v2_error(server, "nope.score", {"inputs": []})
    assert _code(refused("digits-diag.explode", None)) == "NOT_FOUND"
    assert _code(refused("digits-diag.score", np.zeros((1, 64), np.float32), headers={})) == "UNAUTHENTICATED"
    wrong_key = {"authorization": "Bearer wrong"}
    assert _code(refused("digits-diag.score", np.zeros((1, 64), np.float32), headers=wrong_key)) == "UNAUTHENTICATED"
    too_many = refused("digits-diag.encode", np.zeros((8193, 64), np.float32))  # VAE_MAX_ROWS is 8192
    assert _code(too_many) == "RESOURCE_EXHAUSTED"
    too_big = refused("digits-diag.encode", np.zeros((66_000, 64), np.float32))  # 16.1 MiB, over VAE_MAX_BODY_BYTES
    assert _code(too_big) == "RESOURCE_EXHAUSTED"
    two = [grpcclient.InferInput(name, [1, 64], "FP32") for name in ("x", "y")]
    for tensor in two:
        tensor.set_data_from_numpy(np.zeros((1, 64), np.float32))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("digits-diag.score", two, headers=READER)
    body = {"inputs": [{"name": n, "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64} for n in ("x", "y")]}
    assert _code(caught.value) == "INVALID_ARGUMENT"
    assert caught.value.message() == _rest_v2_error(server, "digits-diag.score", body)
    assert "the request has 2 inputs; an operation takes at most 1" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("digits-diag.score")  # no key
    assert _code(caught.value) == "UNAUTHENTICATED"


def _raw_call(server: Server, method: str, message: bytes, headers: dict[str, str] = READER) -> tuple[str, str]:
    """(status code name, details) of one call of `method` sent these bytes as its message, unchecked."""
    with grpc.insecure_channel(server[1]) as channel:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")  # bytes in, bytes out
        try:
            call(message, metadata=tuple(headers.items()), timeout=30)
            return "OK", ""
        except grpc.RpcError as exc:
            return exc.code().name, exc.details() or ""


def test_a_call_its_key_cannot_make_is_refused_before_its_message_arrives(server: Server) -> None:
    # grpc holds a unary call's message whole before its handler runs: a client without a key could make the server
    # hold VAE_MAX_BODY_BYTES per call it opens and never finishes. The call is refused as it starts, so a message
    # that never comes is not waited for (before, the call ran into its deadline)
    def never() -> Any:
        time.sleep(8)  # past each call's 5 s deadline
        yield b""

    with grpc.insecure_channel(server[1]) as channel:
        call = channel.stream_unary("/inference.GRPCInferenceService/ModelInfer")  # its message never sent
        started = time.monotonic()
        for headers, expected in (({}, "UNAUTHENTICATED"), (READER, "DEADLINE_EXCEEDED")):
            with pytest.raises(grpc.RpcError) as caught:
                call(never(), metadata=tuple(headers.items()), timeout=5)
            assert caught.value.code().name == expected, caught.value.details()
        unload = channel.stream_unary("/inference.GRPCInferenceService/RepositoryModelUnload")
        with pytest.raises(grpc.RpcError) as caught:
            unload(never(), metadata=tuple(READER.items()), timeout=5)  # a reader's key cannot unload
        assert caught.value.code().name == "PERMISSION_DENIED"
        assert "this needs the admin role" in (caught.value.details() or "")
    assert time.monotonic() - started < 12  # the refusals came at once; the reader's call waited for its message
    labels = {"endpoint": "grpc:ModelInfer", "model": "unknown", "status": "UNAUTHENTICATED"}
    assert _metric(server[0], "vae_requests_total", **labels) >= 1  # counted as the handler counts them


def test_a_message_is_read_only_after_its_key_is_checked(server: Server) -> None:
    # as REST reads no body of a request its key does not allow: without a key nothing is parsed, and a message that
    # is not one answers INVALID_ARGUMENT, counted, not grpcio's UNKNOWN naming a Python class
    garbage = b"\xff\xff\xff"
    assert _raw_call(server, "ModelInfer", garbage, headers={})[0] == "UNAUTHENTICATED"
    code, details = _raw_call(server, "ModelInfer", garbage)
    assert (code, details) == (
        "INVALID_ARGUMENT",
        "InvalidInput: the message is not a valid inference.ModelInferRequest",
    )
    labels = {"endpoint": "grpc:ModelInfer", "model": "unknown", "status": "INVALID_ARGUMENT"}
    assert _metric(server[0], "vae_requests_total", **labels) >= 1
    # every RPC but ModelInfer holds a name and a few parameters: a big message is refused unread
    big = proto().RepositoryIndexRequest(repository_name="r" * 70_000).SerializeToString()
    code, details = _raw_call(server, "RepositoryIndex", big)
    assert code == "RESOURCE_EXHAUSTED" and "RepositoryIndex takes at most 65536" in details
    assert _raw_call(server, "ServerLive", big, headers={})[0] == "RESOURCE_EXHAUSTED"


def test_each_output_is_asked_for_once_and_parameters_are_bounded_on_both_faces(server: Server) -> None:
    # each name asked for is an output of the answer: repeats would multiply an answer past VAE_MAX_ANSWER_VALUES,
    # which counts each output once; long lists and maps are refused by their length before they are walked
    client = _client(server)
    x = grpcclient.InferInput("x", [2, 64], "FP32")
    x.set_data_from_numpy(DIGITS[:2].astype(np.float32))
    rows = {"name": "x", "datatype": "FP32", "shape": [2, 64], "data": DIGITS[:2].reshape(-1).tolist()}
    nll = grpcclient.InferRequestedOutput("feature_nll")
    cases = [
        ({"outputs": [nll, nll]}, {"outputs": [{"name": "feature_nll"}] * 2}, "'feature_nll' is asked for twice"),
        (
            {"outputs": [grpcclient.InferRequestedOutput(f"o{i}") for i in range(10)]},
            {"outputs": [{"name": f"o{i}"} for i in range(10)]},
            "asks for 10 outputs; an operation has at most 9",
        ),
        (
            {"parameters": {f"p{i}": i for i in range(65)}},
            {"parameters": {f"p{i}": i for i in range(65)}},
            "parameters has 65 entries; a request may give at most 64",
        ),
    ]
    for grpc_args, rest_body, expected in cases:
        with pytest.raises(InferenceServerException) as caught:
            client.infer("digits-diag.score", [x], headers=READER, **grpc_args)
        assert _code(caught.value) == "INVALID_ARGUMENT" and expected in caught.value.message()
        assert caught.value.message() == _rest_v2_error(server, "digits-diag.score", {"inputs": [rows], **rest_body})
    # a typed input is refused by its declared name and shape before its values are read, let alone converted: these
    # declare 16,384 rows and carry 5 values, whose count alone would otherwise be the complaint
    for name, expected_error in (
        ("x", ("RESOURCE_EXHAUSTED", "PayloadTooLarge: x has 16384 rows; the limit is 8192 (VAE_MAX_ROWS)")),
        ("q", ("INVALID_ARGUMENT", "InvalidInput: score takes input(s) ['x'], got ['q']")),
    ):
        request = proto().ModelInferRequest(model_name="digits-diag.score")
        request.inputs.add(name=name, datatype="FP32", shape=[16384, 64]).contents.fp32_contents.extend([0.5] * 5)
        assert _raw_call(server, "ModelInfer", request.SerializeToString()) == expected_error


def test_a_typed_input_is_checked_by_its_declared_shape_before_its_values_are_read() -> None:
    pb, seen = proto(), []
    message = pb.ModelInferRequest()
    message.inputs.add(name="x", datatype="FP32", shape=[9000, 64]).contents.fp32_contents.extend([0.0] * 5)

    def declared(name: str, datatype: str, shape: list[int]) -> None:
        seen.append((name, datatype, shape))
        raise LimitExceeded("x has 9000 rows; the limit is 8192 (VAE_MAX_ROWS)")

    with pytest.raises(LimitExceeded):
        decode_infer(message, declared)  # before its 5 values are even counted against the 576,000 declared
    assert seen == [("x", "FP32", [9000, 64])]


def test_an_answers_size_is_its_tensors_bytes_raw_and_typed() -> None:
    response = proto().ModelInferResponse()
    response.outputs.add(name="mean", datatype="FP32")
    response.raw_output_contents.append(bytes(4096))
    response.outputs.add(name="p_value", datatype="FP64").contents.fp64_contents.extend([0.5] * 10)
    assert tensor_bytes(response) == 4096 + 80 <= response.ByteSize() <= 4096 + 80 + 64  # framing aside


def test_load_and_unload_need_the_admin_role(server: Server) -> None:
    client = _client(server)
    with pytest.raises(InferenceServerException) as caught:
        client.unload_model("digits-full", headers=READER)
    assert _code(caught.value) == "PERMISSION_DENIED" and "admin role" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("digits-full")
    assert _code(caught.value) == "UNAUTHENTICATED"
    client.unload_model("digits-full.score", headers=ADMIN)
    states = {m["name"]: m["state"] for m in client.get_model_repository_index(headers=READER, as_json=True)["models"]}
    assert states["digits-full.score"] == "UNAVAILABLE" and states["digits-diag.score"] == "READY"
    assert client.is_model_ready("digits-full.score", headers=READER) is False
    client.load_model("digits-full", headers=ADMIN)
    assert client.is_model_ready("digits-full.score", headers=READER)
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("missing-bundle", headers=ADMIN)
    assert _code(caught.value) == "NOT_FOUND"


def test_calls_are_counted_with_the_rest_label_rules(server: Server) -> None:
    client = _client(server)
    x = grpcclient.InferInput("x", [1, 64], "FP32")
    x.set_data_from_numpy(DIGITS[:1].astype(np.float32))
    client.infer("digits-diag.score", [x], headers=READER)
    with pytest.raises(InferenceServerException):
        client.infer("made-up-name.score", [x], headers=READER)
    base = server[0]
    labels = {"endpoint": "grpc:ModelInfer"}
    assert _metric(base, "vae_requests_total", **labels, model="digits-diag.score", status="OK") >= 1
    assert _metric(base, "vae_requests_total", **labels, model="unknown", status="NOT_FOUND") >= 1
    assert _metric(base, "vae_requests_total", endpoint="grpc:ModelInfer", model="made-up-name.score") == 0


def test_a_deadline_that_expires_stops_the_work(server: Server) -> None:
    client, base = _client(server), server[0]
    rows = np.repeat(DIGITS[:16].astype(np.float32), 64, axis=0)  # 1024 rows x K=1024: 64 chunks of 16 rows
    x = grpcclient.InferInput("x", list(rows.shape), "FP32")
    x.set_data_from_numpy(rows)
    runs_before = _metric(base, "vae_batch_rows_count", model="digits-full", graph="scorer")
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as caught:
        client.infer(
            "digits-full.score", [x], parameters={"importance_samples": 1024}, headers=READER, client_timeout=0.2
        )
    assert _code(caught.value) == "DEADLINE_EXCEEDED" and time.monotonic() - started < 5
    time.sleep(1.0)
    ran = _metric(base, "vae_batch_rows_count", model="digits-full", graph="scorer") - runs_before
    assert ran < 64  # stopped before the last chunk
    counted = _metric(base, "vae_requests_total", endpoint="grpc:ModelInfer", status="DEADLINE_EXCEEDED")
    assert counted + _metric(base, "vae_requests_total", endpoint="grpc:ModelInfer", status="CANCELLED") >= 1
    assert client.is_server_ready()


def test_a_mixed_rest_and_grpc_load_batches_together_and_answers_each_row_alone(server: Server) -> None:
    # four REST and four gRPC clients, each with its own row, at once: one scorer run holds all eight rows (the
    # batch window is 150 ms), and each client gets what its row alone gets (the same noise for every row)
    base, n = server[0], 4
    rows = DIGITS[: 2 * n].astype(np.float32)
    params = {"importance_samples": 3, "seed": 1}
    alone = [
        httpx.post(
            f"{base}/v1/models/digits-diag/score", json={"inputs": rows[i : i + 1].tolist(), **params}, headers=READER
        ).json()["elbo"][0]
        for i in range(2 * n)
    ]
    clients = [_client(server) for _ in range(n)]
    for client in clients:  # warm channels: a connection set up inside the window would miss the batch
        assert client.is_server_live()
    http = [httpx.Client(base_url=base, headers=READER, timeout=30) for _ in range(n)]

    def over_rest(i: int) -> float:
        body = {"inputs": rows[i : i + 1].tolist(), **params}
        answer = http[i].post("/v1/models/digits-diag/score", json=body)
        answer.raise_for_status()
        return float(answer.json()["elbo"][0])

    def over_grpc(i: int) -> float:
        x = grpcclient.InferInput("x", [1, 64], "FP32")
        x.set_data_from_numpy(rows[n + i : n + i + 1])
        answer = clients[i].infer("digits-diag.score", [x], parameters=params, headers=READER)
        return float(answer.as_numpy("elbo")[0])

    try:
        for _ in range(3):
            runs = _metric(base, "vae_batch_rows_count", model="digits-diag", graph="scorer")
            batched = _metric(base, "vae_batch_rows_sum", model="digits-diag", graph="scorer")
            barrier = threading.Barrier(2 * n)
            answers: dict[int, float] = {}

            def call(i: int, barrier: threading.Barrier = barrier, answers: dict[int, float] = answers) -> None:
                barrier.wait()
                answers[i] = over_rest(i) if i < n else over_grpc(i - n)

            threads = [threading.Thread(target=call, args=(i,)) for i in range(2 * n)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert [answers[i] for i in range(2 * n)] == pytest.approx(alone, rel=1e-6)
            new_runs = _metric(base, "vae_batch_rows_count", model="digits-diag", graph="scorer") - runs
            new_rows = _metric(base, "vae_batch_rows_sum", model="digits-diag", graph="scorer") - batched
            assert new_rows == 2 * n
            if new_runs == 1:
                return  # one scorer run held every client's row, REST's and gRPC's
    finally:
        for h in http:
            h.close()
    pytest.fail("the REST and gRPC clients' rows never shared one batch")


def test_every_worker_serves_grpc_and_sigterm_drains_calls_in_flight(serving_repository: Path, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = {"VAE_WORKERS": "2", "VAE_GRPC_PORT": str(port), "VAE_INTRA_OP_THREADS": "1"}
    with log_path.open("wb") as log, vae_serve(serving_repository, stderr=log, log_level="info", **env) as (base, proc):
        deadline = time.monotonic() + 30
        while log_path.read_text().count("gRPC: the Open Inference Protocol") < 2:
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        for _ in range(4):  # a new channel each: the kernel spreads the connections over the workers
            fresh = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
            assert fresh.is_server_ready()
            fresh.close()
        rows = np.repeat(DIGITS[:16].astype(np.float32), 64, axis=0)  # 64 chunks: the call outlasts the signal
        x = grpcclient.InferInput("x", list(rows.shape), "FP32")
        x.set_data_from_numpy(rows)
        results: list[Any] = []
        call = threading.Thread(
            target=lambda: results.append(
                grpcclient.InferenceServerClient(f"127.0.0.1:{port}").infer(
                    "digits-full.score", [x], parameters={"importance_samples": 1024}
                )
            )
        )
        runs = _metric(base, "vae_batch_rows_count", model="digits-full", graph="scorer")
        call.start()
        while _metric(base, "vae_batch_rows_count", model="digits-full", graph="scorer") == runs:
            time.sleep(0.02)
        assert call.is_alive()  # running: its first chunks are done, not its 64th
        # a health watch open through the signal (a client's health checking) hears NOT_SERVING, and its stream
        # ends then, instead of holding the drain until the grace cancels it
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
        heard = [next(watch).status]
        proc.send_signal(signal.SIGTERM)
        heard += [r.status for r in watch]  # to the stream's end: an error here would raise
        channel.close()
        assert heard == [health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING]
        call.join(timeout=60)
        assert results and results[0].as_numpy("elbo").shape == (1024,)
        assert proc.wait(timeout=60) == 0


class _Context:
    """What a grpc.aio ServicerContext tells a handler, with its deadline `remaining` seconds away."""

    def __init__(
        self, remaining: float | None, metadata: tuple[tuple[str, str], ...] = (), peer: str = "ipv4:127.0.0.1:5000"
    ) -> None:
        self.remaining, self.metadata, self._peer = remaining, metadata, peer
        self.aborted: tuple[Any, str] | None = None
        self.trailing: Any = ()

    def time_remaining(self) -> float | None:
        return self.remaining

    def cancelled(self) -> bool:
        return False

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def peer(self) -> str:
        return self._peer

    async def abort(self, code: Any, details: str, trailing: Any = ()) -> None:
        self.aborted, self.trailing = (code, details), trailing
        raise grpc.RpcError(details)  # as grpc.aio's abort raises, ending the handler


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("remaining", "expected"), [(-0.01, "DEADLINE_EXCEEDED"), (5.0, "CANCELLED"), (None, "CANCELLED")]
)
async def test_work_stopped_by_a_passed_deadline_is_answered_deadline_exceeded(
    remaining: float | None, expected: str
) -> None:
    # the check between chunks can see the deadline pass before gRPC's own timer cancels the call: the client must
    # still hear DEADLINE_EXCEEDED (and the metrics count it so), not the CANCELLED of a client that went away
    settings = ServiceSettings(log_requests=False)
    face = GrpcFace(settings, Access(settings), Metrics(), lambda: None)

    async def stopped(request: Any, context: Any) -> Any:
        raise ClientGone("the client went away; stopped after 16 of 1024 rows")

    context = _Context(remaining)
    with pytest.raises(grpc.RpcError):
        await face._served("ModelInfer", Rpc(stopped, None), proto().ModelInferRequest)(b"", context)
    assert context.aborted is not None and context.aborted[0] == grpc.StatusCode[expected]
    assert face.metrics.requests.labels("grpc:ModelInfer", "-", expected)._value.get() == 1


@pytest.mark.anyio
async def test_a_call_cancelled_by_the_shutdown_is_counted_as_its_client_hears_it() -> None:
    # past VAE_GRACEFUL_SHUTDOWN_S grpc.aio cancels the calls still running, and their clients get UNAVAILABLE
    settings = ServiceSettings(log_requests=False)
    face = GrpcFace(settings, Access(settings), Metrics(), lambda: None)

    async def cut(request: Any, context: Any) -> Any:
        raise asyncio.CancelledError

    served = face._served("ServerLive", Rpc(cut, None), proto().ServerLiveRequest)
    face._grace_ends = time.monotonic() + 30  # SIGTERM came, the grace runs: a client that cancels is CANCELLED
    with pytest.raises(asyncio.CancelledError):
        await served(b"", _Context(5.0))
    face._grace_ends = time.monotonic() - 0.01  # past the grace the server cancels its calls
    with pytest.raises(asyncio.CancelledError):
        await served(b"", _Context(5.0))
    counted = face.metrics.requests.labels
    assert counted("grpc:ServerLive", "-", "CANCELLED")._value.get() == 1
    assert counted("grpc:ServerLive", "-", "UNAVAILABLE")._value.get() == 1


@pytest.mark.anyio
async def test_the_services_own_time_limit_is_unavailable_with_a_retry_hint() -> None:
    # past VAE_REQUEST_TIMEOUT_S is the server's overload, REST's 504: UNAVAILABLE, which clients retry and the error
    # alert counts; DEADLINE_EXCEEDED stays the client's own deadline, which the alert leaves out
    settings = ServiceSettings(log_requests=False)
    face = GrpcFace(settings, Access(settings), Metrics(), lambda: None)

    async def slow(request: Any, context: Any) -> Any:
        raise InferenceTimeout("waited longer than VAE_REQUEST_TIMEOUT_S=30")

    context = _Context(5.0)
    with pytest.raises(grpc.RpcError):
        await face._served("ModelInfer", Rpc(slow, None), proto().ModelInferRequest)(b"", context)
    assert context.aborted is not None and context.aborted[0] == grpc.StatusCode.UNAVAILABLE
    assert dict(context.trailing) == {"retry-after": "1"}
    assert face.metrics.requests.labels("grpc:ModelInfer", "-", "UNAVAILABLE")._value.get() == 1

    async def applied_here_only(request: Any, context: Any) -> Any:
        raise WorkerTimeout("the load was made here; worker 2 had not followed within 60 s")

    context = _Context(5.0)  # a repository change made, another worker slow: DEADLINE_EXCEEDED, not to be resent
    with pytest.raises(grpc.RpcError):
        await face._served("RepositoryModelLoad", Rpc(applied_here_only, None), proto().RepositoryModelLoadRequest)(
            b"", context
        )
    assert context.aborted is not None and context.aborted[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert tuple(context.trailing) == ()


@pytest.mark.anyio
async def test_a_long_message_is_cut_and_every_call_is_logged_as_rest_logs(caplog: pytest.LogCaptureFixture) -> None:
    # clients take 8-16 KiB of metadata in all: an error quoting a long value must still reach them as itself
    settings = ServiceSettings(log_requests=True)
    face = GrpcFace(settings, Access(settings), Metrics(), lambda: None)

    async def refuse(request: Any, context: Any) -> Any:
        raise InvalidInput("x" * 100_000)

    context = _Context(5.0)
    with caplog.at_level(logging.INFO, logger="service.access"), pytest.raises(grpc.RpcError):
        await face._served("ServerLive", Rpc(refuse, None), proto().ServerLiveRequest)(b"", context)
    assert context.aborted is not None and context.aborted[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert len(context.aborted[1]) == MAX_DETAILS and context.aborted[1].endswith("...")
    euros = cut("€" * 10_000, MAX_DETAILS)  # cut in bytes, where the trailer's limit is: never inside a character
    assert len(euros.encode()) <= MAX_DETAILS and euros == "€" * ((MAX_DETAILS - 3) // 3) + "..."
    (line,) = [r.getMessage() for r in caplog.records if r.name == "service.access"]
    assert re.fullmatch(
        r"request_id=grpc-\w+-\d+ method=GRPC path=/inference.GRPCInferenceService/ServerLive status=INVALID_ARGUMENT "
        r"ms=[0-9.]+",
        line,
    )


@pytest.mark.parametrize(
    "trusted",
    [
        UVICORN_FORWARDED_ALLOW_IPS,
        "10.0.0.0/8",
        "*",
        "127.0.0.1, proxy.local",
        "",
        "10.0.0.1/8, ::1",  # host bits set: not a network to uvicorn
        "127.0.0.1,*",  # "*" in a list trusts no one extra
        " *",
        "10.0.0.5, fe80::1%eth0",
    ],
)
def test_forwarded_clients_are_read_as_uvicorn_reads_them_for_rest(trusted: str) -> None:
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    seen: dict[str, str] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen["client"] = scope["client"][0]

    uvicorns, ours = ProxyHeadersMiddleware(app, trusted_hosts=trusted), ForwardedFor(trusted)
    forwarded = [
        [],
        ["203.0.113.7"],
        ["203.0.113.7, 10.0.0.5"],
        ["10.0.0.5, 127.0.0.1"],
        ["203.0.113.7:443"],
        ["[2001:db8::1]:80"],
        ["[2001:db8::1]"],
        ["2001:db8::1"],
        [""],
        ["a", "b, c"],
        ["unknown, 127.0.0.1"],
        ["1.2.3.4:x"],
        ["proxy.local"],
        ["127.0.0.1, [10.0.0.5"],
        ["[::1"],
        ["fe80::1%eth0, 203.0.113.7"],
        ["203.0.113.7, FE80::1%eth0"],
        [" 203.0.113.7 ,10.0.0.5 "],
        ["203.0.113.7,,"],
    ]
    for peer in ("127.0.0.1", "::1", "10.1.2.3", "198.51.100.2", "10.0.0.5", "fe80::1%eth0", "::ffff:127.0.0.1"):
        for values in forwarded:
            scope = {
                "type": "http",
                "client": (peer, 5000),
                "headers": [(b"x-forwarded-for", v.encode()) for v in values],
            }
            asyncio.run(uvicorns(scope, None, None))  # type: ignore[arg-type]
            assert ours.client(peer, values) == seen["client"], (trusted, peer, values)


def test_the_proxies_trusted_by_default_are_uvicorns(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    assert uvicorn.Config(app=lambda: None, log_config=None).forwarded_allow_ips == UVICORN_FORWARDED_ALLOW_IPS
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.0/8")
    assert ForwardedFor.from_env().client("10.1.2.3", ["127.0.0.1"]) == "127.0.0.1"
    assert ForwardedFor.from_env().client("127.0.0.1", ["203.0.113.7"]) == "127.0.0.1"  # loopback no longer trusted


def test_the_caller_is_read_as_rest_reads_it() -> None:
    settings = ServiceSettings(log_requests=False, api_keys=["r"], admin_keys=["a"])
    face = GrpcFace(settings, Access(settings), Metrics(), lambda: None)
    twice = (("authorization", "Bearer r"), ("authorization", "Bearer a"))
    assert face._caller(_Context(None, twice)) == ("r", "127.0.0.1", False)  # the first, as Starlette's headers.get
    assert face._caller(_Context(None, (("x-api-key", "a"),))) == ("a", "127.0.0.1", False)
    proxied = (("x-forwarded-for", "203.0.113.7"),)
    assert face._caller(_Context(None, proxied))[1:] == ("203.0.113.7", True)  # loopback: a proxy uvicorn trusts
    assert face._caller(_Context(None, proxied, "ipv6:[::1]:5000"))[1] == "203.0.113.7"
    assert face._caller(_Context(None, (), "ipv6:[::1]:5000"))[1] == "::1"
    assert face._caller(_Context(None, proxied, "ipv4:198.51.100.2:5000"))[1] == "198.51.100.2"  # not a proxy


def _infer(server: Server, request: Any) -> Any:
    """The ModelInferResponse to `request`, sent as its bytes (typed contents and parameters as built)."""
    with grpc.insecure_channel(server[1]) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer", response_deserializer=proto().ModelInferResponse.FromString
        )
        return call(request.SerializeToString(), metadata=tuple(READER.items()), timeout=30)


def _typed_request(model: str, rows: np.ndarray) -> Any:
    request = proto().ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=rows.shape).contents.fp32_contents.extend(rows.ravel().tolist())
    return request


def test_a_parameter_of_the_wrong_type_is_refused_over_grpc_when_its_output_is_asked_for(server: Server) -> None:
    request = _typed_request("digits-diag.encode", DIGITS[:1].astype(np.float32))
    request.outputs.add(name="z")
    request.parameters["samples"].bool_param = False  # no 0: types are strict, as without the output
    assert _raw_call(server, "ModelInfer", request.SerializeToString()) == (
        "INVALID_ARGUMENT",
        "InvalidInput: samples: Input should be a valid integer",
    )
    request.parameters["samples"].int64_param = 0  # the off value of its own type: asking for z draws one
    assert list(_infer(server, request).outputs[0].shape) == [1, 1, 4]


def test_a_typed_answer_too_big_is_refused_naming_raw_contents(server: Server) -> None:
    # 256 rows x (mean + log_var + 1,024 draws of z, 4 each) = 1,050,624 numbers, over the 2^20 of typed contents
    request = _typed_request("digits-diag.encode", np.repeat(DIGITS[:1].astype(np.float32), 256, axis=0))
    request.parameters["samples"].int64_param = 1024
    code, details = _raw_call(server, "ModelInfer", request.SerializeToString())
    assert code == "RESOURCE_EXHAUSTED" and "one answer in typed contents holds at most 1048576" in details
    assert "or ask for raw contents with the request parameter binary_data_output: true" in details
    assert "JSON" not in details and "V2 binary" not in details


def test_a_sample_answer_is_raw_unless_binary_data_output_is_false(server: Server) -> None:
    # sample has no input whose form the answer could follow: an explicit false still asks for typed contents
    sample = proto().ModelInferRequest(model_name="digits-diag.sample")
    sample.parameters["n"].int64_param, sample.parameters["seed"].int64_param = 2, 3
    raw = _infer(server, sample)
    sample.parameters["binary_data_output"].bool_param = False
    typed = _infer(server, sample)
    assert len(raw.raw_output_contents) == 1 and not typed.raw_output_contents
    np.testing.assert_array_equal(
        _typed(typed, "samples"), np.frombuffer(raw.raw_output_contents[0], "<f4").reshape(2, -1)
    )

"""Limits that only a real server shows, against `vae-serve` on 127.0.0.1: a body that never finishes gets 408, a
client that leaves is counted as 499, a connection stays usable after an error, the worst request the defaults
allow stays within a memory bound, and a small request passes a big one (between two of its chunks)."""

from __future__ import annotations

import json
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.settings import ServiceSettings
from tests.service.conftest import vae_serve
from training.config import DataConfig, RunConfig, TrainConfig
from training.pipeline import run

BODY_TIMEOUT_S = 1.0
ROWS = np.random.default_rng(0).integers(0, 17, (1024, 64)).astype(float).tolist()
BIG_K = 1024
# the scorer runs of a request of every row of ROWS at K = BIG_K: chunks of VAE_BATCH_MAX_DRAWS / K rows (its default)
BIG_RUNS = len(ROWS) * BIG_K // ServiceSettings.model_fields["batch_max_draws"].default


@pytest.fixture(scope="module")
def default_size_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of the default architecture (the memory a request takes grows with the network's width)."""
    repo = tmp_path_factory.mktemp("default-size")
    train = TrainConfig(epochs=1, warmup_epochs=0, eval_samples=16, seed=0)
    data = DataConfig(source="builtin:digits", seed=0, decorrelate="off")
    run(RunConfig(data=data, train=train, name="digits", repository=repo))
    return repo


@pytest.fixture(scope="module")
def server(default_size_repository: Path) -> Iterator[tuple[str, int]]:
    # the big requests here take longer than the default 10 s deadline on a loaded machine: not what is tested
    env = {"VAE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S), "VAE_REQUEST_TIMEOUT_S": "120"}
    with vae_serve(default_size_repository, **env) as (base, proc):
        yield base, proc.pid


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def _raw_request(base: str, head: bytes, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", _port(base)), timeout=10)
    sock.sendall(head + body)
    return sock


def _read_to_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (its head and body may come in several reads)."""
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def _counter(base: str, endpoint: str, status: int) -> float:
    text = httpx.get(f"{base}/metrics").text
    prefix = f'vae_requests_total{{endpoint="{endpoint}",model="'
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(prefix) and f'status="{status}"' in line
    )


def _scorer_runs(base: str) -> float:
    """onnxruntime runs of the scorer so far (vae_batch_rows counts one observation per run)."""
    lines = httpx.get(f"{base}/metrics").text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith('vae_batch_rows_count{graph="scorer"'))


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


HEAD = b"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"


HEAD_LIMIT = ServiceSettings.model_fields["max_header_bytes"].default  # 64 KiB, the server's


def _in_pieces(sock: socket.socket, data: bytes, piece: int = 8192) -> None:
    """Send data a piece at a time, so the server reads it in several reads."""
    for start in range(0, len(data), piece):
        sock.sendall(data[start : start + piece])
        time.sleep(0.01)


def _answers(raw: bytes) -> list[int]:
    """The status of each answer on a connection, in order."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]  # a body need not end with a line break


def test_a_head_that_never_ends_gets_431_once_past_its_byte_limit(server: tuple[str, int]) -> None:
    # before the bound a head of 200 MiB was held whole, waiting for its end
    base, _ = server
    chunk, sent = 8192, 0
    with _raw_request(base, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ", b"") as sock:
        # sent a chunk at a time until the server answers (having read all of it, so it closes cleanly)
        while not select.select([sock], [], [], 0.2)[0]:
            assert sent <= 4 * HEAD_LIMIT, "no answer to a head past the limit"
            sock.sendall(b"a" * chunk)
            sent += chunk
        answer = _read_to_close(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body == {
        "error": "HeadersTooLarge",
        "detail": f"request line and headers over {HEAD_LIMIT} bytes (VAE_MAX_HEADER_BYTES)",
    }
    assert HEAD_LIMIT - 2 * chunk < sent <= HEAD_LIMIT + 2 * chunk


def test_a_head_past_its_limit_that_ends_within_one_read_gets_431(server: tuple[str, int]) -> None:
    base, _ = server
    for size in (HEAD_LIMIT + 100, 3 * HEAD_LIMIT):
        head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
        with _raw_request(base, head, b"") as sock:
            assert _answers(_read_to_close(sock)) == [431], size


def test_heads_below_the_limit_are_served_and_counted_per_request_not_per_connection(server: tuple[str, int]) -> None:
    base, _ = server
    one = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (HEAD_LIMIT - 200) + b"\r\n\r\n"
    with _raw_request(base, b"", b"") as sock:
        for _ in range(3):  # each head arrives in eight reads; together three times the limit
            _in_pieces(sock, one)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")


def test_pipelined_requests_are_answered_in_order_the_431_last(server: tuple[str, int]) -> None:
    base, _ = server
    rows = json.dumps({"inputs": ROWS[:300]}).encode()  # a body past the head limit, then the next request's head
    post = b"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    post += b"Content-Length: " + str(len(rows)).encode() + b"\r\n\r\n" + rows
    get = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    with _raw_request(base, post + get, b"") as sock:  # the body's end and a head begun in one read: not a head
        time.sleep(0.3)
        sock.sendall(b"Connection: close\r\n\r\n")
        assert _answers(_read_to_close(sock)) == [200, 200]
    big = get + b"X-Big: " + b"a" * (2 * HEAD_LIMIT) + b"\r\n\r\n"
    with _raw_request(base, post + big, b"") as sock:  # the 431 after the answer to the request before it
        assert _answers(_read_to_close(sock)) == [200, 431]


def test_a_body_that_stops_short_gets_408_after_the_body_timeout(server: tuple[str, int]) -> None:
    base, _ = server
    before = _counter(base, "/v1/score", 500)
    started = time.monotonic()
    with _raw_request(base, HEAD, b'{"inputs": [[0.5') as sock:
        answer = _read_to_close(sock)
    waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"error":"RequestTimeout"' in answer and b"x-request-id" in answer.lower()
    assert BODY_TIMEOUT_S <= waited < BODY_TIMEOUT_S + 5
    assert _counter(base, "/v1/score", 408) >= 1 and _counter(base, "/v1/score", 500) == before


def test_a_client_that_leaves_mid_body_is_counted_as_499_not_500(server: tuple[str, int]) -> None:
    base, _ = server
    before = _counter(base, "/v1/score", 500)
    sock = _raw_request(base, HEAD, b'{"inputs": [[0.5')
    time.sleep(0.2)
    sock.close()
    deadline = time.monotonic() + 5
    while _counter(base, "/v1/score", 499) < 1:
        assert time.monotonic() < deadline, "the disconnect was never counted"
        time.sleep(0.1)
    assert _counter(base, "/v1/score", 500) == before


def test_the_connection_stays_usable_after_refused_requests(server: tuple[str, int]) -> None:
    base, _ = server
    overflowing = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [4611686018427387904, 4], "data": [1.0]}]}
    with httpx.Client(base_url=base, limits=httpx.Limits(max_connections=1)) as client:
        refused = [
            client.post("/v2/models/digits.score/infer", json=overflowing),
            client.post("/v2/models/digits.score/versions/%C2%B2/infer", json=overflowing),
            client.post(
                "/v2/models/digits.score/infer", content=b"{}", headers={"Inference-Header-Content-Length": b"\xb2"}
            ),
            client.post("/v1/score", json={"inputs": [ROWS[0]], "importance_samples": "16"}),
        ]
        after = client.post("/v1/score", json={"inputs": [ROWS[0]]})
    assert [r.status_code for r in refused] == [422, 404, 422, 422], [r.text for r in refused]
    assert all(r.headers["content-type"] == "application/json" and "x-request-id" in r.headers for r in refused)
    assert after.status_code == 200


def test_the_worst_score_request_the_defaults_allow_stays_within_its_memory_bound(server: tuple[str, int]) -> None:
    # 1024 rows x importance_samples 1024 = VAE_MAX_DRAWS; before chunking this one request took RSS up by 2.2 GiB
    base, pid = server
    httpx.post(f"{base}/v1/score", json={"inputs": ROWS[:1]}, timeout=30).raise_for_status()
    before = _rss_mib(pid)
    r = httpx.post(f"{base}/v1/score", json={"inputs": ROWS, "importance_samples": 1024}, timeout=120)
    assert r.status_code == 200, r.text
    grown = _rss_mib(pid) - before
    assert grown < 256, f"RSS grew by {grown:.0f} MiB"


def test_a_small_request_passes_a_big_one(server: tuple[str, int]) -> None:
    base, _ = server
    runs_before = _scorer_runs(base)
    big: list[int] = []
    big_answered = threading.Event()

    def send_big() -> None:
        r = httpx.post(f"{base}/v1/score", json={"inputs": ROWS, "importance_samples": BIG_K}, timeout=300)
        big.append(r.status_code)
        big_answered.set()

    thread = threading.Thread(target=send_big)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while _scorer_runs(base) == runs_before:  # until the big one's first chunk has run
            assert time.monotonic() < deadline and not big_answered.is_set(), "the big request never ran a chunk"
            time.sleep(0.01)
        small = httpx.post(f"{base}/v1/score", json={"inputs": ROWS[:1]}, timeout=120)
        passed = not big_answered.is_set()
        ran = _scorer_runs(base) - runs_before  # the big one's chunks so far, and the small one's run
    finally:
        thread.join()
    assert small.status_code == 200 and big == [200]
    assert passed, "the big request was answered before the small one"
    assert ran <= BIG_RUNS, f"the small request was answered after all {BIG_RUNS} of the big one's runs"

"""Limits that only a real server shows, against `vae-serve` on 127.0.0.1: a body that never finishes gets 408, a
client that leaves is counted as 499, a connection stays usable after an error, the worst request the defaults
allow stays within a memory bound, and a small request passes a big one."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.service.conftest import vae_serve
from training.config import DataConfig, TrainConfig
from training.pipeline import train_and_export

BODY_TIMEOUT_S = 1.0
ROWS = np.random.default_rng(0).integers(0, 17, (1024, 64)).astype(float).tolist()


@pytest.fixture(scope="module")
def default_size_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of the default architecture (the memory a request takes grows with the network's width)."""
    repo = tmp_path_factory.mktemp("default-size")
    train = TrainConfig(epochs=1, warmup_epochs=0, eval_samples=16, seed=0)
    train_and_export(DataConfig(source="builtin:digits", seed=0), {}, train, repo, "digits")
    return repo


@pytest.fixture(scope="module")
def server(default_size_repository: Path) -> Iterator[tuple[str, int]]:
    with vae_serve(default_size_repository, VAE_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S)) as (base, proc):
        yield base, proc.pid


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def _raw_request(base: str, head: bytes, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", _port(base)), timeout=10)
    sock.sendall(head + body)
    return sock


def _counter(base: str, endpoint: str, status: int) -> float:
    text = httpx.get(f"{base}/metrics").text
    prefix = f'vae_requests_total{{endpoint="{endpoint}",model="'
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(prefix) and f'status="{status}"' in line
    )


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


HEAD = b"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"


def test_a_body_that_stops_short_gets_408_after_the_body_timeout(server: tuple[str, int]) -> None:
    base, _ = server
    before = _counter(base, "/v1/score", 500)
    started = time.monotonic()
    with _raw_request(base, HEAD, b'{"inputs": [[0.5') as sock:
        answer = sock.recv(65536)
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
    big: dict[str, float] = {}

    def send_big() -> None:
        started = time.monotonic()
        r = httpx.post(f"{base}/v1/score", json={"inputs": ROWS, "importance_samples": 1024}, timeout=120)
        big["status"], big["s"], big["done"] = r.status_code, time.monotonic() - started, time.monotonic()

    thread = threading.Thread(target=send_big)
    thread.start()
    time.sleep(0.5)  # the big one is parsed and running its first chunks
    started = time.monotonic()
    small = httpx.post(f"{base}/v1/score", json={"inputs": ROWS[:1]}, timeout=120)
    small_s, small_done = time.monotonic() - started, time.monotonic()
    thread.join()
    assert small.status_code == 200 and big["status"] == 200
    assert small_done < big["done"] and small_s < big["s"] / 4, (small_s, big["s"])

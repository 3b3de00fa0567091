"""The live model repository: new versions found by request or poll, verified, swapped in with no failed
request; a corrupted version refused while the serving one keeps answering."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.service.conftest import serving

pytestmark = pytest.mark.anyio
ROW = [0.3] * 64


def publish(repo: Path, name: str, version: int, corrupt: bool = False) -> None:
    """Write <name>/<version> the way vae-train does: a finished folder renamed into place."""
    staging = repo / name / f".tmp-{version}"
    shutil.copytree(repo / name / "1", staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["version"] = version
    (staging / "manifest.json").write_text(json.dumps(manifest))
    if corrupt:
        data = bytearray((staging / "scorer.onnx").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (staging / "scorer.onnx").write_bytes(bytes(data))
    os.rename(staging, repo / name / str(version))


async def _score_version(client: httpx.AsyncClient) -> int:
    r = await client.post("/v1/models/digits-diag/score", json={"inputs": [ROW], "seed": 0})
    assert r.status_code == 200, r.text
    return int(r.json()["version"])


async def test_new_version_is_served_after_a_load_request_and_listed_in_the_index(repo: Path) -> None:
    async with serving(repo) as client:
        publish(repo, "digits-diag", 2)
        assert await _score_version(client) == 1
        index = {(m["name"], m["version"]): m for m in (await client.post("/v2/repository/index")).json()}
        assert index["digits-diag.score", "1"]["state"] == "READY"  # the V2 models a client can call
        assert index["digits-diag.score", "2"] == {
            "name": "digits-diag.score",
            "version": "2",
            "state": "UNAVAILABLE",
            "reason": "not loaded",
        }
        listing = (await client.get("/v1/models")).json()["repository"]
        assert listing[0]["versions_on_disk"] == [1, 2] and listing[0]["serving_version"] == 1
        loaded = await client.post("/v2/repository/models/digits-diag/load")
        assert loaded.status_code == 200 and loaded.json()["version"] == "2"
        assert await _score_version(client) == 2
        old = await client.post(
            "/v2/models/digits-diag.score/versions/1/infer",
            json={"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": ROW}]},
        )
        assert old.status_code == 404  # VAE_KEEP_VERSIONS=1: only the newest stays loaded


async def test_kept_older_versions_stay_addressable_by_version(repo: Path) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": ROW}], "parameters": {"seed": 1}}
    async with serving(repo, keep_versions=2) as client:
        publish(repo, "digits-diag", 2)
        await client.post("/v2/repository/models/digits-diag/load")
        v1 = await client.post("/v2/models/digits-diag.score/versions/1/infer", json=body)
        v2 = await client.post("/v2/models/digits-diag.score/infer", json=body)
    assert v1.json()["model_version"] == "1" and v2.json()["model_version"] == "2"


async def test_corrupted_version_is_refused_and_the_serving_version_keeps_answering(repo: Path) -> None:
    async with serving(repo) as client:
        publish(repo, "digits-diag", 2, corrupt=True)
        r = await client.post("/v2/repository/models/digits-diag/load")
        assert r.status_code == 422 and "scorer.onnx: sha256 differs" in r.json()["error"]
        assert await _score_version(client) == 1
        ready = (await client.get("/readyz")).json()
        listing = (await client.get("/v1/models")).json()
        metrics = (await client.get("/metrics")).text
    assert "digits-diag/2" in ready["refused"] and "digits-diag/2" in listing["refused"]
    assert "vae_bundles_refused 1.0" in metrics


async def test_poll_finds_new_versions_and_unload_stops_serving(repo: Path) -> None:
    async with serving(repo, poll_interval_s=0.05) as client:
        publish(repo, "digits-diag", 2)
        deadline = time.monotonic() + 10
        while await _score_version(client) != 2:
            assert time.monotonic() < deadline, "the poll did not pick up version 2"
            await asyncio.sleep(0.05)
        assert (await client.post("/v2/repository/models/digits-diag/unload")).status_code == 200
        gone = await client.post("/v1/models/digits-diag/score", json={"inputs": [ROW]})
        assert gone.status_code == 404
        assert (await client.post("/v2/repository/models/nope/load")).status_code == 404


async def test_repository_endpoints_need_the_api_key(repo: Path) -> None:
    async with serving(repo, api_keys=["k"]) as client:
        assert (await client.post("/v2/repository/index")).status_code == 401
        assert (await client.post("/v2/repository/index", headers={"X-API-Key": "k"})).status_code == 200


async def test_swap_under_load_on_a_real_server_fails_no_request(repo: Path) -> None:
    port = free_port()
    env = {**os.environ, "VAE_LOG_REQUESTS": "false", "VAE_POLL_INTERVAL_S": "0.1", "VAE_GRPC_PORT": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "--port", str(port), "--repository", str(repo), "--log-level", "warning"],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    ready = (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    ready = False
                if ready:
                    break
                assert proc.poll() is None and time.monotonic() < deadline, "vae-serve did not start"
                await asyncio.sleep(0.2)
            versions: list[int] = []
            failures: list[str] = []
            stop = asyncio.Event()

            async def load_worker() -> None:
                for _ in range(2000):  # bounded: at most 2000 requests per worker
                    if stop.is_set():
                        return
                    r = await client.post("/v1/models/digits-diag/score", json={"inputs": [ROW] * 4, "seed": 1})
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                    else:
                        versions.append(r.json()["version"])

            async def until(done: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
                limit = time.monotonic() + seconds
                while not done():
                    assert time.monotonic() < limit, f"timed out waiting until {what}"
                    await asyncio.sleep(0.05)

            workers = [asyncio.create_task(load_worker()) for _ in range(8)]
            await until(lambda: len(versions) >= 8, "version 1 answers the load")
            publish(repo, "digits-diag", 2)
            # each worker polls on its own: every one of the last 32 answers, whichever worker gave it
            await until(lambda: versions[-32:] == [2] * 32, "version 2 serves every answer")
            publish(repo, "digits-diag", 3, corrupt=True)
            deadline = time.monotonic() + 30
            while "digits-diag/3" not in (await client.get("/v1/models")).json()["refused"]:
                assert time.monotonic() < deadline, "version 3 was never refused"
                await asyncio.sleep(0.1)
            before = len(versions)
            await until(lambda: len(versions) >= before + 16, "the load goes on after the refusal")
            stop.set()
            await asyncio.gather(*workers)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert not failures, failures[:3]
    assert versions[0] == 1 and 2 in versions and 3 not in versions
    assert len(versions) > before and set(versions[before:]) == {2}  # still answering on version 2


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "listing",
    [
        "GET /v1/models",
        "POST /v2/repository/index",
        "GET /v1/models/digits-diag",
        "GET /v1/models/digits-diag/report/metrics.json",
        "GET /v1/models/digits-diag/report/none.png",
    ],
)
async def test_a_stalled_repository_volume_does_not_hold_up_the_health_checks(
    repo: Path, monkeypatch: pytest.MonkeyPatch, listing: str
) -> None:
    # the listings read folders (NFS, an object store mounted by FUSE may take seconds): on a thread, not the loop
    from fastapi import Response

    from service import routes
    from service.repository import ModelRepository

    stall_s = 2.0
    scan, list_report, read_report = ModelRepository.on_disk, routes.report_files, routes.report_file

    def stalled_scan(self: ModelRepository) -> dict[str, list[int]]:
        time.sleep(stall_s)
        return scan(self)

    def stalled_report(bundle: Path) -> list[str]:
        time.sleep(stall_s)
        return list_report(bundle)

    def stalled_read(bundle: Path, file: str, label: str) -> Response:
        time.sleep(stall_s)
        return read_report(bundle, file, label)

    async with serving(repo) as client:
        monkeypatch.setattr(ModelRepository, "on_disk", stalled_scan)
        monkeypatch.setattr(routes, "report_files", stalled_report)
        monkeypatch.setattr(routes, "report_file", stalled_read)
        method, path = listing.split()
        started = time.monotonic()
        slow = asyncio.ensure_future(client.request(method, path))
        await asyncio.sleep(0.1)  # the listing is now reading the folder (on the loop, this returns after it)
        assert (await client.get("/healthz")).status_code == 200
        assert time.monotonic() - started < stall_s / 2
        assert (await slow).status_code == (404 if "none" in path else 200)

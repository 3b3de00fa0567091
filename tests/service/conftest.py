"""Service fixtures: a repository holding the session's diagonal and full bundles, and an app client on it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from service.app import create_app
from service.settings import ServiceSettings
from tests.conftest import free_port


@asynccontextmanager
async def serving(repository: Path, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, behind an httpx client (no sockets)."""
    app = create_app(ServiceSettings(model_repository=repository, log_requests=False, **settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def repo(tmp_path: Path, serving_repository: Path) -> Path:
    """A copy of the session's repository that a test may change (publish versions, corrupt files)."""
    target = tmp_path / "repo"
    shutil.copytree(serving_repository, target)
    return target


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repo = tmp_path_factory.mktemp("e2e-models")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "--data",
            "builtin:digits",
            "--name",
            "e2e",
            "--out",
            str(repo),
            "--epochs",
            "10",
            "--warmup-epochs",
            "2",
            "--refine-steps",
            "30",
            "--hidden",
            "32",
            "--latent-dim",
            "3",
            "--eval-samples",
            "16",
            "--quiet",
        ],
        check=True,
        timeout=300,
    )
    with vae_serve(repo) as (base, _):
        yield base


@contextmanager
def vae_serve(
    repo: Path, *, stderr: IO[bytes] | None = None, log_level: str = "warning", **env: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real `vae-serve` process on 127.0.0.1 and a free port, ready; yields (base URL, process). One worker unless
    VAE_WORKERS is given: the tests that measure the process's memory measure the worker itself. Its log goes to
    `stderr` (a file opened for writing; default: this process's stderr) at `log_level`. No gRPC face unless
    VAE_GRPC_PORT is given (its default port would clash between servers started side by side)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.cli",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--repository",
            str(repo),
            "--log-level",
            log_level,
        ],
        env={**os.environ, "VAE_LOG_REQUESTS": "false", "VAE_WORKERS": "1", "VAE_GRPC_PORT": "0", **env},
        stderr=stderr,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                ready = httpx.get(f"{base}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                ready = False
            if ready:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("vae-serve did not become ready")
            time.sleep(0.2)
        yield base, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()

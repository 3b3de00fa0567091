"""deploy/: the KServe and Kubernetes manifests parse and agree with the service (settings, ports, probe paths,
volumes, shutdown), and a real vae-serve does what they rely on: it listens on PORT and drains on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np
import pytest
import yaml

from service.app import create_app
from service.settings import ServiceSettings
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
SETTINGS_ENV = {f"VAE_{name.upper()}" for name in ServiceSettings.model_fields}
# Six scoring requests that the scorer runs in chunks of VAE_BATCH_MAX_DRAWS / K rows, a row count of each (model, K)
# of its own (64, 32 or 16 at the default 16384), CHUNKS chunks each: /metrics then shows which of them has started.
IN_FLIGHT = [(model, k) for model in ("digits-diag", "digits-full") for k in (256, 512, 1024)]
CHUNK_DRAWS = ServiceSettings.model_fields["batch_max_draws"].default
CHUNKS = 16


def _docs(path: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ROOT / "deploy" / path).read_text()) if d]


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]["predictor"] if doc["kind"] == "InferenceService" else doc["spec"]["template"]["spec"]
    return spec["containers"][0]


def _env(container: dict[str, Any]) -> dict[str, str]:
    """name -> value; a value taken from a Secret as "secret:<name>/<key>"."""
    env = {}
    for e in container.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        env[e["name"]] = f"secret:{ref['name']}/{ref['key']}" if ref else e["value"]
    return env


def _get_routes() -> set[str]:
    spec = create_app(ServiceSettings(model_repository=Path("/nonexistent"))).openapi()
    return {path for path, item in spec["paths"].items() if "get" in item}


@pytest.mark.parametrize("path", ["kserve/inferenceservice.yaml", "kubernetes/deployment.yaml"])
def test_manifests_set_only_settings_that_exist_and_probe_paths_the_service_serves(path: str) -> None:
    container = _container(_docs(path)[0])
    env = _env(container)
    assert set(env) - {"STORAGE_URI"} <= SETTINGS_ENV
    routes = _get_routes()
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in routes


def test_kserve_predictor_takes_its_port_from_port_and_its_models_from_mnt_models() -> None:
    (isvc,) = _docs("kserve/inferenceservice.yaml")
    container = _container(isvc)
    env = _env(container)
    assert "VAE_PORT" not in env  # Knative's PORT decides, which vae-serve reads when VAE_PORT is unset
    assert env["VAE_MODEL_REPOSITORY"] == "/mnt/models" and "STORAGE_URI" in env
    port = container["ports"][0]["containerPort"]
    assert {container[p]["httpGet"]["port"] for p in ("readinessProbe", "livenessProbe")} == {port}
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"  # the protocol's own paths


def test_grpc_is_declared_as_h2c_on_the_port_vae_serve_serves_it() -> None:
    (isvc,) = _docs("kserve/inferenceservice-grpc.yaml")
    container = _container(isvc)
    env = _env(container)
    assert set(env) - {"STORAGE_URI"} <= SETTINGS_ENV
    (port,) = container["ports"]  # Knative routes one port
    assert port["name"] == "h2c" and port["containerPort"] == int(env["VAE_GRPC_PORT"]) != int(env["VAE_PORT"])
    # ready by gRPC's health service (tests/service/test_grpc_health.py), alive while the port is open
    assert container["readinessProbe"] == {"grpc": {"port": port["containerPort"]}}
    assert container["livenessProbe"]["tcpSocket"]["port"] == port["containerPort"]
    (deployment,), (service,) = (_docs(f"kubernetes/{n}.yaml") for n in ("deployment", "service"))
    named = {p["name"]: p["containerPort"] for p in _container(deployment)["ports"]}
    assert named["grpc"] == int(_env(_container(deployment))["VAE_GRPC_PORT"])
    (grpc_port,) = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert grpc_port["targetPort"] == "grpc" and grpc_port["appProtocol"] == "kubernetes.io/h2c"


def test_the_deployment_service_and_autoscaler_agree() -> None:
    (deployment,), (service,), (hpa,) = (_docs(f"kubernetes/{n}.yaml") for n in ("deployment", "service", "hpa"))
    container, pod = _container(deployment), deployment["spec"]["template"]["spec"]
    env = _env(container)
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (
        named["http"]
        == int(env["VAE_PORT"])
        == int(deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"])
    )
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["VAE_MODEL_REPOSITORY"] in mounts
    drain = float(env["VAE_GRACEFUL_SHUTDOWN_S"]) + 5  # the preStop pause
    assert pod["terminationGracePeriodSeconds"] > drain


def _start(repo: Path, env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    """vae-serve with nothing of this environment's VAE_* or PORT; its log (uvicorn's included) at info to `log`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VAE_") and k != "PORT"}
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "--repository", str(repo), "--log-level", "info"],
        env={**clean, "VAE_LOG_REQUESTS": "false", "VAE_GRPC_PORT": "0", **env},
        stderr=log,
    )


def _started(base: str) -> set[tuple[str, int]]:
    """The requests of IN_FLIGHT the service has run a chunk of: scorer runs of their chunk's row count, which the
    vae_batch_rows histogram counts in its bucket (rows / 2, rows] (summed over the workers)."""
    cumulative: dict[tuple[str, float], float] = {}
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith("vae_batch_rows_bucket{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            if labels["graph"] == "scorer":
                cumulative[labels["model"], float(labels["le"])] = float(line.rsplit(" ", 1)[1])
    started = set()
    for model, k in IN_FLIGHT:
        rows = CHUNK_DRAWS // k
        if cumulative.get((model, rows), 0.0) > cumulative.get((model, rows / 2), 0.0):
            started.add((model, k))
    return started


def _wait_ready(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet: poll again until the deadline
        assert proc.poll() is None and time.monotonic() < deadline, "vae-serve did not become ready"
        time.sleep(0.2)


def test_vae_serve_listens_on_port_and_drains_requests_in_flight_on_sigterm(
    tmp_path: Path, serving_repository: Path
) -> None:
    repo = tmp_path / "mnt-models"  # what KServe's storage initializer fills
    shutil.copytree(serving_repository, repo)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "vae-serve.log"
    rng = np.random.default_rng(0)
    bodies: dict[tuple[str, int], str] = {}  # encoded before any is sent: the six go out together
    for model, k in IN_FLIGHT:
        rows = rng.uniform(0, 1, (CHUNKS * CHUNK_DRAWS // k, 64)).round(3)
        bodies[model, k] = json.dumps({"inputs": rows.tolist(), "importance_samples": k})
    answers: dict[tuple[str, int], int] = {}

    def send(model: str, k: int) -> None:
        r = httpx.post(
            f"{base}/v1/models/{model}/score",
            content=bodies[model, k],
            headers={"content-type": "application/json"},
            timeout=120,
        )
        answers[model, k] = r.status_code

    with log_path.open("wb") as log:
        # the six take a few seconds alone; a loaded machine may stretch them past the default 10 s deadline
        proc = _start(repo, {"PORT": str(port), "VAE_REQUEST_TIMEOUT_S": "60"}, log)
        try:
            _wait_ready(base, proc)
            threads = [threading.Thread(target=send, args=key) for key in IN_FLIGHT]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 60
            while (started := _started(base)) != set(IN_FLIGHT):
                assert time.monotonic() < deadline, f"only {sorted(started)} of the six requests ever ran"
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)  # every one of the six is being answered
            for t in threads:
                t.join()
            assert answers == dict.fromkeys(IN_FLIGHT, 200)  # every request in flight was answered
            assert proc.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn exits by the signal it drained on
        finally:
            if proc.poll() is None:
                proc.kill()
    # ... though some were still running when SIGTERM came: uvicorn said so, 0.1 s after it
    assert "Waiting for connections to close" in log_path.read_text(errors="replace")

"""deploy/: the KServe and Kubernetes manifests parse and agree with the service (settings, ports, probe paths,
volumes, shutdown), and a real vae-serve does what they rely on: it listens on PORT and drains on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from service.app import create_app
from service.settings import ServiceSettings
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
SETTINGS_ENV = {f"VAE_{name.upper()}" for name in ServiceSettings.model_fields}


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


def _start(repo: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VAE_") and k != "PORT"}
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "--repository", str(repo), "--log-level", "warning"],
        env={**clean, "VAE_LOG_REQUESTS": "false", **env},
    )


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
    proc = _start(repo, {"PORT": str(port)})
    try:
        _wait_ready(base, proc)
        rows = np.random.default_rng(0).uniform(0, 1, (512, 64)).tolist()
        answers: list[int] = []
        answered_at: list[float] = []

        def send() -> None:
            r = httpx.post(
                f"{base}/v1/models/digits-diag/score", json={"inputs": rows, "importance_samples": 512}, timeout=60
            )
            answers.append(r.status_code)
            answered_at.append(time.monotonic())

        threads = [threading.Thread(target=send) for _ in range(6)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # all six are in flight (they run one chunk after another on the scorer)
        proc.send_signal(signal.SIGTERM)
        signalled_at = time.monotonic()
        for t in threads:
            t.join()
        assert answers == [200] * 6  # every request in flight was answered
        assert max(answered_at) > signalled_at + 0.2  # ... though some were still running when SIGTERM came
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn exits by the signal it drained on
    finally:
        if proc.poll() is None:
            proc.kill()

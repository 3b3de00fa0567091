"""Dockerfile and compose files, checked without a Docker engine: they parse and agree with each other and with
the service's settings; every path they copy exists; the serve image installs no torch."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[1]


class _ComposeLoader(yaml.SafeLoader):
    """YAML with compose's `!reset` tag (used by the CPU override)."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: {"__reset__": True})


def _compose(name: str = "docker-compose.yml") -> dict[str, Any]:
    return yaml.load((ROOT / name).read_text(), Loader=_ComposeLoader)


def _stages() -> dict[str, list[str]]:
    """Dockerfile instructions per stage (continuation lines joined)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[str]] = {}
    current = "_global"
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if m:
            current = m.group(1)
        stages.setdefault(current, []).append(line)
    return stages


SETTINGS_ENV = {f"VAE_{name.upper()}" for name in ServiceSettings.model_fields}


def test_dockerfile_has_serve_and_train_targets() -> None:
    assert {"source", "serve", "train"} <= set(_stages())


def test_every_path_the_dockerfile_copies_exists() -> None:
    for stage in _stages().values():
        for line in stage:
            if line.startswith("COPY") and "--from=" not in line:
                for src in line.split()[1:-1]:
                    assert (ROOT / src).exists(), src


def test_the_source_stage_copies_every_package_the_project_installs() -> None:
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {line.split()[1] for line in _stages()["source"] if line.startswith("COPY")}
    assert {pattern.rstrip("*") for pattern in include} <= copied


def test_serve_stage_installs_only_the_serve_extra_and_checks_torch_is_absent() -> None:
    serve = " ".join(_stages()["serve"])
    assert "[serve]" in serve and "[train" not in serve and "torch==" not in serve
    assert "find_spec('torch') is not None" in serve
    assert re.search(r"USER\s+vae", serve) and "EXPOSE 8000" in serve
    assert "HEALTHCHECK" in serve and "/readyz" in serve


def test_serve_stage_base_matches_the_pinned_onnxruntime_cuda_requirement() -> None:
    text = (ROOT / "Dockerfile").read_text()
    cuda = re.search(r"ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.\d+\.\d+-cudnn-runtime", text)
    ort = re.search(r"ARG ORT_VERSION=1\.(\d+)\.\d+", text)
    assert cuda and ort and cuda.group(1) == "13" and int(ort.group(1)) >= 31  # ORT >= 1.31 wheels: CUDA 13


def test_dockerfile_environment_names_are_service_settings() -> None:
    serve = " ".join(_stages()["serve"])
    env_names = set(re.findall(r"\b(VAE_[A-Z_]+)=", serve))
    assert env_names and env_names <= SETTINGS_ENV
    assert "VAE_HOST=0.0.0.0" in serve and "VAE_MODEL_REPOSITORY=/models" in serve


def test_train_stage_runs_vae_train_into_the_models_volume() -> None:
    train = " ".join(_stages()["train"])
    assert "[train" in train and 'ENTRYPOINT ["vae-train", "--out", "/models"]' in train


def test_compose_services_targets_volumes_and_gpus_agree_with_the_dockerfile() -> None:
    compose = _compose()
    services = compose["services"]
    assert services["train"]["build"]["target"] == "train" and services["api"]["build"]["target"] == "serve"
    assert services["train"]["profiles"] == ["train"]
    assert "models" in compose["volumes"]
    assert "models:/models" in services["train"]["volumes"] and "models:/models:ro" in services["api"]["volumes"]
    for name in ("train", "api"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_compose_api_publishes_on_loopback_and_uses_only_service_settings() -> None:
    api = _compose()["services"]["api"]
    env = api["environment"]
    assert set(env) <= SETTINGS_ENV
    assert env["VAE_MODEL_REPOSITORY"] == "/models" and env["VAE_HOST"] == "0.0.0.0"
    http, grpc = api["ports"]
    default = re.fullmatch(r"\$\{VAE_PUBLISH:-(.+)\}:(\d+)", http)
    assert default and default.group(1) == "127.0.0.1:8000" and default.group(2) == env["VAE_PORT"]
    default = re.fullmatch(r"\$\{VAE_PUBLISH_GRPC:-(.+)\}:(\d+)", grpc)
    assert default and default.group(1) == "127.0.0.1:8081" and default.group(2) == env["VAE_GRPC_PORT"]
    assert str(ServiceSettings.model_fields["grpc_port"].default) == env["VAE_GRPC_PORT"]
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert str(ServiceSettings.model_fields["port"].default) == env["VAE_PORT"]


def test_cpu_override_drops_gpu_reservations() -> None:
    override = _compose("docker-compose.cpu.yml")["services"]
    assert override["train"]["deploy"] == {"__reset__": True} and override["api"]["deploy"] == {"__reset__": True}
    assert override["api"]["environment"]["VAE_DEVICE"] == "cpu"
    assert "cpu" in override["train"]["command"]


@pytest.mark.parametrize("ignored", [".venv", "models", ".git"])
def test_dockerignore_keeps_environments_and_models_out_of_the_context(ignored: str) -> None:
    assert ignored in (ROOT / ".dockerignore").read_text().splitlines()

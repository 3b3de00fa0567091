"""Shared fixtures: small bundles trained on the built-in digits once per test session."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from training.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from training.pipeline import RunResult, run

FAST_MODEL = {"latent_dim": 4, "hidden": (64, 64), "covariance": "diagonal"}
# a short encoder refinement: every bundle the tests build has been through it, at a fraction of the default's time
FAST_TRAIN = TrainConfig(
    epochs=25, warmup_epochs=5, patience=10, eval_samples=64, score_samples=8, seed=0, refine_steps=30
)


def train_small(
    repository: Path, name: str, covariance: str = "diagonal", decorrelate: str = "off", **train_overrides: object
) -> RunResult:
    """A small model of the digits; decorrelated or not as asked (once, not both as --decorrelate auto trains)."""
    train = TrainConfig(**{**FAST_TRAIN.to_dict(), **train_overrides})
    return run(
        RunConfig(
            data=DataConfig(source="builtin:digits", seed=train.seed, decorrelate=decorrelate),  # type: ignore[arg-type]
            model=ModelConfig(**{**FAST_MODEL, "covariance": covariance}),
            train=train,
            name=name,
            repository=repository,
        )
    )


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def diagonal_run(model_repository: Path) -> RunResult:
    return train_small(model_repository, "digits-diag", "diagonal")


@pytest.fixture(scope="session")
def full_run(model_repository: Path) -> RunResult:
    # decorrelated: every face of the service then serves a bundle whose decoder draws x itself
    return train_small(model_repository, "digits-full", "full", decorrelate="on")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (servers under test bind only to loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def serving_repository(tmp_path_factory: pytest.TempPathFactory, diagonal_run: RunResult, full_run: RunResult) -> Path:
    repo = tmp_path_factory.mktemp("serving")
    shutil.copytree(diagonal_run.bundle_dir, repo / "digits-diag" / "1")
    shutil.copytree(full_run.bundle_dir, repo / "digits-full" / "1")
    _rewrite_version(repo / "digits-diag" / "1", "digits-diag", 1)
    _rewrite_version(repo / "digits-full" / "1", "digits-full", 1)
    return repo


def _rewrite_version(bundle: Path, name: str, version: int) -> None:
    from contract import Manifest

    path = bundle / "manifest.json"
    manifest = Manifest.model_validate_json(path.read_text())
    path.write_text(manifest.model_copy(update={"name": name, "version": version}).model_dump_json(indent=2))


@pytest.fixture(scope="session")
def s3() -> Iterator[dict[str, str]]:
    """moto's S3-compatible server on 127.0.0.1, reached through the standard AWS variables."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()

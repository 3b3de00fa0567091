"""ServiceSettings from VAE_* variables: parsed and validated at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import ServiceSettings


def test_settings_read_vae_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAE_MODEL_REPOSITORY", "/srv/models")
    monkeypatch.setenv("VAE_API_KEYS", "alpha, beta,,")
    monkeypatch.setenv("VAE_BATCH_MAX_ROWS", "256")
    monkeypatch.setenv("VAE_DEVICE", "cpu")
    s = ServiceSettings()
    assert s.model_repository == Path("/srv/models") and s.api_keys == ["alpha", "beta"]
    assert s.batch_max_rows == 256 and s.device == "cpu"


@pytest.mark.parametrize(
    ("var", "value"), [("VAE_DEVICE", "tpu"), ("VAE_BATCH_MAX_ROWS", "0"), ("VAE_REQUEST_TIMEOUT_S", "-1")]
)
def test_bad_settings_fail_at_start_up(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError):
        ServiceSettings()


def test_a_grpc_answer_limit_below_the_largest_answer_allowed_fails_at_start_up() -> None:
    with pytest.raises(
        ValidationError, match="takes up to 135266304 bytes: raise it to at least that, or lower VAE_MAX_ANSWER_VALUES"
    ):
        ServiceSettings(max_answer_values=4 << 20)  # 2^24 raw values of up to 8 bytes do not fit in 64 MiB
    assert ServiceSettings(max_answer_values=4 << 20, grpc_max_message_bytes=135266304).grpc_port == 8081
    assert ServiceSettings(max_answer_values=4 << 20, grpc_port=0).grpc_port == 0  # no gRPC face, nothing to fit


def test_grpc_on_the_http_port_is_refused_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    # Knative sets PORT to the container port: PORT=8081 without VAE_PORT meets the default VAE_GRPC_PORT
    for var in ("VAE_PORT", "VAE_GRPC_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PORT", "8081")
    with pytest.raises(ValidationError, match="VAE_GRPC_PORT and the HTTP port"):
        ServiceSettings()
    assert ServiceSettings(grpc_port=0).port == 8081
    monkeypatch.setenv("VAE_PORT", "8080")
    assert (ServiceSettings().port, ServiceSettings().grpc_port) == (8080, 8081)


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for name in ServiceSettings.model_fields:
        assert f"VAE_{name.upper()}" in readme, name

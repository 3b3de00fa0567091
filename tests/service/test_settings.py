"""ServiceSettings from VAE_* variables: parsed and validated at start-up."""

from __future__ import annotations

import re
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


def test_kubernetes_service_links_in_port_variables_are_read_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # Services named vae and vae-grpc in the pod's namespace: Kubernetes injects these beside the container's env
    monkeypatch.setenv("VAE_PORT", "tcp://10.96.0.12:8000")
    monkeypatch.setenv("VAE_GRPC_PORT", "tcp://10.96.0.13:8081")
    monkeypatch.setenv("VAE_SERVICE_HOST", "10.96.0.12")
    monkeypatch.setenv("VAE_BATCH_MAX_ROWS", "256")  # the other variables are read as ever
    s = ServiceSettings()
    assert (s.port, s.grpc_port, s.batch_max_rows) == (8000, 8081, 256)
    monkeypatch.setenv("PORT", "9000")  # KServe's PORT is read as when VAE_PORT is unset
    assert ServiceSettings().port == 9000
    monkeypatch.setenv("VAE_GRPC_PORT", "0")  # a value someone chose is read
    monkeypatch.setenv("VAE_PORT", "8500")
    assert (ServiceSettings().port, ServiceSettings().grpc_port) == (8500, 0)


@pytest.mark.parametrize(
    ("var", "value"), [("VAE_DEVICE", "tpu"), ("VAE_BATCH_MAX_ROWS", "0"), ("VAE_REQUEST_TIMEOUT_S", "-1")]
)
def test_bad_settings_fail_at_start_up(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError):
        ServiceSettings()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"graceful_shutdown_s": float("inf")}, "finite number"),
        ({"request_timeout_s": float("inf")}, "finite number"),
        ({"max_body_bytes": 3_000_000_000}, "less than or equal to 2147483647"),
        ({"grpc_max_concurrent_rpcs": 2**31}, "less than or equal to 2147483647"),
        ({"host": " "}, "VAE_HOST is empty: give an address"),
        ({"model_repository": ""}, "VAE_MODEL_REPOSITORY is empty: give the folder"),
        ({"api_keys": " , "}, "holds separators only"),
        ({"metrics_require_key": True}, "VAE_METRICS_REQUIRE_KEY is on but no key is set"),
        ({"max_body_bytes": 20000, "max_body_bytes_in_flight": 2048}, "a body of the largest size allowed could nev"),
        ({"queue_max_rows": 10}, "VAE_QUEUE_MAX_ROWS (10) is below VAE_MAX_ROWS (8192)"),
        ({"batch_max_delay_ms": 1e9}, "would time out waiting for mates"),
        ({"monitor_min_rows": 30000}, "the drift window would be filling for ever"),
        ({"monitor_window_s": 1e-300}, "greater than or equal to 1"),
        ({"poll_interval_s": 1e-6}, "VAE_POLL_INTERVAL_S must be 0 (off) or at least 0.01 s"),
        ({"allowed_hosts": "api.example.com:8000"}, "without a scheme, a port, a path or a wildcard"),
        ({"allowed_hosts": "https://api.example.com"}, "without a scheme, a port, a path or a wildcard"),
        ({"allowed_hosts": "[fd00::1]:8000"}, "without a scheme, a port, a path or a wildcard"),
        ({"allowed_hosts": "fd00::1"}, "an IPv6 address in brackets"),
        ({"allowed_hosts": "*.example.com"}, "or a wildcard"),
        ({"cors_origins": "https://app.example.com/page?x=1"}, "give an origin as a browser sends it"),
        ({"cors_origins": "*"}, "* is not taken"),
        ({"cors_origins": "app.example.com"}, "give an origin as a browser sends it"),
    ],
)
def test_values_that_could_never_work_are_refused_at_start_up(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        ServiceSettings(**settings)  # type: ignore[arg-type]


def test_lenient_spellings_that_mean_one_thing_are_taken() -> None:
    s = ServiceSettings(
        default_model="",  # compose's ${VAE_DEFAULT_MODEL:-} when unset: no default named, not the model ''
        cors_origins="https://App.Example.com/,capacitor://localhost",  # type: ignore[arg-type]
        allowed_hosts="api.example.com,[::1],10.0.0.7",  # type: ignore[arg-type]
        api_keys="",  # type: ignore[arg-type]
    )
    assert s.default_model is None and s.api_keys == []
    assert s.cors_origins == ["https://app.example.com", "capacitor://localhost"]
    assert s.allowed_hosts == ["api.example.com", "[::1]", "10.0.0.7"]


def test_a_grpc_answer_limit_below_the_largest_answer_allowed_fails_at_start_up() -> None:
    with pytest.raises(
        ValidationError, match="takes up to 135266304 bytes: raise it to at least that, or lower VAE_MAX_ANSWER_VALUES"
    ):
        ServiceSettings(max_answer_values=4 << 20)  # 2^24 raw values of up to 8 bytes do not fit in 64 MiB
    assert ServiceSettings(max_answer_values=4 << 20, grpc_max_message_bytes=135266304).grpc_port == 8081
    assert ServiceSettings(max_answer_values=4 << 20, grpc_port=0).grpc_port == 0  # no gRPC face, nothing to fit
    with pytest.raises(ValidationError, match=r"gRPC takes at most 2\^31-1: lower VAE_MAX_ANSWER_VALUES"):
        ServiceSettings(max_answer_values=64 << 20)  # its answers could not fit in any gRPC message


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

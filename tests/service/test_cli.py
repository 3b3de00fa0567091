"""vae-serve: every setting is a flag that overrides its VAE_* variable, validated before uvicorn starts."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from service import cli
from service.settings import GPU_AUTO_WORKERS, MAX_AUTO_WORKERS, MULTIPROC_DIR, PEERS_DIR, ServiceSettings
from tests.conftest import free_port


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    """cli.run_workers replaced by a recorder of uvicorn's config and of the settings a worker would read; no VAE_*
    variable and no .env around, and every variable main() sets is undone after the test."""
    for name in ServiceSettings.model_fields:
        monkeypatch.setenv(cli.env_name(name), "")  # recorded, so the delete below is undone at teardown
        monkeypatch.delenv(cli.env_name(name))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    calls: list[dict[str, Any]] = []
    shared = (MULTIPROC_DIR, PEERS_DIR)

    def run(config: uvicorn.Config, peers: Any) -> int:
        folders = {k: Path(os.environ[k]) for k in shared if k in os.environ}
        kw = {k: getattr(config, k) for k in ("app", "factory", "host", "port", "workers", "log_level")}
        calls.append(
            {**kw, "worker": ServiceSettings(), "folders": folders, "made": all(map(Path.is_dir, folders.values()))}
        )
        return 0

    monkeypatch.setattr(cli, "run_workers", run)
    monkeypatch.setattr(uvicorn.Config, "configure_logging", lambda self: None)  # leaves caplog's handler in place
    monkeypatch.setattr(cli, "port_problem", lambda settings: None)  # nothing is bound: the ports need not be free
    return calls


def test_every_setting_has_a_flag_that_round_trips_its_value(started: list[dict[str, Any]]) -> None:
    defaults = ServiceSettings()
    parser = cli.build_parser(defaults)
    options = {s for action in parser._actions for s in action.option_strings}
    argv = []
    for name in ServiceSettings.model_fields:
        flag = "--" + name.replace("_", "-")
        assert flag in options, f"no flag for {name}"
        value = getattr(defaults, name)
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif value not in (None, []):
            argv += [flag, cli.shown(value)]
    assert cli.main(argv) == 0
    assert started[0]["worker"] == defaults.model_copy(update={"workers": cli.worker_count(defaults)})


def test_flags_override_vae_variables_and_reach_every_worker(
    started: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAE_BATCH_MAX_ROWS", "256")
    monkeypatch.setenv("VAE_LOG_REQUESTS", "true")
    monkeypatch.setenv("VAE_QUEUE_MAX_ROWS", "9999")
    argv = ["--batch-max-rows", "512", "--no-log-requests", "--api-keys", "a, b", "--device", "cpu", "--port", "9001"]
    assert cli.main(argv) == 0
    worker = started[0]["worker"]
    assert (worker.batch_max_rows, worker.log_requests, worker.api_keys) == (512, False, ["a", "b"])
    assert worker.device == "cpu" and worker.queue_max_rows == 9999  # no flag: the variable still holds
    assert os.environ["VAE_BATCH_MAX_ROWS"] == "512" and started[0]["port"] == 9001


def test_the_documented_flags_still_work(started: list[dict[str, Any]], tmp_path: Path) -> None:
    argv = ["--host", "0.0.0.0", "--port", "8123", "--workers", "2", "--repository", str(tmp_path), "--log-level"]
    assert cli.main([*argv, "warning"]) == 0
    call = started[0]
    assert (call["host"], call["port"], call["workers"], call["log_level"]) == ("0.0.0.0", 8123, 2, "warning")
    assert call["worker"].model_repository == tmp_path and call["factory"] is True
    assert cli.main(["--model-repository", str(tmp_path / "models")]) == 0
    assert started[1]["worker"].model_repository == tmp_path / "models"


@pytest.mark.parametrize(
    ("argv", "field"),
    [(["--batch-max-rows", "0"], "batch_max_rows"), (["--device", "tpu"], "device"), (["--port", "x"], "port")],
)
def test_an_invalid_flag_exits_2_with_the_settings_message_before_uvicorn_starts(
    started: list[dict[str, Any]], capsys: pytest.CaptureFixture[str], argv: list[str], field: str
) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert started == [] and "invalid settings" in err and field in err.lower()  # port: "VAE_PORT"
    assert cli.env_name(field) not in os.environ  # nothing half-set is left behind


def test_the_log_level_is_a_setting_with_its_variable(
    started: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAE_LOG_LEVEL", "WARNING")  # as logging spells it
    assert cli.main([]) == 0 and started[0]["log_level"] == started[0]["worker"].log_level == "warning"
    assert cli.main(["--log-level", "debug"]) == 0 and started[1]["log_level"] == "debug"


def test_a_flag_can_fix_a_bad_variable(started: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAE_PORT", "eighty")
    assert cli.main(["--port", "8080"]) == 0 and started[0]["port"] == 8080


def test_a_missing_repository_is_warned_about_and_the_service_still_starts(
    started: list[dict[str, Any]], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with caplog.at_level(logging.WARNING, logger="service.cli"):
        assert cli.main(["--repository", "nowhere"]) == 0
        assert cli.main(["--repository", "nowhere", "--poll-interval-s", "5"]) == 0
    first, second = (r.getMessage() for r in caplog.records)
    assert first.startswith(f"nowhere{os.sep} does not exist: the service will start with no model") and "poll" in first
    assert second.endswith("(scanned every 5 s)") and len(started) == 2
    caplog.clear()
    monkeypatch.delenv("VAE_MODEL_REPOSITORY")  # main() exported the flag, as it does for uvicorn's workers
    assert cli.main([]) == 0  # ./models exists, empty
    assert [r.getMessage() for r in caplog.records] == [
        f"models{os.sep} is empty: the service starts with no model (load one with POST /v2/repository/...)"
    ]


def test_a_repository_that_can_never_serve_is_refused_and_one_a_level_too_deep_gets_a_hint(
    started: list[dict[str, Any]], tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("not a folder")
    assert cli.main(["--repository", "file"]) == 2 and started == []
    assert "VAE_MODEL_REPOSITORY file is a file, not a folder of <name>/<version>/ bundles" in capsys.readouterr().err
    bundle = tmp_path / "models" / "m" / "1"
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="service.cli"):
        assert cli.main(["--repository", str(bundle)]) == 0
        assert cli.main(["--repository", str(bundle.parent)]) == 0
    first, second = (r.getMessage() for r in caplog.records)
    assert "is one bundle (it holds manifest.json), not a repository: serve the folder that holds" in first
    assert "holds version folders only, like one model's folder" in second


def test_a_vae_variable_that_is_no_setting_is_warned_about_with_the_one_meant() -> None:
    environ = {
        "VAE_API_KEY": "s3cret",  # VAE_API_KEYS meant: without the warning the service would run keyless
        "VAE_API_KEYS": "k",
        "VAE_SERVE_PEERS_DIR": "/tmp/x",  # vae-serve's own, for its workers
        "VAE_SERVE_SERVICE_HOST": "10.0.0.1",  # a Kubernetes Service named vae-serve injects these
        "VAE_SERVE_PORT_8000_TCP_ADDR": "10.0.0.1",
        "VAE_SERVE_PORT": "tcp://10.0.0.1:8000",
        "VAE_GPRC_PORT": "0",  # VAE_GRPC_PORT meant: gRPC would stay on, unwarned, were any *_PORT taken as a link
        "VAE_PORT": "tcp://10.0.0.2:8000",  # a Service named vae: read as unset (test_settings), and said so
        "HOME": "/root",
    }
    assert cli.unknown_variables(environ) == [
        "VAE_API_KEY is set but is no setting of vae-serve; did you mean VAE_API_KEYS?",
        "VAE_GPRC_PORT is set but is no setting of vae-serve; did you mean VAE_GRPC_PORT?",
        "VAE_PORT=tcp://10.0.0.2:8000 is a Kubernetes service link (a Service named vae), not a port: ignored; set "
        "VAE_PORT in the container's env to choose the port",
    ]


def test_a_settings_error_names_the_variable_and_flag_and_never_the_value(
    started: list[dict[str, Any]], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAE_API_KEYS", "reader-s3cret")
    assert cli.main(["--metrics-require-key", "--queue-max-rows", "10"]) == 2
    err = capsys.readouterr().err
    assert "s3cret" not in err and "  VAE_QUEUE_MAX_ROWS" not in err  # a rule across settings names them itself
    assert "VAE_QUEUE_MAX_ROWS (10) is below VAE_MAX_ROWS (8192)" in err
    assert cli.main(["--max-body-bytes", "3000000000"]) == 2
    assert "VAE_MAX_BODY_BYTES (--max-body-bytes): Input should be less than or equal to 2147483647" in (
        capsys.readouterr().err
    )


def test_help_never_prints_the_keys(
    started: list[dict[str, Any]], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAE_API_KEYS", "reader-s3cret,other")
    monkeypatch.setenv("VAE_ADMIN_KEYS", "admin-s3cret")
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "s3cret" not in text and "($VAE_API_KEYS; default: 2 set)" in text


def test_a_worker_that_fails_to_start_stops_vae_serve_with_exit_3_with_several_workers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # uvicorn's parent returns quietly when a worker fails to start; the worker's note (written by the app's
    # lifespan, service/peers.py) is what vae-serve's exit status follows
    from service.peers import Peers

    def failing_worker(self: object) -> None:
        with pytest.raises(RuntimeError), Peers.from_env().told_if_startup_fails():
            raise RuntimeError("Failed to bind to address 127.0.0.1:8081")

    monkeypatch.setattr(cli._Workers, "__init__", lambda self, config, sockets, peers: None)  # no signal handlers
    monkeypatch.setattr(cli._Workers, "run", failing_worker)
    monkeypatch.setattr(uvicorn.Config, "bind_socket", lambda self: None)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)  # one worker: a server that never started
    monkeypatch.setattr(uvicorn.Config, "configure_logging", lambda self: None)  # leaves caplog's handler in place
    monkeypatch.setattr(cli, "port_problem", lambda settings: None)
    for name in ServiceSettings.model_fields:
        monkeypatch.delenv(cli.env_name(name), raising=False)
    with caplog.at_level(logging.ERROR, logger="service.cli"):
        assert cli.main(["--repository", str(tmp_path), "--workers", "2"]) == 3
        assert cli.main(["--repository", str(tmp_path), "--workers", "1"]) == 3
    assert caplog.records[0].getMessage() == (
        "a worker failed to start (RuntimeError: Failed to bind to address 127.0.0.1:8081): vae-serve stopped"
    )


def test_the_warning_is_a_line_on_stderr(tmp_path: Path) -> None:
    code = "import service.cli as c; c.run_workers = lambda *a: 0; raise SystemExit(c.main())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")}
    out = subprocess.run(
        [sys.executable, "-c", code, "--repository", "gone"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0 and f"WARNING service.cli: gone{os.sep} does not exist" in out.stderr


def test_help_lists_every_setting_with_its_default(
    started: list[dict[str, Any]], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAE_BATCH_MAX_DRAWS", "4096")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert exit_.value.code == 0 and started == []
    assert "--batch-max-draws N" in text and "($VAE_BATCH_MAX_DRAWS; default: 4096)" in text
    assert "--log-requests, --no-log-requests" in text and "--repository PATH, --model-repository PATH" in text
    for name in ServiceSettings.model_fields:
        assert f"${cli.env_name(name)}; default: " in text, name


def test_workers_default_to_one_per_usable_cpu_at_most_8_and_at_most_4_on_an_nvidia_gpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert (MAX_AUTO_WORKERS, GPU_AUTO_WORKERS) == (8, 4)
    for gpu in (False, True):
        monkeypatch.setattr(cli, "nvidia_gpu_visible", lambda gpu=gpu: gpu)
        for usable, cpu, cuda in [(1, 1, 1), (2, 2, 2), (6, 6, 4), (64, 8, 4)]:
            monkeypatch.setattr(cli.cpus, "usable_cpus", lambda usable=usable: usable)
            assert cli.worker_count(ServiceSettings.model_construct(workers=0, device="auto")) == (cuda if gpu else cpu)
            assert cli.worker_count(ServiceSettings.model_construct(workers=0, device="cuda")) == cuda
            assert cli.worker_count(ServiceSettings.model_construct(workers=0, device="cpu")) == cpu
            assert cli.worker_count(ServiceSettings.model_construct(workers=3, device="cuda")) == 3


def test_an_nvidia_gpu_is_seen_by_its_device_node_not_by_the_control_nodes(tmp_path: Path) -> None:
    (tmp_path / "nvidiactl").touch()
    (tmp_path / "nvidia-uvm").touch()
    assert not cli.nvidia_gpu_visible(tmp_path)
    (tmp_path / "nvidia0").touch()
    assert cli.nvidia_gpu_visible(tmp_path)


def test_several_workers_get_shared_folders_that_are_removed_at_exit(started: list[dict[str, Any]]) -> None:
    assert cli.main(["--workers", "2"]) == 0 and cli.main(["--workers", "1"]) == 0
    several, one = started
    assert several["workers"] == several["worker"].workers == 2 and several["made"]
    assert set(several["folders"]) == {MULTIPROC_DIR, PEERS_DIR} and one["folders"] == {}
    assert not any(folder.exists() for folder in several["folders"].values())
    assert MULTIPROC_DIR not in os.environ and PEERS_DIR not in os.environ


def test_workers_log_the_services_lines_in_the_same_format(capsys: pytest.CaptureFixture[str]) -> None:
    import logging.config

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logging.config.dictConfig(cli.log_config("warning"))  # what uvicorn does in each worker
        logging.getLogger("service.repository").warning("refused bundle x")
        logging.getLogger("service.access").info("below the level")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    err = capsys.readouterr().err
    assert err.endswith(" WARNING service.repository: refused bundle x\n") and "below" not in err


def test_a_port_in_use_or_a_host_with_no_address_stops_vae_serve_with_one_line() -> None:
    import socket

    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # a listener another SO_REUSEPORT one could join
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        free = ServiceSettings(port=free_port(), grpc_port=port, workers=2)
        assert cli.port_problem(free) == (
            f"the gRPC port {port} on 127.0.0.1 cannot be bound (Address already in use): free it, or --grpc-port "
            "(VAE_GRPC_PORT; 0: no gRPC)"
        )
        assert "the HTTP port" in (cli.port_problem(ServiceSettings(port=port, grpc_port=0)) or "")
    assert cli.port_problem(ServiceSettings(port=free_port(), grpc_port=free_port())) is None
    assert "names no address here" in (cli.port_problem(ServiceSettings(host="no.such.host.invalid")) or "")


def _vae_serve(tmp_path: Path, workers: int) -> tuple[subprocess.Popen[bytes], str, Path]:
    """A real vae-serve on 127.0.0.1 started in tmp_path (an empty repository, settings from tmp_path/.env only), once
    /healthz answers; (process, base URL, its log)."""
    (tmp_path / "repo").mkdir(exist_ok=True)
    port, log = free_port(), tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")}
    argv = ["--repository", "repo", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", *argv], cwd=tmp_path, env=env, stderr=out)
    base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
    # every worker started (one answering is not enough: a worker still starting reads .env when a test changes it)
    while not _answers(f"{base}/healthz") or log.read_text().count("Application startup complete") < workers:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    return proc, base, log


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_by_signal_exits_0_with_one_worker_or_several(tmp_path: Path, workers: int, sig: signal.Signals) -> None:
    # one worker exited 143 on SIGTERM (uvicorn raises the signal again after its drain), several 0
    (tmp_path / ".env").write_text("VAE_GRPC_PORT=0\n")
    proc, _, log = _vae_serve(tmp_path, workers)
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 0, log.read_text()


def test_a_failed_sighup_restart_keeps_the_workers_serving_and_a_later_stop_exits_0(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("VAE_GRPC_PORT=0\n")
    proc, base, log = _vae_serve(tmp_path, 2)
    with socket.socket() as taken:  # a port the replacement workers' gRPC face cannot share: their start-up fails
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env_file.write_text(f"VAE_GRPC_PORT={taken.getsockname()[1]}\n")  # what the replacements read
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while "aborting the restart" not in log.read_text():  # uvicorn's words: the old workers are kept
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    assert _answers(f"{base}/healthz")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log.read_text()  # 3 before: the replacement's note outlived the restart

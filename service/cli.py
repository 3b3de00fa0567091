"""`vae-serve`: run the service under uvicorn. Every ServiceSettings field is a flag (generated from the fields, so a
new setting gets its flag for free); a flag overrides its VAE_* variable, which overrides .env."""

from __future__ import annotations

import argparse
import copy
import difflib
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import typing
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from uvicorn.supervisors.multiprocess import Multiprocess

from runtime import cpus
from service.head_limit import BoundedHttpTools
from service.peers import Peers
from service.settings import (
    GPU_AUTO_WORKERS,
    MAX_AUTO_WORKERS,
    MULTIPROC_DIR,
    PEERS_DIR,
    ServiceSettings,
    service_link,
)

log = logging.getLogger("service.cli")  # not __main__ under python -m
ALIASES = {"model_repository": ["--repository", "--model-repository"]}  # --repository: the documented name
SECRET_SETTINGS = ("api_keys", "admin_keys")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def flags(name: str) -> list[str]:
    """The option strings of a setting: --kebab-case of its name (plus documented aliases, first)."""
    return ALIASES.get(name, ["--" + name.replace("_", "-")])


def env_name(name: str) -> str:
    return f"VAE_{name.upper()}"


def shown(value: object) -> str:
    """A setting's value as its flag (and VAE_* variable) takes it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "" if value is None else str(value)


def build_parser(defaults: ServiceSettings) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vae-serve",
        description="Serve encode/decode/sample/score for every model bundle in a repository. Each setting below is "
        "also a VAE_* environment variable (or a line of .env); a flag wins over its variable. Defaults shown are "
        "what the environment sets now.",
    )
    for name, field in ServiceSettings.model_fields.items():
        add_setting(p, name, field, getattr(defaults, name))
    return p


def add_setting(p: argparse.ArgumentParser, name: str, field: FieldInfo, current: object) -> None:
    """One flag per setting, parsed as text and validated by ServiceSettings itself (bools: --x / --no-x)."""
    default = shown(current) or "none"
    if name in SECRET_SETTINGS and isinstance(current, list) and current:
        default = f"{len(current)} set"  # --help is read in logs and over shoulders: never the keys themselves
    text = f"{field.description or name} (${env_name(name)}; default: {default})".replace("%", "%%")
    if field.annotation is bool:
        p.add_argument(*flags(name), dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        return
    choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal else ()
    metavar = "{" + ",".join(map(str, choices)) + "}" if choices else metavar_of(field.annotation)
    p.add_argument(*flags(name), dest=name, default=None, metavar=metavar, help=text)


def metavar_of(annotation: object) -> str:
    if typing.get_origin(annotation) is list:
        return "A,B,..."
    names: dict[object, str] = {int: "N", float: "NUMBER", Path: "PATH"}
    return names.get(annotation, "TEXT")


@contextmanager
def exported(values: dict[str, Any]) -> Iterator[None]:
    """Set the given settings as VAE_* variables (read by create_app_from_env in every worker); undone on error."""
    before = {env_name(k): os.environ.get(env_name(k)) for k in values}
    os.environ.update({env_name(k): shown(v) for k, v in values.items()})
    try:
        yield
    except BaseException:
        for key, old in before.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        raise


def repository_problem(settings: ServiceSettings) -> str | None:
    """Why the repository can never be served (a file, a folder this process may not read); None if it can."""
    root = settings.model_repository
    if root.exists() and not root.is_dir():
        return f"VAE_MODEL_REPOSITORY {root} is a file, not a folder of <name>/<version>/ bundles"
    if root.is_dir() and not os.access(root, os.R_OK | os.X_OK):
        return f"VAE_MODEL_REPOSITORY {root}: this process may not read that folder"
    return None


def repository_warning(settings: ServiceSettings) -> str | None:
    root = settings.model_repository
    if root.is_dir():
        return _layout_hint(root)
    what = "does not exist"
    if settings.poll_interval_s:
        when = f"(scanned every {settings.poll_interval_s:g} s)"
    else:
        when = "when asked (POST /v2/repository/models/<name>/load), or poll with --poll-interval-s"
    return f"{root}{os.sep} {what}: the service will start with no model and load what appears there {when}"


def _layout_hint(root: Path) -> str | None:
    # a bundle or a model folder given as the repository (KServe's storageUri one level too deep) serves nothing
    if (root / "manifest.json").is_file():
        return (
            f"{root} is one bundle (it holds manifest.json), not a repository: serve the folder that holds "
            "<name>/<version>/ folders (with KServe, the storageUri of that folder)"
        )
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if entries and all(p.is_dir() and p.name.isdigit() and (p / "manifest.json").is_file() for p in entries):
        return (
            f"{root} holds version folders only, like one model's folder: point VAE_MODEL_REPOSITORY at {root.parent}"
        )
    if not entries:
        return f"{root}{os.sep} is empty: the service starts with no model (load one with POST /v2/repository/...)"
    return None


def port_problem(settings: ServiceSettings) -> str | None:
    """Why a port vae-serve needs cannot be bound (in use, or a host that names no address), found in the parent
    before any worker starts: one line and exit status 2 rather than a traceback per worker, and no gRPC port taken
    beside another listener (the workers share theirs with SO_REUSEPORT, which another such listener would join)."""
    faces = [("HTTP", settings.port), ("gRPC", settings.grpc_port)] if settings.grpc_port else [("HTTP", settings.port)]
    for face, port in faces:
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                settings.host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
        except (socket.gaierror, UnicodeError) as exc:
            return f"VAE_HOST {settings.host!r} names no address here ({exc}); give an address such as 127.0.0.1"
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is free
            if family == socket.AF_INET6 and face == "HTTP":  # as asyncio binds "::": IPv6 only
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                flag = "--port (VAE_PORT)" if face == "HTTP" else "--grpc-port (VAE_GRPC_PORT; 0: no gRPC)"
                return f"the {face} port {port} on {settings.host} cannot be bound ({exc.strerror}): free it, or {flag}"
    return None


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """Warnings for VAE_* variables that name no setting (a misspelt VAE_API_KEY would otherwise leave the service
    keyless without a word), with the setting meant where one is close, and for settings' variables that Kubernetes
    set as service links, which are read as unset (a Service named vae sets VAE_PORT=tcp://10.0.0.1:8000)."""
    known = {env_name(name) for name in ServiceSettings.model_fields}
    out = []
    for var in sorted(environ):
        if var in known and service_link(var, environ[var]):
            out.append(
                f"{var}={environ[var]} is a Kubernetes service link (a Service named "
                f"{var.removesuffix('_PORT').lower().replace('_', '-')}), not a port: ignored; set {var} in the "
                "container's env to choose the port"
            )
        elif var.startswith("VAE_") and var not in known and var != PEERS_DIR and not service_link(var, environ[var]):
            close = difflib.get_close_matches(var, known, n=1)
            meant = f"; did you mean {close[0]}?" if close else ""
            out.append(f"{var} is set but is no setting of vae-serve{meant}")
    return out


def settings_errors(exc: ValidationError) -> str:
    """One line per error, naming the variable and the flag, and never the value given: pydantic's own text quotes
    it, and the value of a keys variable is a secret."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        where = [str(part) for part in error["loc"]]
        field = where[0] if where else ""
        if field in ServiceSettings.model_fields:
            name = f"{env_name(field)} ({flags(field)[0]})"
        else:  # a rule across settings: its message names them
            name = "settings" if not field or field in ("VAE_PORT", "PORT", "port") else field
            name = "VAE_PORT (--port)" if field in ("VAE_PORT", "PORT", "port") else name
        lines.append(f"  {name}: {error['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        defaults = ServiceSettings()  # VAE_* variables and .env, shown as the flags' defaults
    except ValidationError:
        defaults = ServiceSettings.model_construct()  # a flag may still fix the bad variable: validated below
    args = build_parser(defaults).parse_args(argv)
    given = {k: v for k, v in vars(args).items() if k in ServiceSettings.model_fields and v is not None}
    try:
        with exported(given):
            settings = ServiceSettings()  # what each worker will read: a bad value stops here, before uvicorn
    except ValidationError as exc:
        print(f"vae-serve: invalid settings:\n{settings_errors(exc)}", file=sys.stderr)
        return 2
    if (problem := repository_problem(settings) or port_problem(settings)) is not None:
        print(f"vae-serve: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    for warning in [*unknown_variables(os.environ), repository_warning(settings)]:
        if warning is not None:
            log.warning(warning)
    workers = worker_count(settings)
    os.environ[env_name("workers")] = str(workers)  # each worker sizes its share of the CPUs from it
    return serve(settings.model_copy(update={"workers": workers}))


def worker_count(settings: ServiceSettings) -> int:
    """workers resolved: itself when set; else one per usable CPU, at most 8 (at most 4 on an NVIDIA GPU)."""
    if settings.workers:
        return settings.workers
    gpu = settings.device == "cuda" or (settings.device == "auto" and nvidia_gpu_visible())
    return min(cpus.usable_cpus(), GPU_AUTO_WORKERS if gpu else MAX_AUTO_WORKERS)


def nvidia_gpu_visible(dev: Path = Path("/dev")) -> bool:
    """Whether an NVIDIA GPU's device node is here (a container gets them only when given a GPU). Checked without
    onnxruntime, which lists its CUDA provider wherever onnxruntime-gpu is installed, GPU or not."""
    return any(p.name.removeprefix("nvidia").isdigit() for p in dev.glob("nvidia*"))


@contextmanager
def shared_folders(workers: int) -> Iterator[Peers | None]:
    """With several workers: a fresh folder for their metrics (prometheus_client's multiprocess mode) and for
    their repository state (service/peers.py), named to them by environment variables, removed at exit. Yields the
    workers' Peers (where a worker that fails to start says why), None for one worker."""
    if workers == 1:
        yield None
        return
    root = Path(tempfile.mkdtemp(prefix="vae-serve-"))
    folders = {MULTIPROC_DIR: root / "metrics", PEERS_DIR: root / "peers"}
    for folder in folders.values():
        folder.mkdir()
    os.environ.update({k: str(v) for k, v in folders.items()})
    try:
        yield Peers(folders[PEERS_DIR], me="parent")
    finally:
        for key in folders:
            os.environ.pop(key, None)
        shutil.rmtree(root, ignore_errors=True)


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging plus the service's own lines (the request log among them) on stderr. uvicorn applies it in
    each worker process, where the parent's logging setup does not reach."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["service"] = {"format": LOG_FORMAT}
    config["handlers"]["service"] = {
        "class": "logging.StreamHandler",
        "formatter": "service",
        "stream": "ext://sys.stderr",
    }
    config["root"] = {"handlers": ["service"], "level": level.upper()}
    return config


class _Stopped(Exception):
    """SIGTERM reached vae-serve's one-worker process outside uvicorn's own handler (see run_workers)."""


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Stopped


class _Workers(Multiprocess):
    """uvicorn's supervisor of several workers. On SIGHUP it replaces them one at a time, and when a replacement
    fails to start it keeps the old workers and goes on serving (uvicorn >= 0.51): that failure's note is then
    forgotten, so a later stop that is no start-up failure still exits 0."""

    def __init__(self, config: Any, sockets: list[socket.socket], peers: Peers) -> None:
        super().__init__(config, sockets=sockets)
        self.peers = peers

    def handle_hup(self) -> None:
        super().handle_hup()
        self.peers.forget_startup_failures()


def uvicorn_config(settings: ServiceSettings) -> uvicorn.Config:
    return uvicorn.Config(
        "service.app:create_app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        log_config=log_config(settings.log_level),
        access_log=False,  # the service logs one structured line per request itself
        timeout_graceful_shutdown=math.ceil(settings.graceful_shutdown_s),  # SIGTERM drains requests in flight
        # past it uvicorn answers 503 at once instead of taking on more connections' buffers and tasks
        limit_concurrency=settings.max_connections,
        loop="auto",
        http=BoundedHttpTools,  # httptools with a bound on a request's head (service/head_limit.py)
        h11_max_incomplete_event_size=settings.max_header_bytes,
    )


def serve(settings: ServiceSettings) -> int:
    with shared_folders(settings.workers) as peers:
        return run_workers(uvicorn_config(settings), peers)


def run_workers(config: uvicorn.Config, peers: Peers | None) -> int:
    """uvicorn's server (one worker, peers None) or its supervisor of several, until they stop: 0 when asked to
    (SIGTERM or SIGINT, after the drain), 3 when a worker failed to start. (uvicorn.run would exit 143 on SIGTERM with
    one worker, its server raising the signal again for the handler it found, the default one, and 0 with several.)"""
    if peers is None:
        server = uvicorn.Server(config)
        # the handler uvicorn finds, puts back when it has drained, and raises SIGTERM again for
        previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
        try:
            server.run()
        except (_Stopped, KeyboardInterrupt):  # KeyboardInterrupt: SIGINT, raised again the same way
            log.debug("vae-serve stopped by a signal")
        finally:
            signal.signal(signal.SIGTERM, previous)
        return 0 if server.started else 3  # not started: a start-up failure, which uvicorn has logged
    _Workers(config, [config.bind_socket()], peers).run()
    # uvicorn's supervisor stops without a failing status of its own when a worker exits 3; the worker's note says so
    failed = peers.startup_failure()
    if failed is not None:
        log.error("a worker failed to start (%s): vae-serve stopped", failed)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

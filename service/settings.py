"""ServiceSettings: every knob of the service, from VAE_* environment variables, validated at start-up."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from runtime import cpus
from service.answers import BINARY_FACTOR

MAX_AUTO_WORKERS = 8  # each worker holds every model and its own interpreter (about 100 MiB before any model)
# On an NVIDIA GPU: each worker also holds a CUDA context. On an H100 with 16 CPUs (benchmarks/gpu.py) 4 workers
# answered 2.1-5.0x the rows/s of one (whose event loop parses every request on one core), and 8 no more than 4.
GPU_AUTO_WORKERS = 4
# Set by vae-serve for its workers when there are several (not settings): the folder of prometheus_client's
# multiprocess files (its own variable name) and the folder of the repository state the workers share.
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
PEERS_DIR = "VAE_SERVE_PEERS_DIR"
# 64 MiB: the largest answer the default VAE_MAX_ANSWER_VALUES allows in raw contents is 4 x 2^20 values of 4 bytes
# (16 MiB; 32 MiB were every one 8 bytes); gRPC's own default, 4 MiB, would refuse answers the REST face gives
GRPC_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
GRPC_INT_MAX = 2**31 - 1  # grpcio takes its sizes and counts as C ints
ANSWER_ENVELOPE_BYTES = 1 << 20  # an answer's names, shapes and parameters beside its values, generously
# Kubernetes gives every pod of a namespace its Services' links: a Service named vae-x injects
# VAE_X_SERVICE_HOST=10.0.0.1, VAE_X_SERVICE_PORT=8000, VAE_X_PORT=tcp://10.0.0.1:8000, VAE_X_PORT_8000_TCP_ADDR=...
# and the like. A Service named vae (or vae-grpc) so sets VAE_PORT (VAE_GRPC_PORT) to a URL: that value is Kubernetes',
# not a port anyone chose, and is read as unset (a container's own env, which wins over links, still sets it), with a
# warning (service/cli.py).
_SERVICE_LINK_URL = re.compile(r"(tcp|udp|sctp)://")


def service_link(var: str, value: str) -> bool:
    """Whether VAE_* variable `var` (upper case) with `value` is one of Kubernetes' service links. A misspelt
    VAE_GPRC_PORT=0 is not: a *_PORT variable is a link only with a link's URL as its value."""
    if re.fullmatch(r"VAE_\w+_SERVICE_HOST", var) or re.fullmatch(r"VAE_\w+_SERVICE_PORT\w*", var):
        return True
    if re.fullmatch(r"VAE_\w+_PORT_\d+_(TCP|UDP|SCTP)\w*", var):
        return True
    return bool(re.fullmatch(r"VAE_(\w+_)?PORT", var)) and _SERVICE_LINK_URL.match(value) is not None


class _EnvWithoutServiceLinks(EnvSettingsSource):
    """The VAE_* variables, less Kubernetes' service links (a Service named vae sets VAE_PORT=tcp://...)."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self.env_vars = {
            name: value
            for name, value in self.env_vars.items()
            if value is None or not service_link(name.upper(), value)
        }


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VAE_", env_file=".env", extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _EnvWithoutServiceLinks(settings_cls), dotenv_settings, file_secret_settings

    host: str = Field("127.0.0.1", description="address vae-serve binds (0.0.0.0: every interface)")
    # PORT is what KServe, Knative and Cloud Run set for a container; VAE_PORT wins when both are there
    port: int = Field(
        8000,
        ge=1,
        le=65535,
        validation_alias=AliasChoices("VAE_PORT", "PORT", "port"),
        description="TCP port of vae-serve (VAE_PORT, else PORT as KServe/Knative set it)",
    )
    grpc_port: int = Field(
        8081,
        ge=0,
        le=65535,
        description="TCP port of the Open Inference Protocol's gRPC face (KServe's default 8081), on VAE_HOST, served "
        "by every worker; 0 = no gRPC",
    )
    grpc_max_message_bytes: int = Field(
        GRPC_MAX_MESSAGE_BYTES,
        ge=1024,
        le=GRPC_INT_MAX,
        description="largest gRPC answer; it must hold the largest one VAE_MAX_ANSWER_VALUES allows in raw contents "
        "(4 times as many values as JSON, 8 bytes each at most), checked at start-up. A request is held to "
        "VAE_MAX_BODY_BYTES, as a REST body is; a larger one gets RESOURCE_EXHAUSTED",
    )
    grpc_max_concurrent_rpcs: int = Field(
        512,
        ge=1,
        le=GRPC_INT_MAX,
        description="gRPC calls a worker runs at once (as VAE_MAX_CONNECTIONS bounds HTTP); past it new calls get "
        "RESOURCE_EXHAUSTED",
    )
    workers: int = Field(
        0,
        ge=0,
        description="uvicorn worker processes of vae-serve, each loading every model; 0 = one per CPU this process "
        f"may use, at most {MAX_AUTO_WORKERS} (at most {GPU_AUTO_WORKERS} when it serves on an NVIDIA GPU, each "
        "worker holding a CUDA context)",
    )
    model_repository: Path = Field(Path("models"), description="folder of <name>/<version>/ bundles")
    default_model: str | None = Field(None, description="model behind /v1/{encode,...}; default: the only or first")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when onnxruntime can, else CPU")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated keys; empty = no authentication"
    )
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated keys of the admin role: only it may change what is served (V2 repository load, "
        "unload, pin); an admin key may also do all a reader key may",
    )
    allow_remote_changes: bool = Field(
        False,
        description="with no keys at all: also accept repository changes (load, unload) from clients that are not on "
        "a loopback address (off: only loopback clients may change what is served)",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated Host names served besides the loopback ones (localhost, 127.0.0.1, [::1]); "
        "checked when bound to a loopback address (VAE_HOST) or when this list is set; * = any Host",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated web origins (https://app.example.com) whose pages may call the API from a "
        "browser (CORS); empty = CORS off, and POSTs from any other origin's page are refused",
    )
    metrics_require_key: bool = Field(
        False, description="GET /metrics needs a reader or admin key (Prometheus: authorization.credentials)"
    )
    max_answer_values: int = Field(
        1 << 20,
        ge=1024,
        description="numbers one JSON answer may hold (rows x values per row; the default's worst case is 16 MiB "
        "of JSON); an answer whose every output is V2 binary (over gRPC: in raw contents) may hold 4 times as many "
        "(4 bytes each); larger ones get 413",
    )
    max_connections: int = Field(
        512,
        ge=1,
        description="connections and requests a worker holds at once (uvicorn's limit_concurrency); past it new "
        "requests get 503",
    )
    max_body_bytes_in_flight: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="bytes of request bodies a worker holds while they arrive, all requests together; a body that "
        "would go past it gets 503 (stalled uploads cannot hold more)",
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, le=GRPC_INT_MAX, description="request bodies above this get 413"
    )
    max_header_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="bytes of a request's line and headers; past them the request gets 431 and its connection is "
        "closed, even before its headers end",
    )
    max_rows: int = Field(8192, ge=1, description="rows per request (inputs, latents, or n for sample)")
    max_importance_samples: int = Field(1024, ge=1, description="largest K a score request may ask for")
    max_draws: int = Field(
        1 << 20, ge=1, description="rows x samples (encode) or rows x importance_samples (score) per request"
    )
    batch_max_rows: int = Field(1024, ge=1, description="rows merged into one onnxruntime run")
    batch_max_draws: int = Field(
        16384,
        ge=1,
        description="rows x importance samples merged into one scorer run: bounds a run's memory; bigger requests "
        "run as several chunks",
    )
    batch_max_delay_ms: float = Field(
        2.0, ge=0, allow_inf_nan=False, description="longest wait for batch-mates after the first"
    )
    queue_max_rows: int = Field(65536, ge=1, description="rows waiting per model graph before 503")
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        allow_inf_nan=False,
        description="a request body that has not fully arrived after this many seconds gets 408",
    )
    request_timeout_s: float = Field(10.0, gt=0, allow_inf_nan=False, description="a request waiting longer gets 504")
    poll_interval_s: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="seconds between repository scans for new versions; 0 = off"
    )
    keep_versions: int = Field(1, ge=1, description="loaded versions per model (newest first), addressable in /v2")
    intra_op_threads: int = Field(
        0,
        ge=0,
        description="onnxruntime threads per run; 0 = the CPUs this process may use (affinity mask, cgroup CPU "
        "quota) divided among the workers and the concurrent runs",
    )
    batch_concurrency: int = Field(
        0,
        ge=0,
        description="batches of one model graph that run at once in a worker; 0 = the CPUs this process may use (in "
        "each worker: connections reach the workers unevenly, so each may use every CPU while another is idle; "
        "parallel runs of one thread each do more rows/s than one run on every thread)",
    )
    graceful_shutdown_s: float = Field(
        30.0,
        gt=0,
        allow_inf_nan=False,
        description="on SIGTERM: stop accepting, let requests in flight finish for up to this long, exit",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="the least level of log line written (vae-serve's, uvicorn's and every worker's)"
    )
    log_requests: bool = Field(True, description="one structured log line per request")
    monitor: bool = Field(
        True,
        description="watch what score answers: p-value and score histograms, rows scored and flagged, a drift test "
        "over a recent window, per-feature shifts (/metrics, GET /v1/models/{name}/monitoring); off: none of it",
    )
    monitor_window_s: float = Field(
        3600.0,
        ge=1,
        allow_inf_nan=False,
        description="the drift window: scored rows of the last this many seconds (in 60 time slots)",
    )
    monitor_window_rows: int = Field(
        20000,
        ge=100,
        description="at most this many of the newest rows in the drift window: whole time slots, newest first, and a "
        "share of the slot that crosses the limit",
    )
    monitor_min_rows: int = Field(
        500,
        ge=20,
        description="a window with fewer rows is still filling: its figures are shown, the alarm stays off",
    )
    monitor_level: float = Field(
        0.001,
        gt=0,
        lt=0.5,
        description="false-alarm rate of the drift alarm per look at a window of normal rows: the alarm is on when "
        "the test's p-value is below it (features moved: Bonferroni over the features at this level)",
    )
    opentelemetry: bool = Field(
        False,
        description="FastAPI's own OpenTelemetry spans, metrics and logs per request, sent to the providers "
        "configured for the process (e.g. by opentelemetry-instrument); off spares every request the check "
        "for them (about 5% of a 1-row request's event-loop time)",
    )

    def processes(self) -> int:
        """The processes sharing the CPUs: vae-serve resolves workers=0 before it starts them (and exports the
        number), so 0 here is an app created directly, one process."""
        return self.workers or 1

    def runs_per_graph(self) -> int:
        """batch_concurrency resolved (0: the usable CPUs)."""
        return cpus.threads(self.batch_concurrency)

    def threads_per_run(self) -> int:
        """intra_op_threads resolved (0: the usable CPUs, shared among the workers and their concurrent runs)."""
        return cpus.threads(self.intra_op_threads, share=self.processes() * self.runs_per_graph())

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value  # WARNING as logging names it

    @model_validator(mode="after")
    def _grpc_fits(self) -> ServiceSettings:
        if self.grpc_port and self.grpc_port == self.port:
            # the lifespan binds gRPC before uvicorn binds HTTP: without this uvicorn fails with "address in use"
            raise ValueError(
                f"VAE_GRPC_PORT and the HTTP port (VAE_PORT, else PORT) are both {self.port}: give gRPC another port, "
                "or VAE_GRPC_PORT=0 for none"
            )
        # else the largest answer the limits allow is computed, then refused by gRPC as it is sent
        largest = 8 * BINARY_FACTOR * self.max_answer_values + ANSWER_ENVELOPE_BYTES
        if self.grpc_port and self.grpc_max_message_bytes < largest:
            raise_it = "raise it to at least that, or " if largest <= GRPC_INT_MAX else "gRPC takes at most 2^31-1: "
            raise ValueError(
                f"VAE_GRPC_MAX_MESSAGE_BYTES is {self.grpc_max_message_bytes}, but the largest gRPC answer "
                f"VAE_MAX_ANSWER_VALUES={self.max_answer_values} allows takes up to {largest} bytes: {raise_it}lower "
                "VAE_MAX_ANSWER_VALUES (or VAE_GRPC_PORT=0 for no gRPC)"
            )
        return self

    @model_validator(mode="after")
    def _limits_agree(self) -> ServiceSettings:
        # each pair below, the wrong way round, answers a request that can never pass with a "retry" (503, 504)
        # or keeps a feature off for good: refused at start-up instead
        contradictions = [
            (
                self.max_body_bytes > self.max_body_bytes_in_flight,
                f"VAE_MAX_BODY_BYTES ({self.max_body_bytes}) is above VAE_MAX_BODY_BYTES_IN_FLIGHT "
                f"({self.max_body_bytes_in_flight}): a body of the largest size allowed could never be taken",
            ),
            (
                self.queue_max_rows < self.max_rows,
                f"VAE_QUEUE_MAX_ROWS ({self.queue_max_rows}) is below VAE_MAX_ROWS ({self.max_rows}): a request of "
                "the most rows allowed could never be queued",
            ),
            (
                self.batch_max_delay_ms / 1000 >= self.request_timeout_s,
                f"VAE_BATCH_MAX_DELAY_MS ({self.batch_max_delay_ms:g}) is not below VAE_REQUEST_TIMEOUT_S "
                f"({self.request_timeout_s:g} s): a request alone in its batch would time out waiting for mates",
            ),
            (
                self.monitor_min_rows > self.monitor_window_rows,
                f"VAE_MONITOR_MIN_ROWS ({self.monitor_min_rows}) is above VAE_MONITOR_WINDOW_ROWS "
                f"({self.monitor_window_rows}): the drift window would be filling for ever, its alarm never on",
            ),
            (
                self.metrics_require_key and not (self.api_keys or self.admin_keys),
                "VAE_METRICS_REQUIRE_KEY is on but no key is set (VAE_API_KEYS, VAE_ADMIN_KEYS): set keys, or "
                "turn it off",
            ),
        ]
        for wrong, why in contradictions:
            if wrong:
                raise ValueError(why)
        return self

    @field_validator("host", mode="before")
    @classmethod
    def _a_host(cls, value: object) -> object:
        # an empty host (a template's unset variable) binds every interface: say 0.0.0.0 to mean that
        if isinstance(value, str) and not value.strip():
            raise ValueError("VAE_HOST is empty: give an address (127.0.0.1: this machine; 0.0.0.0: every interface)")
        return value.strip() if isinstance(value, str) else value

    @field_validator("poll_interval_s", mode="after")
    @classmethod
    def _a_pause(cls, value: float) -> float:
        if 0 < value < 0.01:  # a scan of the repository every microsecond keeps a core busy for nothing
            raise ValueError("VAE_POLL_INTERVAL_S must be 0 (off) or at least 0.01 s")
        return value

    @field_validator("model_repository", mode="before")
    @classmethod
    def _a_folder(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():  # "" became ".", the folder vae-serve happened to start in
            raise ValueError(
                "VAE_MODEL_REPOSITORY is empty: give the folder of <name>/<version>/ bundles (. for this one)"
            )
        return value

    @field_validator("default_model", mode="before")
    @classmethod
    def _unset_if_empty(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value  # compose's ${VAE_DEFAULT_MODEL:-}

    @field_validator("allowed_hosts", mode="after")
    @classmethod
    def _host_names(cls, value: list[str]) -> list[str]:
        # compared with a Host header's name, lower-case and without its port: "[fd00::1]", "10.0.0.7", "api.x.com"
        for host in value:
            bracketed = re.fullmatch(r"\[[0-9a-fA-F:.]+\]", host) is not None
            plain = re.fullmatch(r"[^\s/:\[\]*]+", host) is not None
            if not (host == "*" or bracketed or plain):
                raise ValueError(
                    f"VAE_ALLOWED_HOSTS entry {host!r}: give a host name or address alone (api.example.com, "
                    "10.0.0.7, an IPv6 address in brackets as [fd00::1]), without a scheme, a port, a path or a "
                    "wildcard; the Host header is compared without its port"
                )
        return value

    @field_validator("cors_origins", mode="after")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        # as a browser sends it: lower-case, no trailing slash; any scheme (app shells send capacitor://, tauri://)
        origins = [origin.strip().lower().rstrip("/") for origin in value]
        for origin in origins:
            if not re.fullmatch(r"[a-z][a-z0-9+.-]*://[^/?#\s*]+", origin):
                raise ValueError(
                    f"VAE_CORS_ORIGINS entry {origin!r}: give an origin as a browser sends it, scheme and host (and "
                    "port if not the scheme's), such as https://app.example.com; * is not taken (list the origins)"
                )
        return origins

    @field_validator("api_keys", "admin_keys", "allowed_hosts", "cors_origins", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            items = [k.strip() for k in value.split(",") if k.strip()]
            if value.strip() and not items:  # " , ": set, but to nothing; for keys that would mean none at all
                raise ValueError(f"{value!r} holds separators only: give comma-separated values, or leave it empty")
            return items
        return value

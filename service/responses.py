"""What each endpoint answers, as pydantic models for the OpenAPI document (/docs, /redoc, generated clients).

Documentation only: the routes write their bodies with orjson, and the schemathesis suite checks every answer
against these schemas. The four /v1 operation responses are generated from the operation table
(contract/operations.py), so a column added there is documented here without being spelled twice.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from contract import Manifest
from contract.manifest import AnomalyReference
from contract.operations import OPERATIONS, Operation, Output

OVERFLOW = "an overflow is the float32 extreme ±3.4028235e38, never null"
# per-output descriptions; an output not named here is described from its shape
COLUMNS: dict[str, str] = {
    "encode.mean": "posterior mean E_q[z | x] per row: the embedding",
    "encode.log_var": "log of the posterior's diagonal variance per row",
    "encode.scale_tril": "full covariance only: the posterior's lower-triangular Cholesky factor per row",
    "encode.z": "with samples > 0: posterior draws z = mean + L eps per row",
    "decode.mean": "decoder mean in raw feature units per latent",
    "decode.log_var": "log of the decoder's variance in raw units per latent",
    "decode.x": "with sample: x = mean + exp(log_var / 2) * noise (decorrelated bundle: the decoder's correlated draw)",
    "sample.samples": "generated rows in raw feature units (decoder means, plus decoder noise with noise)",
    "sample.latents": "with return_latents: the prior draws z the rows were decoded from",
    "score.elbo": f"ELBO_K in nats, raw data space; {OVERFLOW}",
    "score.reconstruction": f"(1/K) sum_k log p(x | z_k); {OVERFLOW}",
    "score.kl": "KL(q(z | x) || p(z)): closed form with the N(0, I) prior; with a mixture prior estimated from the "
    f"K draws, (1/K) sum_k log q(z_k | x) - log p(z_k), so it follows the seed and K and can be below 0; {OVERFLOW}",
    "score.log_likelihood": f"IWAE_K, a lower bound on log p(x); {OVERFLOW}",
    "score.anomaly_score": f"-ELBO_K: higher is more anomalous; {OVERFLOW} (the most anomalous score there is)",
    "score.percentile": "100 (1 - p_value): how far into the validation reference the score lies, in percent; 100 "
    "for an overflowed score",
    "score.p_value": "conformal p-value (1 + #{reference scores >= anomaly_score}) / (n + 1) over the n validation "
    "scores of the model's reference: for a normal row, P(p_value <= a) <= a",
    "score.is_anomaly": "anomaly_score > threshold",
    "score.feature_nll": "with explain: E_q[-log p(x_j | z)] per row and feature, in nats; which features made the "
    "row unlikely",
    "score.threshold": "the manifest's anomaly.threshold, or the conformal threshold at threshold_quantile when given",
    "score.importance_samples": "K used for ELBO_K and IWAE_K",
}
_SCALARS: dict[str, type] = {"threshold": float, "importance_samples": int}


def _column_type(output: Output) -> Any:
    leaf: Any = bool if output.datatype == "BOOL" else float
    for _ in output.shape:
        leaf = list[leaf]
    return list[leaf]


def _column(op: Operation, output: Output) -> tuple[Any, Any]:
    shape = ", ".join(("n", *output.shape))
    text = f"{COLUMNS.get(f'{op.name}.{output.name}', output.name)}; shape ({shape})"
    if output.when is None:
        return _column_type(output), Field(description=text)
    where = "for a full-covariance model" if output.when == "full" else f"with {output.when}"
    return _column_type(output) | None, Field(None, description=f"{text}; present only {where}")


def _operation_response(op: Operation) -> type[BaseModel]:
    fields: dict[str, Any] = {
        "model": (str, Field(description="the model that answered")),
        "version": (int, Field(description="its version")),
    }
    fields |= {o.name: _column(op, o) for o in op.outputs}
    fields |= {s: (_SCALARS[s], Field(description=COLUMNS[f"{op.name}.{s}"])) for s in op.scalars}
    return create_model(
        f"{op.name.capitalize()}Response",
        __doc__=f"A {op.name} answer: columns with one entry per row, in request order.",
        **fields,
    )


OPERATION_RESPONSES: dict[str, type[BaseModel]] = {name: _operation_response(op) for name, op in OPERATIONS.items()}


class ModelSummary(BaseModel):
    name: str
    version: int
    input_dim: int
    latent_dim: int
    covariance: Literal["diagonal", "full"]
    provider: str = Field(description="the onnxruntime execution provider running the graphs")
    path: str = Field(description="<name>/<version> inside the model repository")
    default_importance_samples: int
    threshold: float = Field(description="anomaly threshold: a score above it is flagged")
    threshold_quantile: float = Field(description="the validation-score quantile the threshold sits at")


class RepositoryEntry(BaseModel):
    name: str
    versions_on_disk: list[int]
    loaded_versions: list[int]
    serving_version: int | None
    pinned: bool = Field(description="a load named this version, so newer versions on disk do not replace it")
    unloaded: bool = Field(description="an unload request took it out: it stays out, through polls, until a load")
    state: Literal["READY", "UNAVAILABLE"]
    refused: dict[str, str] = Field(description="version -> why it was not served")


class ModelList(BaseModel):
    models: list[ModelSummary]
    default_model: str | None = Field(description="the model /v1/<op> without a name answers with")
    repository: list[RepositoryEntry]
    refused: dict[str, str] = Field(description="<name>/<version> -> why it was not served")


class SharedAnomaly(AnomalyReference):
    sample: list[float] | None = Field(  # type: ignore[assignment]
        None, description="the sorted validation scores behind the reference: shown to the admin role only"
    )

    @field_validator("sample")
    @classmethod
    def _sorted(cls, v: list[float] | None) -> list[float] | None:  # type: ignore[override]
        return v if v is None else AnomalyReference._sorted(v)


class SharedManifest(Manifest):
    """The bundle's manifest as the API shows it: training arguments that are file-system paths by their last part
    only, and the reference's validation scores (anomaly.sample) for the admin role only."""

    anomaly: SharedAnomaly


class ModelDetail(ModelSummary):
    warnings: list[str] = Field(description="what to know about the anomaly reference (e.g. few validation rows)")
    report: list[str] = Field(description="the training report's files: GET /v1/models/<name>/report/<file>")
    manifest: SharedManifest


class ModelMonitoring(BaseModel):
    """GET /v1/models/{name}/monitoring (service/monitoring.py; README, Monitoring)."""

    model: str
    version: int
    enabled: bool = Field(description="false with VAE_MONITOR=false: then only summary follows")
    summary: str = Field(description="the figures in one sentence")
    workers: int | None = Field(None, description="workers whose rows are in the figures")
    reference: dict[str, Any] | None = Field(
        None,
        description="the validation reference: rows (validation rows scored), sample_rows (the scores kept, at most "
        "10,000: what the p-values, the drift test and the threshold rank against), importance_samples, "
        "default_quantile, threshold",
    )
    window: dict[str, Any] | None = Field(
        None,
        description="the drift window: rows, seconds it spans, limit_rows, limit_seconds, min_rows, and filling "
        "(fewer rows than min_rows: no alarm)",
    )
    totals: dict[str, Any] | None = Field(None, description="scored_rows and flagged_rows since start-up")
    flagged: dict[str, Any] | None = Field(
        None,
        description="the window's flagged rows, share, the expected share, and the two-sided p-value of the share "
        "(beta-binomial: the threshold's own uncertainty included)",
    )
    drift: dict[str, Any] | None = Field(
        None, description="the test, its statistic, dof and p_value, the level, and the alarm"
    )
    p_values: dict[str, Any] | None = Field(
        None, description="the window's p-values per bucket: upper_edges and counts (not cumulative)"
    )
    features: dict[str, Any] | None = Field(
        None,
        description="available, the |z| cut, the features that moved, and the top ten by |z| (feature, z, "
        "window_mean, reference_mean)",
    )


class Liveness(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    models: list[str]
    refused: dict[str, str]
    reason: str | None = Field(None, description="when not ready: why")


# Open Inference Protocol v2 (the protocol's own field names)


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2Tensor(BaseModel):
    name: str
    datatype: Literal["FP32", "FP64", "BOOL"]
    shape: list[int] = Field(description="-1: a dynamic axis")


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2Tensor]
    outputs: list[V2Tensor]
    parameters: dict[str, list[str]] = Field(description="accepted: the request parameters this model reads")


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class V2Output(V2Tensor):
    data: list[float | bool] | None = Field(None, description="row-major values; absent when sent as binary")
    parameters: dict[str, int] | None = Field(None, description="binary_data_size when sent as binary")


class V2InferResponse(BaseModel):
    """The JSON header of a V2 answer. With binary outputs the body is application/octet-stream: this header
    (Inference-Header-Content-Length bytes) followed by each binary output's raw little-endian bytes."""

    model_config = ConfigDict(title="V2InferResponse")
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, float | int] | None = Field(None, description="score: threshold, importance_samples")
    outputs: list[V2Output]


class V2IndexEntry(BaseModel):
    name: str = Field(description="<bundle>.<op>")
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: str


class V2LoadState(BaseModel):
    name: str
    version: str | None = None
    state: Literal["READY", "UNAVAILABLE"]


def ok(model: Any, description: str = "OK") -> dict[int | str, dict[str, Any]]:
    """The `responses` argument of a route answering `model` with 200."""
    return {200: {"model": model, "description": description}}

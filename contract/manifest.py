"""manifest.json: the schema of a model bundle, defined once for the writer (training) and the reader (service)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contract.layout import NAME_PATTERN

FORMAT: Literal["gaussian-vae-bundle"] = "gaussian-vae-bundle"
FORMAT_VERSION = 1

Dim = int | str  # an int is a fixed size, a str names a dynamic axis ("batch", "K")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: str
    dtype: Literal["float32"] = "float32"
    shape: list[Dim]


class GraphSpec(_Strict):
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class Graphs(_Strict):
    encoder: GraphSpec
    decoder: GraphSpec
    scorer: GraphSpec


class Preprocessing(_Strict):
    """x_std = (x - mean) / std, baked into every graph; std already floored at std_floor."""

    kind: Literal["standardize"] = "standardize"
    mean: list[float]
    std: list[float]
    std_floor: float = Field(gt=0)

    @model_validator(mode="after")
    def _same_length(self) -> Preprocessing:
        if len(self.mean) != len(self.std):
            raise ValueError("preprocessing mean and std differ in length")
        if any(s < self.std_floor for s in self.std):
            raise ValueError("preprocessing std below std_floor")
        return self


class ParityReport(_Strict):
    """onnxruntime vs PyTorch on held-out rows with the same eps: pass iff |ort - torch| <= atol + rtol |torch|."""

    atol: float
    rtol: float
    max_abs_diff: float
    batch_sizes: list[int]
    importance_samples: list[int]
    passed: bool


class Diagnostics(_Strict):
    """Section 2 diagnostics on one split, in nats per example in raw data space."""

    rows: int  # rows evaluated: the whole split, or a seeded sample of --eval-rows of it
    elbo: float
    reconstruction: float
    kl: float
    iwae: float
    iwae_samples: int
    gap: float
    kl_per_dim: list[float]
    active_units: int
    active_unit_threshold: float
    aggregate_posterior_kl: float
    decoder_variance_mean: float
    data_variance_mean: float


class AnomalyReference(_Strict):
    """Distribution of the anomaly statistic on validation rows; the service ranks new rows against it."""

    statistic: Literal["negative_elbo"] = "negative_elbo"
    importance_samples: int = Field(ge=1)
    quantiles: dict[str, float]
    sample: list[float] = Field(max_length=1000, min_length=1)
    default_quantile: float = Field(gt=0, lt=1)
    threshold: float

    @field_validator("sample")
    @classmethod
    def _sorted(cls, v: list[float]) -> list[float]:
        if any(a > b for a, b in zip(v, v[1:], strict=False)):
            raise ValueError("anomaly reference sample must be sorted ascending")
        return v


class TrainingRecord(_Strict):
    arguments: dict[str, Any]
    seed: int
    library_versions: dict[str, str]
    epochs_run: int
    best_epoch: int
    stop_reason: str
    seconds: float
    rows: dict[str, int]


class Manifest(_Strict):
    format: Literal["gaussian-vae-bundle"] = FORMAT
    format_version: int = FORMAT_VERSION
    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1)
    created_at: datetime
    input_dim: int = Field(ge=1)
    latent_dim: int = Field(ge=1)
    covariance: Literal["diagonal", "full"]
    feature_names: list[str] | None
    image_shape: list[int] | None = None
    preprocessing: Preprocessing
    decoder_variance_floor: float = Field(gt=0)
    log_var_bounds: tuple[float, float]
    graphs: Graphs
    opset: int
    parity: ParityReport
    training: TrainingRecord
    diagnostics: dict[str, Diagnostics]
    anomaly: AnomalyReference

    @model_validator(mode="after")
    def _dims_agree(self) -> Manifest:
        if len(self.preprocessing.mean) != self.input_dim:
            raise ValueError("preprocessing length differs from input_dim")
        if self.feature_names is not None and len(self.feature_names) != self.input_dim:
            raise ValueError("feature_names length differs from input_dim")
        return self

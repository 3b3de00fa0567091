"""manifest.json: the schema of a model bundle, defined once for the writer (training) and the reader (service)."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contract import anomaly
from contract.layout import NAME_PATTERN, graph_inputs, graph_outputs

FORMAT: Literal["gaussian-vae-bundle"] = "gaussian-vae-bundle"
# 2: per-feature kinds and lattice steps, conformal anomaly reference with common noise; 3: prior; 4: lattice values
# at their bins' centres (preprocessing.bin_centres); 5: decorrelated features (preprocessing.decorrelate), whose
# decoder graph draws x itself
FORMAT_VERSION = 5
# the versions this release reads: a v2 bundle has no prior (N(0, I)), a v2 or v3 bundle's graphs take a lattice value
# x itself, and each is served as it was; a reader of an older version refuses a newer bundle by its version,
# instead of failing on a field it does not know
READABLE_VERSIONS = (2, 3, 4, 5)
BIN_CENTRES_FROM = 4
DECORRELATE_FROM = 5

Dim = int | str  # an int is a fixed size, a str names a dynamic axis ("batch", "K")
# a graph is a plain file in the bundle folder: no separator, no leading dot (so never "." or ".."), no absolute path
GRAPH_FILE_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.onnx"
_GRAPH_FILE_RE = re.compile(GRAPH_FILE_PATTERN)


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

    @field_validator("file")
    @classmethod
    def _inside_bundle(cls, v: str) -> str:
        if _GRAPH_FILE_RE.fullmatch(v) is None:  # fullmatch, not "...$": "$" also matches before a final newline
            raise ValueError(
                f"graph file must be a plain *.onnx file name inside the bundle folder "
                f"(no path separators, not hidden, matching {GRAPH_FILE_PATTERN}); got {v!r}"
            )
        return v


class Graphs(_Strict):
    encoder: GraphSpec
    decoder: GraphSpec
    scorer: GraphSpec


class Preprocessing(_Strict):
    """x_std = (x - mean) / std per feature, baked into every graph (training/features.py).

    kinds: constant (a fixed N(mean, std²), not modelled by the networks; a point mass scoring 0 nats at its
    value when step is 0), lattice (values a + k step; trained dequantised inside the bin when `dequantize`, std
    includes the bin's variance), continuous."""

    kind: Literal["standardize"] = "standardize"
    mean: list[float]
    std: list[float]
    kinds: list[Literal["constant", "lattice", "continuous"]]
    step: list[float]  # lattice step h per feature in raw units, 0 for none
    dequantize: bool
    # the graphs take a lattice feature's value x at its bin's centre x + step/2 (encoder, scorer) and the decoder
    # answers its mean less step/2 (trained dequantised; format v4); false in v2 and v3 bundles, which take x itself
    bin_centres: bool = False
    near_constant: list[int] = []  # columns whose most frequent value holds >= 99% of training rows
    # the graphs model the non-constant features decorrelated, y = L⁻¹ x_std with L the Cholesky factor of their
    # training correlation (baked into the graphs, not listed here): the decoder's mean and log_var are each
    # feature's marginal given z, so is feature_nll_j, and the decoder draws x itself from eps (contract/layout.py).
    # Format v5; false before
    decorrelate: bool = False

    def centre_shift(self) -> list[float]:
        """What the graphs add to each feature's value before encoding or scoring it (step/2 on a lattice when
        `bin_centres`, else 0): the scorer's density at a point y is its answer for y less this."""
        return [s / 2.0 if self.bin_centres else 0.0 for s in self.step]

    @model_validator(mode="after")
    def _same_length(self) -> Preprocessing:
        if not len(self.mean) == len(self.std) == len(self.kinds) == len(self.step):
            raise ValueError("preprocessing mean, std, kinds and step differ in length")
        if not all(s > 0 and math.isfinite(s) for s in self.std):
            raise ValueError("preprocessing std must be positive and finite")
        return self


class ParityReport(_Strict):
    """onnxruntime vs PyTorch on held-out rows with the same eps: pass iff |ort - torch| <= atol + rtol |torch|."""

    atol: float
    rtol: float
    max_abs_diff: float
    batch_sizes: list[int]
    importance_samples: list[int]
    passed: bool


class LabelledMetrics(_Strict):
    """Anomaly detection against a 0/1 label column (1 = anomaly) on one split, at the default threshold."""

    rows: int
    anomalies: int
    auroc: float | None  # None when the split holds only one class
    average_precision: float | None
    precision: float | None  # None when no row is flagged
    recall: float | None


class DiagnosticWarning(_Strict):
    """Something in a split's diagnostics that deserves a look before the model is trusted. Worded once, at training
    (training/diagnostic_warnings.py, with each rule's threshold); every reader shows `message` as it is."""

    # few_rows, inactive_units, gap, decoder_variance; a plain string, so a reader older than a new kind still loads
    kind: str
    message: str


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
    # N(0, I) prior: KL(N(m, S) || N(0, I)) of the codes' moment-matched Gaussian, None when rows <= latent_dim;
    # a mixture prior: the sampled estimate below (one Gaussian summarises a multi-modal q(z) badly)
    aggregate_posterior_kl: float | None
    # KL(q(z) || p(z)) of the aggregate posterior of up to 1,000 evaluated rows, by sampling
    # (training/evaluate.py), for either prior: the number that compares priors. None in older manifests
    aggregate_posterior_kl_sampled: float | None = None
    decoder_variance_mean: float
    data_variance_mean: float
    # IWAE_K on the rows with lattice features dequantised (one draw of u): a density on continuous values
    dequantized_iwae: float
    # the discrete bound -(dequantized_iwae + Σ_j log h_j) / (D ln 2) when every feature is on a lattice, else None
    bits_per_dim: float | None = None
    labelled: LabelledMetrics | None = None
    # what deserves a look, judged on this split's numbers; [] in a manifest written before warnings were stored
    warnings: list[DiagnosticWarning] = []


class AnomalyReference(_Strict):
    """Distribution of the anomaly statistic on validation rows; every reader ranks new rows against it with the
    rules in contract/anomaly.py (conformal threshold and p-value, common noise)."""

    statistic: Literal["negative_elbo"] = "negative_elbo"
    importance_samples: int = Field(ge=1)
    noise_seed: int = anomaly.DEFAULT_NOISE_SEED  # the seed of the (K, d) noise block every row shares
    rows: int = Field(ge=1)  # validation rows scored
    quantiles: dict[str, float]
    sample: list[float] = Field(max_length=anomaly.REFERENCE_SAMPLE_SIZE, min_length=1)
    default_quantile: float = Field(gt=0, lt=1)
    threshold: float
    warnings: list[str] = []
    # each feature's NLL (the scorer's feature_nll) over the validation rows: mean and standard deviation, (D,) each;
    # what the service's monitoring compares a window's features with. None in bundles written before they were kept
    feature_nll_mean: list[float] | None = None
    feature_nll_std: list[float] | None = None

    @field_validator("sample")
    @classmethod
    def _sorted(cls, v: list[float]) -> list[float]:
        if any(a > b for a, b in zip(v, v[1:], strict=False)):
            raise ValueError("anomaly reference sample must be sorted ascending")
        return v

    def reference(self) -> np.ndarray:
        return np.asarray(self.sample, dtype=np.float64)

    def threshold_at(self, quantile: float) -> float:
        return anomaly.threshold_at(self.reference(), quantile)

    def p_values(self, scores: np.ndarray) -> np.ndarray:
        return anomaly.p_values(self.reference(), scores)

    def percentiles(self, scores: np.ndarray) -> np.ndarray:
        return anomaly.percentiles(self.reference(), scores)


class MixturePrior(_Strict):
    """The prior p(z) = Σ_m π_m N(μ_m, L_m L_mᵀ): a Gaussian mixture fitted after training to the aggregate posterior
    of the training rows (EM), its number of components chosen on the validation ELBO. A manifest without one (or an
    older manifest) means N(0, I). contract/prior.py draws from it; the scorer graph holds its log density."""

    kind: Literal["gaussian_mixture"] = "gaussian_mixture"
    weights: list[float]  # π (M,), summing to 1
    means: list[list[float]]  # μ (M, d)
    scale_tril: list[list[list[float]]]  # L (M, d, d): lower triangular, positive diagonal
    # validation ELBO_K (nats) of every candidate tried: "0" is N(0, I), "m" the mixture fitted with m components
    selection: dict[str, float] = {}
    # the candidate this prior is (its key in selection); it may hold fewer components when EM left some nearly empty
    fitted_as: int | None = None

    @model_validator(mode="after")
    def _shapes_agree(self) -> MixturePrior:
        m = len(self.weights)
        if m == 0 or len(self.means) != m or len(self.scale_tril) != m:
            raise ValueError("prior: weights, means and scale_tril must hold the same number (>= 1) of components")
        d = len(self.means[0])
        square = all(len(tril) == d and all(len(r) == d for r in tril) for tril in self.scale_tril)
        if any(len(mu) != d for mu in self.means) or not square:
            raise ValueError("prior: every mean must have d entries and every scale_tril be d x d")
        w = np.asarray(self.weights)
        if not (np.all(w >= 0) and abs(w.sum() - 1.0) < 1e-4):
            raise ValueError("prior: weights must be non-negative and sum to 1")
        L = np.asarray(self.scale_tril)
        if not (np.all(np.diagonal(L, axis1=1, axis2=2) > 0) and np.allclose(L, np.tril(L))):
            raise ValueError("prior: each scale_tril must be lower triangular with a positive diagonal")
        return self

    @property
    def latent_dim(self) -> int:
        return len(self.means[0])


class TrainingRecord(_Strict):
    arguments: dict[str, Any]
    seed: int
    library_versions: dict[str, str]
    epochs_run: int
    best_epoch: int
    stop_reason: str
    seconds: float
    rows: dict[str, int]
    # --decorrelate auto: the best validation ELBO (nats a row) of each candidate trained, "on" and "off" (the
    # decorrelated one is kept when higher by more than 0.5 nats a row). Empty when one was
    # asked for, and in older manifests
    decorrelation: dict[str, float] = {}


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
    prior: MixturePrior | None = None  # None: N(0, I)

    @model_validator(mode="after")
    def _dims_agree(self) -> Manifest:
        if self.prior is not None and self.prior.latent_dim != self.latent_dim:
            raise ValueError("the prior's latent size differs from latent_dim")
        if len(self.preprocessing.mean) != self.input_dim:
            raise ValueError("preprocessing length differs from input_dim")
        if self.feature_names is not None and len(self.feature_names) != self.input_dim:
            raise ValueError("feature_names length differs from input_dim")
        if self.preprocessing.bin_centres and self.format_version < BIN_CENTRES_FROM:
            raise ValueError(
                f"bin_centres is a format v{BIN_CENTRES_FROM} field; this manifest says v{self.format_version}"
            )
        decorrelated = self.preprocessing.decorrelate
        if decorrelated and self.format_version < DECORRELATE_FROM:
            raise ValueError(
                f"decorrelate is a format v{DECORRELATE_FROM} field; this manifest says v{self.format_version}"
            )
        decoder = self.graphs.decoder
        names = (tuple(t.name for t in decoder.inputs), tuple(t.name for t in decoder.outputs))
        if names != (graph_inputs("decoder", decorrelated), graph_outputs("decoder", self.covariance, decorrelated)):
            raise ValueError(
                f"the decoder graph's tensors {names[0]} -> {names[1]} are not those of a "
                f"{'' if decorrelated else 'not '}decorrelated bundle"
            )
        return self

"""Request bodies: pydantic models for the scalar parameters (and for /docs), numpy checks for the arrays.

Arrays are typed `Any` at validation time and converted once with numpy: pydantic would otherwise build a Python
float per element, which dominates the cost of a 1024-row request. Each row is checked here, before it is queued,
so one bad input never reaches a batch that other requests share.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
from typing import Annotated, Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from contract.anomaly import DEFAULT_NOISE_SEED
from service.errors import InvalidInput, PayloadTooLarge

T = TypeVar("T", bound=BaseModel)
Matrix = Annotated[
    Any,
    WithJsonSchema({"type": "array", "minItems": 1, "items": {"type": "array", "items": {"type": "number"}}}),
]
SEED_AND_FRESH_NOISE = (
    "seed and fresh_noise exclude each other: give a seed for reproducible draws, or fresh_noise: true for fresh "
    "entropy"
)
Seed = Field(
    None,
    ge=0,
    le=2**63 - 1,
    description=f"seeds this request's random draws; null = the fixed default seed {DEFAULT_NOISE_SEED}, so the same "
    "request returns the same numbers (fresh entropy only with fresh_noise)",
)
FreshNoise = Field(
    False,
    description="draw this request's noise from fresh entropy instead of a seed, so the numbers change from call to "
    "call; not allowed together with seed",
)


class _Body(BaseModel):
    # strict: a JSON string, boolean or float is never coerced into an int or bool field ("16", true, 16.0 for
    # importance_samples are refused with a message naming the field, not read as 16 or 1)
    model_config = ConfigDict(extra="forbid", strict=True)


class _Seeded(_Body):
    """A request with random draws: its seed, the fixed default, or fresh entropy (fresh_noise), never two of them."""

    @model_validator(mode="after")
    def _one_noise_source(self) -> _Seeded:
        if getattr(self, "fresh_noise", False) and getattr(self, "seed", None) is not None:
            raise PydanticCustomError("seed_and_fresh_noise", SEED_AND_FRESH_NOISE)
        return self


class EncodeRequest(_Seeded):
    inputs: Matrix = Field(description="rows of raw features, shape (n, D)")
    samples: int = Field(0, ge=0, le=1024, description="posterior draws z per row (0 = none)")
    seed: int | None = Seed
    fresh_noise: bool = FreshNoise
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"inputs": [[0.0, 0.5, 1.0]], "samples": 2, "seed": 7}]}
    )


class DecodeRequest(_Seeded):
    latents: Matrix = Field(description="latent vectors, shape (n, d)")
    sample: bool = Field(False, description="also return x = mean + exp(log_var / 2) * noise")
    seed: int | None = Seed
    fresh_noise: bool = FreshNoise
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"latents": [[0.0, 0.0]], "sample": True, "seed": 1}]}
    )


class SampleRequest(_Seeded):
    n: int = Field(16, ge=1, description="number of samples (at most VAE_MAX_ROWS)")
    temperature: float = Field(1.0, gt=0, le=10, description="scales the prior's standard deviation")
    seed: int | None = Seed
    fresh_noise: bool = FreshNoise
    return_latents: bool = Field(False, description="also return the latent draws")
    noise: bool = Field(False, description="add the decoder's own Gaussian noise to the means")
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"n": 4, "temperature": 1.0, "seed": 3}]})


class ScoreRequest(_Seeded):
    inputs: Matrix = Field(description="rows of raw features, shape (n, D)")
    importance_samples: int | None = Field(
        None,
        ge=1,
        description="K for ELBO_K and IWAE_K; default: the K of the model's anomaly reference "
        "(16 unless trained otherwise); at most VAE_MAX_IMPORTANCE_SAMPLES",
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=2**63 - 1,
        description="seeds the one (K, d) block of standard-normal noise that every row shares (common random "
        "numbers); null = the model's anomaly.noise_seed, the noise its reference and threshold were computed with. "
        "Either way a row's score depends on the row alone: the same on every call, alone or in any batch, at any "
        "position (fresh entropy only with fresh_noise)",
    )
    fresh_noise: bool = Field(
        False,
        description="score with a (K, d) noise block drawn from fresh entropy instead of a seeded one, so scores "
        "change from call to call (all rows of the request still share the block); not allowed together with seed",
    )
    explain: bool = Field(False, description="also return feature_nll: which features made a row unlikely")
    threshold_quantile: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="flag rows above the conformal threshold at this quantile of the validation scores: the "
        "ceil((n + 1) q)-th smallest of the n reference scores (default: the manifest's anomaly.threshold, which is "
        "that threshold at the model's default quantile)",
    )
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"inputs": [[0.0, 0.5, 1.0]], "importance_samples": 16, "seed": 0}]},
    )


class ScoreResponse(BaseModel):
    """A score response (documentation only): one value per input row, in request order. Every number is finite:
    a row the model finds beyond float range gets the most extreme float32 value, never null."""

    model: str
    version: int
    elbo: list[float] = Field(description="ELBO_K in nats, raw data space; an overflow is -3.4028235e38")
    reconstruction: list[float] = Field(description="(1/K) sum_k log p(x | z_k); an overflow is -3.4028235e38")
    kl: list[float] = Field(description="KL(q(z | x) || p(z)), closed form; an overflow is 3.4028235e38")
    log_likelihood: list[float] = Field(description="IWAE_K, a lower bound on log p(x); an overflow is -3.4028235e38")
    anomaly_score: list[float] = Field(
        description="-ELBO_K; an overflow is 3.4028235e38 (the float32 maximum), the most anomalous score there is"
    )
    percentile: list[float] = Field(
        description="100 (1 - p_value): how far into the validation reference the score lies, in percent; 100 for "
        "an overflowed score"
    )
    p_value: list[float] = Field(
        description="conformal p-value (1 + #{reference scores >= anomaly_score}) / (n + 1) over the n validation "
        "scores of the model's reference: for a normal row, P(p_value <= a) <= a"
    )
    is_anomaly: list[bool] = Field(description="anomaly_score > threshold")
    threshold: float = Field(
        description="the manifest's anomaly.threshold, or the conformal threshold at threshold_quantile when given"
    )
    importance_samples: int = Field(description="K used for ELBO_K and IWAE_K")
    feature_nll: list[list[float]] | None = Field(
        None, description="with explain: E_q[-log p(x_j | z)] per row and feature; an overflow is 3.4028235e38"
    )


def parse_body(model: type[T], body: object) -> T:
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        parts = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e["loc"])
            parts.append(f"{where}: {e['msg']}" if where else e["msg"])  # no location: a rule across fields
        raise InvalidInput("; ".join(parts)) from None


def to_matrix(value: object, field: str, width: int, max_rows: int, model: str = "") -> np.ndarray:
    """A JSON array of rows -> float32 (n, width), or InvalidInput naming the field, row and column (and, for a
    wrong width, the model that answered: `model`, e.g. "digits version 3")."""
    if not isinstance(value, list):
        raise InvalidInput(f"{field} must be an array of rows")
    if not value:
        raise InvalidInput(f"{field} is empty; send at least one row")
    if len(value) > max_rows:
        raise PayloadTooLarge(f"{field} has {len(value)} rows; the limit is {max_rows} (VAE_MAX_ROWS)")
    try:
        arr = np.array(value)
    except ValueError:
        arr = np.empty(0, dtype=object)  # ragged: fall through to the row-by-row diagnosis
    if arr.ndim != 2 or arr.dtype.kind not in "iuf" or holds_bool(arr, value):
        raise InvalidInput(_diagnose(value, field, width, model))
    with np.errstate(over="ignore"):  # values beyond float32 become inf and are reported by check_matrix
        return check_matrix(arr.astype(np.float32), field, width, max_rows, model)


def check_matrix(arr: np.ndarray, field: str, width: int, max_rows: int, model: str = "") -> np.ndarray:
    """A float32 (n, width) array with 1 <= n <= max_rows and only finite values, or the error naming why."""
    if arr.ndim != 2:
        raise InvalidInput(f"{field} must have shape (rows, {width}), got {list(arr.shape)}")
    if arr.shape[0] == 0:
        raise InvalidInput(f"{field} is empty; send at least one row")
    if arr.shape[0] > max_rows:
        raise PayloadTooLarge(f"{field} has {arr.shape[0]} rows; the limit is {max_rows} (VAE_MAX_ROWS)")
    if arr.shape[1] != width:
        raise InvalidInput(f"{field} rows must have {width} values; row 0 has {arr.shape[1]}{_taking(model, width)}")
    bad = ~np.isfinite(arr)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise InvalidInput(f"{field}[{row}][{col}] is not a finite float32 number ({int(bad.sum())} such values)")
    return arr


def _taking(model: str, width: int) -> str:
    return f" (model {model} takes {width})" if model else ""


def holds_bool(arr: np.ndarray, data: object) -> bool:
    """Whether nested lists `data`, read by numpy as `arr`, hold a JSON boolean among numbers."""
    # numpy reads [true, 1.5] as [1.0, 1.5]: a boolean among numbers leaves no trace in the array. Checking the
    # type of every value costs about as much as np.asarray itself (1.6 ms against 1.7 ms for 1024 x 64 floats),
    # so it runs only when some value is exactly 0 or 1, what a boolean becomes; that test costs 0.03 ms. Data
    # full of exact zeros (digit images) pays for the scan; continuous features do not.
    if not np.count_nonzero((arr == 0) | (arr == 1)):
        return False
    leaves: Iterable[Any] = [data]
    for _ in range(arr.ndim):  # the array is regular, so every leaf sits at depth ndim
        leaves = chain.from_iterable(leaves)
    return bool in set(map(type, leaves))


def _diagnose(rows: list[Any], field: str, width: int, model: str = "") -> str:
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            return f"{field}[{i}] must be an array of numbers, got {type(row).__name__}"
        if len(row) != width:
            return f"{field} rows must have {width} values; row {i} has {len(row)}{_taking(model, width)}"
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, int | float):
                return f"{field}[{i}][{j}] must be a number, got {_json_type(v)}"
    return f"{field} must be an array of rows of numbers"


def _json_type(v: object) -> str:
    names = {type(None): "null", bool: "boolean", str: "string", list: "array", dict: "object"}
    return names.get(type(v), type(v).__name__)

"""Request bodies: pydantic models for the scalar parameters (and for /docs), numpy checks for the arrays.

Arrays are typed `Any` at validation time and converted once with numpy: pydantic would otherwise build a Python
float per element, which dominates the cost of a 1024-row request. Each row is checked here, before it is queued,
so one bad input never reaches a batch that other requests share.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema

from service.errors import InvalidInput, PayloadTooLarge

T = TypeVar("T", bound=BaseModel)
Matrix = Annotated[
    Any,
    WithJsonSchema({"type": "array", "minItems": 1, "items": {"type": "array", "items": {"type": "number"}}}),
]
Seed = Field(None, ge=0, le=2**63 - 1, description="seeds this request's random draws; null = fresh entropy")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EncodeRequest(_Body):
    inputs: Matrix = Field(description="rows of raw features, shape (n, D)")
    samples: int = Field(0, ge=0, le=1024, description="posterior draws z per row (0 = none)")
    seed: int | None = Seed
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"inputs": [[0.0, 0.5, 1.0]], "samples": 2, "seed": 7}]}
    )


class DecodeRequest(_Body):
    latents: Matrix = Field(description="latent vectors, shape (n, d)")
    sample: bool = Field(False, description="also return x = mean + exp(log_var / 2) * noise")
    seed: int | None = Seed
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"latents": [[0.0, 0.0]], "sample": True, "seed": 1}]}
    )


class SampleRequest(_Body):
    n: int = Field(16, ge=1, description="number of samples (at most VAE_MAX_ROWS)")
    temperature: float = Field(1.0, gt=0, le=10, description="scales the prior's standard deviation")
    seed: int | None = Seed
    return_latents: bool = Field(False, description="also return the latent draws")
    noise: bool = Field(False, description="add the decoder's own Gaussian noise to the means")
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"n": 4, "temperature": 1.0, "seed": 3}]})


class ScoreRequest(_Body):
    inputs: Matrix = Field(description="rows of raw features, shape (n, D)")
    importance_samples: int | None = Field(
        None,
        ge=1,
        description="K for ELBO_K and IWAE_K; default: the K of the model's anomaly reference "
        "(16 unless trained otherwise); at most VAE_MAX_IMPORTANCE_SAMPLES",
    )
    seed: int | None = Seed
    explain: bool = Field(False, description="also return feature_nll: which features made a row unlikely")
    threshold_quantile: float | None = Field(
        None, gt=0, lt=1, description="flag rows above this quantile of validation scores (default: the model's)"
    )
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"inputs": [[0.0, 0.5, 1.0]], "importance_samples": 16, "seed": 0}]},
    )


def parse_body(model: type[T], body: object) -> T:
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        parts = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e["loc"]) or "body"
            parts.append(f"{where}: {e['msg']}")
        raise InvalidInput("; ".join(parts)) from None


def to_matrix(value: object, field: str, width: int, max_rows: int) -> np.ndarray:
    """A JSON array of rows -> float32 (n, width), or InvalidInput naming the field, row and column."""
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
    if arr.ndim != 2 or arr.dtype.kind not in "iuf":
        raise InvalidInput(_diagnose(value, field, width))
    with np.errstate(over="ignore"):  # values beyond float32 become inf and are reported by check_matrix
        return check_matrix(arr.astype(np.float32), field, width, max_rows)


def check_matrix(arr: np.ndarray, field: str, width: int, max_rows: int) -> np.ndarray:
    """A float32 (n, width) array with 1 <= n <= max_rows and only finite values, or the error naming why."""
    if arr.ndim != 2:
        raise InvalidInput(f"{field} must have shape (rows, {width}), got {list(arr.shape)}")
    if arr.shape[0] == 0:
        raise InvalidInput(f"{field} is empty; send at least one row")
    if arr.shape[0] > max_rows:
        raise PayloadTooLarge(f"{field} has {arr.shape[0]} rows; the limit is {max_rows} (VAE_MAX_ROWS)")
    if arr.shape[1] != width:
        raise InvalidInput(f"{field} rows must have {width} values; row 0 has {arr.shape[1]}")
    bad = ~np.isfinite(arr)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise InvalidInput(f"{field}[{row}][{col}] is not a finite float32 number ({int(bad.sum())} such values)")
    return arr


def _diagnose(rows: list[Any], field: str, width: int) -> str:
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            return f"{field}[{i}] must be an array of numbers, got {type(row).__name__}"
        if len(row) != width:
            return f"{field} rows must have {width} values; row {i} has {len(row)}"
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, int | float):
                return f"{field}[{i}][{j}] must be a number, got {_json_type(v)}"
    return f"{field} must be an array of rows of numbers"


def _json_type(v: object) -> str:
    names = {type(None): "null", bool: "boolean", str: "string", list: "array", dict: "object"}
    return names.get(type(v), type(v).__name__)

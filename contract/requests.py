"""The request parameters of the four operations (pydantic: validated alike for HTTP, the Python API and files).

Rows are typed `Any` here and converted once with numpy by the caller: pydantic would otherwise build a Python
float per element, which dominates the cost of a 1024-row request. Strict: a JSON string, boolean or float is never
coerced into an int or bool field ("16", true, 16.0 for importance_samples are refused, not read as 16 or 1);
Python callers validate with strict=False so numpy integers pass.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from contract.anomaly import DEFAULT_NOISE_SEED

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
    sample: bool = Field(
        False,
        description="also return a draw x = mean + exp(log_var / 2) * noise (a decorrelated bundle: the decoder's "
        "draw through its features' correlations)",
    )
    seed: int | None = Seed
    fresh_noise: bool = FreshNoise
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"latents": [[0.0, 0.0]], "sample": True, "seed": 1}]}
    )


class SampleRequest(_Seeded):
    n: int = Field(16, ge=1, description="number of samples (at most VAE_MAX_ROWS)")
    temperature: float = Field(
        1.0,
        gt=0,
        le=10,
        description="scales the prior's spread: N(0, t² I), or each mixture component's about its mean",
    )
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


def describe(exc: ValidationError) -> str:
    """One sentence per failed rule, each naming its field ("importance_samples: Input should be ...")."""
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"])
        parts.append(f"{where}: {e['msg']}" if where else e["msg"])  # no location: a rule across fields
    return "; ".join(parts)


REQUESTS: dict[str, type[BaseModel]] = {
    "encode": EncodeRequest,
    "decode": DecodeRequest,
    "sample": SampleRequest,
    "score": ScoreRequest,
}

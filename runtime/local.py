"""LocalModel: a bundle in this process, its four operations called like the API's, synchronously.

The same request parameters (contract/requests.py, validated the same way), the same plans (runtime/operations.py)
and the same chunking of big inputs into runs of at most one batch as the service: the numbers equal the service's
for the same rows and seed. Rows are not limited in number (a file of a million rows is scored run by run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from contract import Manifest
from contract.operations import OPERATIONS
from contract.requests import REQUESTS, describe
from runtime.bundle import Bundle, Device, load_bundle
from runtime.errors import InputError
from runtime.operations import Columns, Limits, Operations, Outputs, Plan
from runtime.rows import check_rows

UNLIMITED = 1 << 62
LOCAL_LIMITS = Limits(max_rows=UNLIMITED, max_draws=UNLIMITED)


def open_bundle(
    path: str | Path, device: Device = "auto", limits: Limits = LOCAL_LIMITS, intra_op_threads: int = 0
) -> LocalModel:
    """Verify a bundle folder (<repository>/<name>/<version>) and open it for encode, decode, sample and score."""
    return LocalModel(load_bundle(Path(path), device, intra_op_threads), limits)


class LocalModel:
    def __init__(self, bundle: Bundle, limits: Limits = LOCAL_LIMITS) -> None:
        self.bundle = bundle
        self.operations = Operations(bundle.manifest, limits)

    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    def encode(self, inputs: Any, samples: int = 0, seed: int | None = None, fresh_noise: bool = False) -> Columns:
        """mean, log_var (+ scale_tril when full, + z (n, samples, d) when samples > 0)."""
        return self.call("encode", inputs, samples=samples, seed=seed, fresh_noise=fresh_noise)

    def decode(self, latents: Any, sample: bool = False, seed: int | None = None, fresh_noise: bool = False) -> Columns:
        """mean, log_var of p(x | z) in raw data space (+ x drawn from it when sample)."""
        return self.call("decode", latents, sample=sample, seed=seed, fresh_noise=fresh_noise)

    def sample(
        self,
        n: int = 16,
        temperature: float = 1.0,
        seed: int | None = None,
        fresh_noise: bool = False,
        return_latents: bool = False,
        noise: bool = False,
    ) -> Columns:
        """samples: decoder means of z ~ N(0, temperature² I) (+ decoder noise when noise, + latents)."""
        params = {"n": n, "temperature": temperature, "seed": seed, "fresh_noise": fresh_noise}
        return self.call("sample", None, **params, return_latents=return_latents, noise=noise)

    def score(
        self,
        inputs: Any,
        importance_samples: int | None = None,
        seed: int | None = None,
        fresh_noise: bool = False,
        explain: bool = False,
        threshold_quantile: float | None = None,
    ) -> Columns:
        """elbo, reconstruction, kl, log_likelihood, anomaly_score, percentile, p_value, is_anomaly, threshold,
        importance_samples (+ feature_nll when explain): the columns of the API's score answer."""
        params = {"importance_samples": importance_samples, "seed": seed, "fresh_noise": fresh_noise}
        return self.call("score", inputs, **params, explain=explain, threshold_quantile=threshold_quantile)

    def call(self, op: str, rows: Any, **params: Any) -> Columns:
        """Any operation by name, with the API's parameters: validate, check the rows, plan, run, finish."""
        spec = OPERATIONS[op]
        if spec.rows is not None:
            params[spec.rows] = []  # the rows are checked below, with numpy
        try:
            request = REQUESTS[op].model_validate(params, strict=False)  # numpy integers are integers here
        except ValidationError as exc:
            raise InputError(describe(exc)) from None
        x = None
        if spec.rows is not None:
            arr = np.asarray(rows)
            if arr.dtype.kind not in "iuf":
                raise InputError(f"{spec.rows} must be numbers, got an array of dtype {arr.dtype}")
            x = check_rows(
                arr, spec.rows, self.operations.width(op), self.operations.limits.max_rows, self.operations.label
            )
        return self.run(self.operations.plan(op, x, request))

    def run(self, plan: Plan) -> Columns:
        """The plan's graph over its rows, in runs of at most one batch (the service's memory bound), then finished."""
        step = self.operations.limits.rows_per_run(plan.graph, plan.key)
        parts = [
            self.bundle.run(plan.graph, {n: np.ascontiguousarray(v[s : s + step]) for n, v in plan.feeds.items()})
            for s in range(0, plan.rows, step)
        ]
        outs: Outputs = parts[0] if len(parts) == 1 else {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}
        return plan.finish(outs)

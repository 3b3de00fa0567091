"""Operations: the semantics of a bundle's four operations, each turned into a Plan (one graph, its feeds, and how
its outputs become the answer's columns). Whoever runs the graph (the service's batchers, or LocalModel in this
process) runs the same plans, so every face of the product returns the same numbers.

Randomness is drawn here, on the host (never inside a graph), from the request's own seed: the seed it gives, else
a fixed default, or fresh entropy only when it asks for `fresh_noise`. Scoring follows contract/anomaly.py: every
row shares one (K, d) block of noise (common random numbers, seeded by the manifest's `noise_seed` by default), so
a row's score depends on the row alone, not on its position or its request; overflows are made the most extreme
finite value; percentile, p-value and threshold are the conformal ones of the manifest's reference. Sampling from
the Gaussians the graphs return (z = mean + L eps, x = mean + exp(log_var / 2) eps; a decorrelated bundle's decoder
draws x itself from the eps it is given), drawing latents from the manifest's prior (contract/prior.py) and these
finishing rules are the only arithmetic done outside the graphs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from pydantic import BaseModel

from contract import Manifest, anomaly
from contract.operations import OPERATIONS, values_per_row
from contract.prior import MixtureArrays, draw_latents
from contract.requests import SEED_AND_FRESH_NOISE, DecodeRequest, EncodeRequest, SampleRequest, ScoreRequest
from runtime.errors import InputError, LimitExceeded

Columns = dict[str, Any]
Outputs = dict[str, np.ndarray]  # a graph's outputs by name
F32 = np.float32
RECENT_NOISE_BLOCKS = 4  # default-seed noise blocks kept besides the manifest's K (Operations._default_noise)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how many rows (x K for the scorer) one graph run takes."""

    max_rows: int = 8192
    max_importance_samples: int = 1024
    max_draws: int = 1 << 20  # rows x samples (encode) or rows x importance_samples (score)
    batch_max_rows: int = 1024
    batch_max_draws: int = 16384  # rows x K of one scorer run: bounds its memory
    max_importance_samples_setting: str = "VAE_MAX_IMPORTANCE_SAMPLES"  # what sets it, for its error ("": fixed)

    def rows_per_run(self, graph: str, key: Hashable) -> int:
        if graph == "scorer":  # the scorer's key is K: a run evaluates the decoder rows x K times
            assert isinstance(key, int)
            return max(1, min(self.batch_max_rows, self.batch_max_draws // key))
        return self.batch_max_rows


@dataclass(frozen=True)
class Plan:
    graph: str
    key: Hashable  # runs of the same graph merge only with the same key (the scorer's K)
    feeds: dict[str, np.ndarray]  # rows on axis 0
    finish: Callable[[Outputs], Columns]  # the graph's outputs for every row -> the answer's columns

    @property
    def rows(self) -> int:
        return int(next(iter(self.feeds.values())).shape[0])


# the request parameters that add outputs to an answer (contract/operations.py: Output.when), and samples (K)
OPTIONAL_OUTPUTS = tuple(
    sorted({o.when for op in OPERATIONS.values() for o in op.outputs if o.when not in (None, "full")})
)


class AnswerSize(NamedTuple):
    rows: int
    per_row: int  # numbers per row
    scalars: int  # per-request numbers

    @property
    def values(self) -> int:
        return self.rows * self.per_row + self.scalars


def draw_seed(seed: int | None, fresh_noise: bool, default: int = anomaly.DEFAULT_NOISE_SEED) -> int | None:
    """The seed of a request's draws: its own, else the fixed default; None (fresh entropy) only when asked."""
    if fresh_noise and seed is not None:
        raise InputError(SEED_AND_FRESH_NOISE)
    return None if fresh_noise else default if seed is None else seed


def overflow_to_max(value: np.ndarray) -> np.ndarray:
    # a term bounded below (kl, feature_nll; kl is an estimate under a mixture prior and may be a little below 0)
    # that overflowed inside a graph (inf, or NaN from inf - inf) -> FLOAT32_MAX
    return np.where(np.isfinite(value), value, F32(anomaly.FLOAT32_MAX)).astype(F32)


def overflowed(z: np.ndarray, mean: np.ndarray, log_var: np.ndarray) -> None:
    """InputError naming the first row whose decoded Gaussian is not finite: latents far outside the prior (1e37,
    say) overflow the decoder's float32, and a NaN would reach a JSON answer as null. Checked on the answer rather
    than bounded in advance: where a decoder overflows depends on its weights."""
    bad = ~(np.isfinite(mean).all(1) & np.isfinite(log_var).all(1))
    if bad.any():
        row = int(np.argmax(bad))
        raise InputError(
            f"latents[{row}] (largest |value| {float(np.abs(z[row]).max()):.3g}) overflow the decoder: latents the "
            f"prior or the encoder gives lie within a few units of 0 ({int(bad.sum())} such rows)"
        )


def decoder_feeds(manifest: Manifest, z: np.ndarray, eps: np.ndarray | None) -> dict[str, np.ndarray]:
    """The decoder graph's feeds for latents z (B, d): a decorrelated bundle's decoder also takes the noise eps
    (B, D) of its draw x (zeros when no draw is asked for, eps None)."""
    if not manifest.preprocessing.decorrelate:
        return {"z": z}
    return {"z": z, "eps": np.zeros((len(z), manifest.input_dim), F32) if eps is None else eps}


def decoder_draw(outs: Outputs, eps: np.ndarray) -> np.ndarray:
    """x ~ p(x|z) from the decoder's outputs and standard normal eps (B, D): its own draw when it made one (a
    decorrelated bundle's, fed this eps), else x = mean + exp(log_var / 2) eps, feature by feature."""
    if "x" in outs:
        return outs["x"]
    drawn: np.ndarray = outs["mean"] + np.exp(0.5 * outs["log_var"]) * eps
    return drawn


class Operations:
    """The four operations of one bundle as plans; params are the validated request models of contract/requests."""

    def __init__(self, manifest: Manifest, limits: Limits) -> None:
        self.manifest, self.limits = manifest, limits
        self.input_dim, self.latent_dim = manifest.input_dim, manifest.latent_dim
        self.full = manifest.covariance == "full"
        self.label = f"{manifest.name!r} version {manifest.version}"  # names the model in error messages
        self.reference = manifest.anomaly.reference()  # ascending float64 (n,), ranked against by every score
        self.noise_seed = manifest.anomaly.noise_seed
        self.prior = MixtureArrays.of(manifest.prior)  # None: N(0, I)
        # K -> the read-only (K, d) block of noise_seed: the manifest's K always, plus the RECENT_NOISE_BLOCKS other K
        # asked for last (LRU, oldest first); an evicted block asked for again is redrawn equal (same seed). Worst
        # case 1 + 4 = 5 blocks of K x d float32, K up to max_importance_samples (1024 by default): 20 KiB per latent
        # dimension, 1.25 MiB at d = 64. Kept for every K a caller tried, it grew to 1024 x 1025 / 2 x 4 B = 2 MiB
        # per latent dimension (128 MiB at d = 64) per loaded version.
        self._per_row: dict[tuple[object, ...], int] = {}  # answer_size's memo
        self._default_noise: dict[int, np.ndarray] = {}
        self._noise_lock = threading.Lock()  # LocalModel may be shared by threads

    def width(self, op: str) -> int:
        return self.latent_dim if OPERATIONS[op].width == "latent_dim" else self.input_dim

    def answer_size(self, op: str, rows: int, params: BaseModel) -> AnswerSize:
        """How many numbers `op` answers for `rows` rows (sample: its n) with these parameters."""
        fields = params.__dict__  # the validated fields, without copying the rows
        # memoised per operation and the values of the parameters that add outputs (samples <= 1024: bounded)
        key = (op, *(fields.get(name) for name in OPTIONAL_OUTPUTS))
        per_row = self._per_row.get(key)
        if per_row is None:
            per_row = self._per_row[key] = values_per_row(op, fields, self.input_dim, self.latent_dim, self.full)
        n = int(fields.get("n", 0)) if OPERATIONS[op].rows is None else rows
        return AnswerSize(n, per_row, len(OPERATIONS[op].scalars))

    def plan(self, op: str, rows: np.ndarray | None, params: BaseModel) -> Plan:
        """rows: (n, width) float32, already checked (runtime/rows.py); None for sample."""
        if isinstance(params, EncodeRequest) and rows is not None:
            return self.encode(rows, params)
        if isinstance(params, DecodeRequest) and rows is not None:
            return self.decode(rows, params)
        if isinstance(params, SampleRequest):
            return self.sample(params)
        if isinstance(params, ScoreRequest) and rows is not None:
            return self.score(rows, params)
        raise InputError(f"{op} got {type(params).__name__} parameters and {'no ' if rows is None else ''}rows")

    def encode(self, x: np.ndarray, p: EncodeRequest) -> Plan:
        if p.samples > 0:
            self._check_draws(len(x), p.samples, "samples")

        def finish(outs: Outputs) -> Columns:
            mean, log_var = outs["mean"], outs["log_var"]
            result: Columns = {"mean": mean, "log_var": log_var}
            if self.full:
                result["scale_tril"] = outs["scale_tril"]
            if p.samples > 0:
                rng = np.random.default_rng(draw_seed(p.seed, p.fresh_noise))
                eps = rng.standard_normal((len(x), p.samples, self.latent_dim), dtype=F32)  # (B, K, d)
                if self.full:  # z_k = mean + L eps_k
                    result["z"] = mean[:, None, :] + eps @ np.swapaxes(outs["scale_tril"], 1, 2)
                else:
                    result["z"] = mean[:, None, :] + np.exp(0.5 * log_var)[:, None, :] * eps
            return result

        return Plan("encoder", None, {"x": x}, finish)

    def decode(self, z: np.ndarray, p: DecodeRequest) -> Plan:
        eps = None
        if p.sample:  # drawn before the run: a decorrelated bundle's decoder takes it
            rng = np.random.default_rng(draw_seed(p.seed, p.fresh_noise))
            eps = rng.standard_normal((len(z), self.input_dim), dtype=F32)

        def finish(outs: Outputs) -> Columns:
            mean, log_var = outs["mean"], outs["log_var"]
            overflowed(z, mean, log_var)
            result: Columns = {"mean": mean, "log_var": log_var}
            if eps is not None:
                result["x"] = decoder_draw(outs, eps)
            return result

        return Plan("decoder", None, decoder_feeds(self.manifest, z, eps), finish)

    def sample(self, p: SampleRequest) -> Plan:
        if p.n > self.limits.max_rows:
            raise LimitExceeded(f"n={p.n} is over the limit of {self.limits.max_rows} rows (VAE_MAX_ROWS)")
        rng = np.random.default_rng(draw_seed(p.seed, p.fresh_noise))
        z = draw_latents(self.prior, p.n, self.latent_dim, p.temperature, rng)  # (n, d) from the prior
        eps = rng.standard_normal((p.n, self.input_dim), dtype=F32) if p.noise else None

        def finish(outs: Outputs) -> Columns:
            samples = outs["mean"] if eps is None else decoder_draw(outs, eps)
            return {"samples": samples, "latents": z} if p.return_latents else {"samples": samples}

        return Plan("decoder", None, decoder_feeds(self.manifest, z, eps), finish)

    def score(self, x: np.ndarray, p: ScoreRequest) -> Plan:
        ref = self.manifest.anomaly
        k = ref.importance_samples if p.importance_samples is None else p.importance_samples
        if k > self.limits.max_importance_samples:
            setting = self.limits.max_importance_samples_setting
            raise InputError(
                f"importance_samples={k} is above the limit {self.limits.max_importance_samples}"
                + (f" ({setting})" if setting else "")
            )
        self._check_draws(len(x), k, "importance_samples")
        block = self._score_noise(k, p.seed, p.fresh_noise)  # (K, d), shared by every row
        eps = np.broadcast_to(block, (len(x), k, self.latent_dim))  # (K, d) -> (B, K, d), a view
        threshold = (
            ref.threshold
            if p.threshold_quantile is None
            else anomaly.threshold_at(self.reference, p.threshold_quantile)
        )

        def finish(outs: Outputs) -> Columns:
            score = anomaly.finite_scores(-outs["elbo"])  # (B,) float64; an overflow is FLOAT32_MAX
            result: Columns = {
                # float32 throughout (the V2 datatypes): the clamps are float32 values, so the casts are exact
                "elbo": anomaly.finite_log_densities(outs["elbo"]).astype(F32),  # = -anomaly_score
                "reconstruction": anomaly.finite_log_densities(outs["reconstruction"]).astype(F32),
                "kl": overflow_to_max(outs["kl"]),
                "log_likelihood": anomaly.finite_log_densities(outs["log_likelihood"]).astype(F32),
                "anomaly_score": score.astype(F32),
                "percentile": anomaly.percentiles(self.reference, score),
                "p_value": anomaly.p_values(self.reference, score),
                "is_anomaly": score > threshold,
                "threshold": threshold,
                "importance_samples": k,
            }
            if p.explain:
                result["feature_nll"] = overflow_to_max(outs["feature_nll"])
            return result

        return Plan("scorer", k, {"x": x, "eps": eps}, finish)

    def _check_draws(self, rows: int, per_row: int, field: str) -> None:
        # rows x K noise draws (and decoder evaluations) bound the time of one request and the size of its answer
        if rows * per_row > self.limits.max_draws:
            raise LimitExceeded(
                f"{rows} rows x {field}={per_row} is {rows * per_row} draws; the limit is "
                f"{self.limits.max_draws} (VAE_MAX_DRAWS)"
            )

    def _score_noise(self, k: int, seed: int | None, fresh_noise: bool) -> np.ndarray:
        # the (K, d) block every row of the request shares; default-seed ones are kept read-only (see _default_noise)
        seed = draw_seed(seed, fresh_noise, self.noise_seed)
        if seed != self.noise_seed:
            return anomaly.score_noise(k, self.latent_dim, seed)
        kept, pinned = self._default_noise, self.manifest.anomaly.importance_samples
        with self._noise_lock:
            if (block := kept.pop(k, None)) is None:
                block = anomaly.score_noise(k, self.latent_dim, seed)
                block.setflags(write=False)
            kept[k] = block  # (re)inserted last: the most recently used
            recent = [key for key in kept if key != pinned]  # oldest first
            for key in recent[: max(0, len(recent) - RECENT_NOISE_BLOCKS)]:
                del kept[key]
        return block

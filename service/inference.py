"""ModelRunner: one loaded model, its batchers (one per graph), and the four operations of the API.

Randomness is drawn here, on the host (never inside a graph), from the request's own seed: the seed it gives, else
a fixed default, or fresh entropy only when it asks for `fresh_noise`. So a request's numbers never depend on what
it was batched with, and the same request returns the same numbers. Scoring follows contract/anomaly.py: every row
shares one (K, d) block of noise (common random numbers, seeded by the manifest's `noise_seed` by default), so a
row's score depends on the row alone, not on its position or its request; overflows are made the most extreme
finite value; percentile, p-value and threshold are the conformal ones of the manifest's reference. Sampling from
the Gaussians the graphs return (z = mean + L eps, x = mean + exp(log_var / 2) eps) and these finishing rules are
the only arithmetic done outside the graphs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import numpy as np

from contract import anomaly
from service.batcher import DynamicBatcher
from service.errors import ClientGone, InvalidInput, PayloadTooLarge
from service.metrics import Metrics
from service.registry import GRAPHS, LoadedModel
from service.schemas import SEED_AND_FRESH_NOISE
from service.settings import ServiceSettings

Columns = dict[str, Any]
Alive = Callable[[], Awaitable[bool]]  # False once the request's client has gone away
F32 = np.float32


def draw_seed(seed: int | None, fresh_noise: bool, default: int = anomaly.DEFAULT_NOISE_SEED) -> int | None:
    """The seed of a request's draws: its own, else the fixed default; None (fresh entropy) only when asked."""
    if fresh_noise and seed is not None:
        raise InvalidInput(SEED_AND_FRESH_NOISE)
    return None if fresh_noise else default if seed is None else seed


def overflow_to_max(value: np.ndarray) -> np.ndarray:
    # a non-negative term (kl, feature_nll) that overflowed inside a graph (inf, or NaN from inf - inf) -> FLOAT32_MAX
    return np.where(np.isfinite(value), value, F32(anomaly.FLOAT32_MAX)).astype(F32)


def bucket_rows(rows: int, max_rows: int) -> int:
    # Pad a batch to the next power of two (up to the batch's row limit), so onnxruntime sees a handful of shapes
    # and its memory arena stops growing; a batch at or above the limit runs at its own size.
    if rows >= max_rows:
        return rows
    return min(max_rows, 1 << (rows - 1).bit_length())


class ModelRunner:
    def __init__(self, model: LoadedModel, settings: ServiceSettings, metrics: Metrics) -> None:
        self.model = model
        self.settings = settings
        m = model.manifest
        self.input_dim, self.latent_dim = m.input_dim, m.latent_dim
        self.full = m.covariance == "full"
        self.label = f"{m.name!r} version {m.version}"  # names the model that answered, in error messages
        self.reference = m.anomaly.reference()  # ascending float64 (n,), ranked against by every score request
        self.noise_seed = m.anomaly.noise_seed
        self._default_noise: dict[int, np.ndarray] = {}  # K -> the (K, d) block of noise_seed, drawn once
        self.batchers = {graph: self._batcher(graph, metrics) for graph in GRAPHS}
        self._users = 0  # requests holding this runner (see acquire/release)
        self._retired = False
        self._stopping: asyncio.Task[None] | None = None

    def _batcher(self, graph: str, metrics: Metrics) -> DynamicBatcher:
        model, settings, name = self.model, self.settings, self.model.name

        def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            return model.run(graph, feeds)

        def on_flush(rows: int, waited_s: float) -> None:
            metrics.batch_rows.labels(name, graph).observe(rows)
            metrics.batch_wait.labels(name, graph).observe(waited_s)

        return DynamicBatcher(
            run,
            max_rows=settings.batch_max_rows,
            max_delay_s=settings.batch_max_delay_ms / 1000.0,
            max_queued_rows=settings.queue_max_rows,
            timeout_s=settings.request_timeout_s,
            bucket=bucket_rows,
            # the scorer's key is K: a batch of its rows evaluates the decoder rows x K times
            max_rows_for=self._scorer_rows if graph == "scorer" else None,
            on_flush=on_flush,
            on_queue_change=metrics.queue_rows.labels(name, graph).set,
        )

    def _scorer_rows(self, k: Hashable) -> int:
        assert isinstance(k, int)
        return max(1, min(self.settings.batch_max_rows, self.settings.batch_max_draws // k))

    async def _chunked(
        self, graph: str, key: Hashable, feeds: dict[str, np.ndarray], alive: Alive | None
    ) -> list[np.ndarray]:
        """One request's rows through a batcher in chunks of at most one batch, one chunk after the other.

        Why: the memory of a run grows with its rows (times K for the scorer), so a chunk bounds it whatever the
        request's size; requests that arrive meanwhile queue between two chunks instead of behind the whole
        request; and a request whose deadline passed or whose client went away stops at the next chunk.
        """
        batcher = self.batchers[graph]
        rows = next(iter(feeds.values())).shape[0]
        step = batcher.max_rows(key)
        if rows <= step:
            return await batcher.submit(key, feeds)
        deadline = asyncio.get_running_loop().time() + self.settings.request_timeout_s  # for the whole request
        parts: list[list[np.ndarray]] = []
        for start in range(0, rows, step):
            if start and alive is not None and not await alive():
                raise ClientGone(f"the client went away; stopped after {start} of {rows} rows")
            chunk = {name: value[start : start + step] for name, value in feeds.items()}
            parts.append(await batcher.submit(key, chunk, deadline))
        return [np.concatenate(columns) for columns in zip(*parts, strict=True)]

    def start(self) -> None:
        for b in self.batchers.values():
            b.start()

    async def stop(self) -> None:
        for b in self.batchers.values():
            await b.stop()

    def acquire(self) -> None:
        self._users += 1

    def release(self) -> None:
        self._users -= 1
        self._stop_if_idle()

    def retire(self) -> None:
        """No new requests will be routed here: stop the batchers once the last request holding it is done."""
        self._retired = True
        self._stop_if_idle()

    def _stop_if_idle(self) -> None:
        if self._retired and self._users == 0 and self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self.stop())

    async def wait_stopped(self) -> None:
        if self._stopping is not None:
            await self._stopping

    async def encode(
        self, x: np.ndarray, samples: int, seed: int | None, fresh_noise: bool = False, alive: Alive | None = None
    ) -> Columns:
        if samples > 0:
            self._check_draws(len(x), samples, "samples")
        outs = await self._chunked("encoder", None, {"x": x}, alive)
        mean, log_var = outs[0], outs[1]
        result: Columns = {"mean": mean, "log_var": log_var}
        if self.full:
            result["scale_tril"] = outs[2]
        if samples > 0:
            rng = np.random.default_rng(draw_seed(seed, fresh_noise))
            eps = rng.standard_normal((len(x), samples, self.latent_dim), dtype=F32)  # (B, K, d)
            if self.full:
                result["z"] = mean[:, None, :] + eps @ np.swapaxes(outs[2], 1, 2)  # z_k = mean + L eps_k
            else:
                result["z"] = mean[:, None, :] + np.exp(0.5 * log_var)[:, None, :] * eps
        return result

    def _check_draws(self, rows: int, per_row: int, field: str) -> None:
        # rows x K noise draws (and decoder evaluations) bound the memory and time of one request
        if rows * per_row > self.settings.max_draws:
            raise PayloadTooLarge(
                f"{rows} rows x {field}={per_row} is {rows * per_row} draws; the limit is "
                f"{self.settings.max_draws} (VAE_MAX_DRAWS)"
            )

    async def decode(
        self, z: np.ndarray, sample: bool, seed: int | None, fresh_noise: bool = False, alive: Alive | None = None
    ) -> Columns:
        mean, log_var = await self._chunked("decoder", None, {"z": z}, alive)
        result: Columns = {"mean": mean, "log_var": log_var}
        if sample:
            eps = np.random.default_rng(draw_seed(seed, fresh_noise)).standard_normal(mean.shape, dtype=F32)
            result["x"] = mean + np.exp(0.5 * log_var) * eps
        return result

    async def sample(
        self,
        n: int,
        temperature: float,
        seed: int | None,
        latents: bool,
        noise: bool,
        fresh_noise: bool = False,
        alive: Alive | None = None,
    ) -> Columns:
        rng = np.random.default_rng(draw_seed(seed, fresh_noise))
        z = (temperature * rng.standard_normal((n, self.latent_dim), dtype=F32)).astype(F32)
        mean, log_var = await self._chunked("decoder", None, {"z": z}, alive)
        samples = mean + np.exp(0.5 * log_var) * rng.standard_normal(mean.shape, dtype=F32) if noise else mean
        return {"samples": samples, "latents": z} if latents else {"samples": samples}

    async def score(
        self,
        x: np.ndarray,
        k: int | None,
        seed: int | None,
        explain: bool,
        quantile: float | None,
        fresh_noise: bool = False,
        alive: Alive | None = None,
    ) -> Columns:
        ref = self.model.manifest.anomaly
        k = ref.importance_samples if k is None else k
        if k > self.settings.max_importance_samples:
            raise InvalidInput(
                f"importance_samples={k} is above the limit {self.settings.max_importance_samples} "
                "(VAE_MAX_IMPORTANCE_SAMPLES)"
            )
        self._check_draws(len(x), k, "importance_samples")
        block = self._score_noise(k, seed, fresh_noise)  # (K, d), shared by every row
        eps = np.broadcast_to(block, (len(x), k, self.latent_dim))  # (K, d) -> (B, K, d); the batcher copies it
        elbo, reconstruction, kl, log_lik, feature_nll = await self._chunked("scorer", k, {"x": x, "eps": eps}, alive)
        score = anomaly.finite_scores(-elbo)  # (B,) float64; an overflow is FLOAT32_MAX
        threshold = ref.threshold if quantile is None else anomaly.threshold_at(self.reference, quantile)
        result: Columns = {
            # float32 throughout (the V2 datatypes): the clamps are float32 values, so the casts are exact
            "elbo": anomaly.finite_log_densities(elbo).astype(F32),  # = -anomaly_score, overflow included
            "reconstruction": anomaly.finite_log_densities(reconstruction).astype(F32),
            "kl": overflow_to_max(kl),
            "log_likelihood": anomaly.finite_log_densities(log_lik).astype(F32),
            "anomaly_score": score.astype(F32),
            "percentile": anomaly.percentiles(self.reference, score),
            "p_value": anomaly.p_values(self.reference, score),
            "is_anomaly": score > threshold,
            "threshold": threshold,
            "importance_samples": k,
        }
        if explain:
            result["feature_nll"] = overflow_to_max(feature_nll)
        return result

    def _score_noise(self, k: int, seed: int | None, fresh_noise: bool) -> np.ndarray:
        # the (K, d) block every row of the request shares; the default one is drawn once per K and kept read-only
        seed = draw_seed(seed, fresh_noise, self.noise_seed)
        if seed != self.noise_seed:
            return anomaly.score_noise(k, self.latent_dim, seed)
        if (block := self._default_noise.get(k)) is None:
            block = self._default_noise[k] = anomaly.score_noise(k, self.latent_dim, seed)
            block.setflags(write=False)
        return block

"""ModelRunner: one loaded model, its batchers (one per graph), and the four operations of the API.

Randomness is drawn here, on the host, from each request's own seed (never inside a graph, never shared with
batch-mates), so a request's numbers do not depend on what it was batched with. Sampling from the Gaussians the
graphs return (z = mean + L eps, x = mean + exp(log_var / 2) eps) is the only arithmetic done outside the graphs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

from service.batcher import DynamicBatcher
from service.errors import InvalidInput, PayloadTooLarge
from service.metrics import Metrics
from service.registry import GRAPHS, LoadedModel
from service.settings import ServiceSettings

Columns = dict[str, Any]


def bucket_rows(max_rows: int) -> Callable[[int], int]:
    # Pad a batch to the next power of two (up to max_rows), so onnxruntime sees a handful of shapes and its
    # memory arena stops growing; batches larger than max_rows (one big request) run at their own size.
    def bucket(rows: int) -> int:
        if rows >= max_rows:
            return rows
        return min(max_rows, 1 << (rows - 1).bit_length())

    return bucket


class ModelRunner:
    def __init__(self, model: LoadedModel, settings: ServiceSettings, metrics: Metrics) -> None:
        self.model = model
        self.settings = settings
        m = model.manifest
        self.input_dim, self.latent_dim = m.input_dim, m.latent_dim
        self.full = m.covariance == "full"
        self.reference = np.asarray(m.anomaly.sample, dtype=np.float64)
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
            bucket=bucket_rows(settings.batch_max_rows),
            on_flush=on_flush,
            on_queue_change=metrics.queue_rows.labels(name, graph).set,
        )

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

    async def encode(self, x: np.ndarray, samples: int, seed: int | None) -> Columns:
        outs = await self.batchers["encoder"].submit(None, {"x": x})
        mean, log_var = outs[0], outs[1]
        result: Columns = {"mean": mean, "log_var": log_var}
        if self.full:
            result["scale_tril"] = outs[2]
        if samples > 0:
            self._check_draws(len(x), samples, "samples")
            eps = np.random.default_rng(seed).standard_normal((len(x), samples, self.latent_dim), dtype=np.float32)
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

    async def decode(self, z: np.ndarray, sample: bool, seed: int | None) -> Columns:
        mean, log_var = await self.batchers["decoder"].submit(None, {"z": z})
        result: Columns = {"mean": mean, "log_var": log_var}
        if sample:
            eps = np.random.default_rng(seed).standard_normal(mean.shape, dtype=np.float32)
            result["x"] = mean + np.exp(0.5 * log_var) * eps
        return result

    async def sample(self, n: int, temperature: float, seed: int | None, latents: bool, noise: bool) -> Columns:
        rng = np.random.default_rng(seed)
        z = (temperature * rng.standard_normal((n, self.latent_dim), dtype=np.float32)).astype(np.float32)
        mean, log_var = await self.batchers["decoder"].submit(None, {"z": z})
        samples = mean + np.exp(0.5 * log_var) * rng.standard_normal(mean.shape, dtype=np.float32) if noise else mean
        return {"samples": samples, "latents": z} if latents else {"samples": samples}

    async def score(
        self, x: np.ndarray, k: int | None, seed: int | None, explain: bool, quantile: float | None
    ) -> Columns:
        ref = self.model.manifest.anomaly
        k = ref.importance_samples if k is None else k
        if k > self.settings.max_importance_samples:
            raise InvalidInput(
                f"importance_samples={k} is above the limit {self.settings.max_importance_samples} "
                "(VAE_MAX_IMPORTANCE_SAMPLES)"
            )
        self._check_draws(len(x), k, "importance_samples")
        eps = np.random.default_rng(seed).standard_normal((len(x), k, self.latent_dim), dtype=np.float32)
        elbo, reconstruction, kl, log_lik, feature_nll = await self.batchers["scorer"].submit(k, {"x": x, "eps": eps})
        score = -elbo
        threshold = ref.threshold if quantile is None else float(np.quantile(self.reference, quantile))
        result: Columns = {
            "elbo": elbo,
            "reconstruction": reconstruction,
            "kl": kl,
            "log_likelihood": log_lik,
            "anomaly_score": score,
            # share of the validation reference scoring at or below this row, in percent
            "percentile": 100.0 * np.searchsorted(self.reference, score, side="right") / len(self.reference),
            "is_anomaly": score > threshold,
            "threshold": threshold,
            "importance_samples": k,
        }
        if explain:
            result["feature_nll"] = feature_nll
        return result

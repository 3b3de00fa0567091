"""Every Prometheus collector of the service, defined once, on a registry owned by the app (not the global one)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "vae_requests", "HTTP requests by endpoint, model and status", ["endpoint", "model", "status"], registry=r
        )
        self.latency = Histogram(
            "vae_request_seconds", "request latency", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_rows = Histogram(
            "vae_batch_rows", "rows per onnxruntime run", ["model", "graph"], buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_wait = Histogram(
            "vae_batch_wait_seconds",
            "wait of a batch's oldest request",
            ["model", "graph"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_rows = Gauge("vae_queue_rows", "rows waiting for a batch", ["model", "graph"], registry=r)
        self.model_info = Gauge(
            "vae_model_info", "loaded models (value 1)", ["model", "version", "covariance", "provider"], registry=r
        )
        self.refused = Gauge("vae_bundles_refused", "bundles that failed verification at start-up", registry=r)

"""Every Prometheus collector of the service, defined once, on a registry owned by the app (not the global one).

With several uvicorn workers, vae-serve sets PROMETHEUS_MULTIPROC_DIR before they start: each worker then writes
its values to files there (prometheus_client's multiprocess mode, chosen when it is imported) and /metrics, in
whichever worker answers, reports the sum over all of them. Gauges say how they combine: rows waiting add up over
the live workers; a model's info and the refused count are the same in each, so the largest is reported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.registry import Collector

from service.peers import process_alive
from service.settings import MULTIPROC_DIR

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def shared_dir() -> str | None:
    """The folder the workers' values are written to, when several workers share /metrics."""
    return os.environ.get(MULTIPROC_DIR) or None


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    # collectors that add up the workers themselves (service/monitoring.py), asked at every exposition
    computed: list[Collector] = field(default_factory=list)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "vae_requests",
            "requests by endpoint (an HTTP path, or grpc:<Method>), model and status (HTTP, or a gRPC code)",
            ["endpoint", "model", "status"],
            registry=r,
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
        self.queue_rows = Gauge(
            "vae_queue_rows",
            "rows left waiting when a batch was last formed (summed over the workers)",
            ["model", "graph"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_info = Gauge(
            "vae_model_info",
            "loaded models (value 1)",
            ["model", "version", "covariance", "provider"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.refused = Gauge(
            "vae_bundles_refused",
            "bundle versions refused (failed verification at start-up, on a poll or a load request) and not yet "
            "verified since or deleted",
            registry=r,
            multiprocess_mode="livemax",
        )

    def exposition(self) -> bytes:
        """The text /metrics answers: this process's registry, or every worker's values when they share a folder."""
        if shared_dir() is None:
            return generate_latest(self.registry)
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
        for collector in self.computed:
            combined.register(collector)
        return generate_latest(combined)

    def add_computed(self, collector: Collector) -> None:
        """A collector that adds up the workers' values itself: asked at every exposition, in either mode."""
        self.computed.append(collector)
        if shared_dir() is None:
            self.registry.register(collector)

    def model_retired(self, *labels: str) -> None:
        """A model version stopped serving: its info series goes (multiprocess mode cannot remove a series, so
        there it stays at 0)."""
        if shared_dir() is None:
            self.model_info.remove(*labels)
        else:
            self.model_info.labels(*labels).set(0)

    @staticmethod
    def worker_started() -> None:
        """Forget the live gauges of workers that died without saying so (uvicorn restarts a crashed worker)."""
        if (path := shared_dir()) is None:
            return
        for name in os.listdir(path):
            if name.startswith("gauge_live") and name.endswith(".db"):
                pid = int(name.rsplit("_", 1)[1].removesuffix(".db"))
                if not process_alive(pid):
                    multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]

    @staticmethod
    def worker_stopped() -> None:
        """This worker's live gauges leave the sums."""
        if (path := shared_dir()) is not None:
            multiprocess.mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]

"""Prometheus helpers: a registry per app and HTTP request metrics.

Names follow ``tuneloop_<service>_<what>_<unit>``; labels stay low-cardinality (the route
template, never the raw path).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["ServiceMetrics", "CONTENT_TYPE_LATEST", "generate_latest"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServiceMetrics:
    """Holds one service's registry; services add their own metrics via :meth:`counter` etc."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.prefix = f"tuneloop_{service}"
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            f"{self.prefix}_http_requests_total",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            f"{self.prefix}_http_request_duration_seconds",
            "HTTP request latency by route and method (to response start).",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def name(self, what: str) -> str:
        return f"{self.prefix}_{what}"

    def render(self) -> bytes:
        """This process's metrics; under a supervisor (``PROMETHEUS_MULTIPROC_DIR``: several
        workers behind one port) the sum over every worker, whichever one is scraped."""
        path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not path:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
        return generate_latest(registry)

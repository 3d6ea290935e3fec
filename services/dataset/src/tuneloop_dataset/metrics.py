"""The dataset service's Prometheus metrics (prefix ``tuneloop_dataset_``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from tuneloop.metrics import ServiceMetrics


class DatasetMetrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__("dataset")
        r = self.registry
        self.uploads = Counter(self.name("uploads_total"),
                               "Uploads by result (created, existing, rejected, error).",
                               ["result"], registry=r)
        self.rows_validated = Counter(self.name("rows_validated_total"),
                                      "Rows validated, by result (valid, invalid).", ["result"],
                                      registry=r)
        self.validation_seconds = Histogram(
            self.name("validation_seconds"), "Time of the streaming validation pass per file.",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300), registry=r)
        self.datasets_stored = Gauge(self.name("datasets_stored"), "Dataset versions stored.",
                                     registry=r)
        self.synth_requests = Counter(self.name("synthetic_requests_total"),
                                      "Teacher requests of synthetic-data jobs, by result.",
                                      ["result"], registry=r)
        self.synth_rows = Counter(self.name("synthetic_rows_total"),
                                  "Generated rows by outcome (kept, duplicate, invalid).",
                                  ["outcome"], registry=r)

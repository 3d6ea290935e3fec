"""Inference metrics (prefix ``tuneloop_inference_``) on the app's registry.

Labels stay low-cardinality: ``model`` is the name the client asked for (an alias such as
``production``, or a served version id, both bounded by what is deployed: requests for unknown names are rejected before
they are counted here, and appear only in the HTTP metrics), ``version`` is the served version
that answered.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from tuneloop.metrics import LATENCY_BUCKETS, ServiceMetrics

SWAP_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class InferenceMetrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__("inference")
        r = self.registry
        self.requests = Counter(self.name("requests_total"),
                                "Proxied OpenAI requests by requested model (alias or version), "
                                "served version, endpoint and status.",
                                ["model", "version", "endpoint", "status"], registry=r)
        self.in_flight = Gauge(self.name("requests_in_flight"),
                               "Requests being proxied right now.", registry=r)
        self.ttft = Histogram(self.name("time_to_first_token_seconds"),
                              "Time to the first streamed chunk from the engine.",
                              ["model", "version"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.latency = Histogram(self.name("request_duration_seconds"),
                                 "Total proxied request latency (to the last byte).",
                                 ["model", "version", "stream"], buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.tokens = Counter(self.name("generated_tokens_total"),
                              "Completion tokens generated (from the engine's usage).",
                              ["model", "version"], registry=r)
        self.prompt_tokens = Counter(self.name("prompt_tokens_total"),
                                     "Prompt tokens processed (from the engine's usage).",
                                     ["model", "version"], registry=r)
        self.swaps = Counter(self.name("swaps_total"), "Alias flips by alias, action and result.",
                             ["alias", "action", "result"], registry=r)
        self.swap_duration = Histogram(self.name("swap_duration_seconds"),
                                       "Alias flip duration: new engine load + smoke + flip + "
                                       "drain/stop of the old one.", ["alias"],
                                       buckets=SWAP_BUCKETS, registry=r)
        self.engine_restarts = Counter(self.name("engine_restarts_total"),
                                       "Engines restarted after a crash or failed health checks.",
                                       ["deployment"], registry=r)
        self.engines_ready = Gauge(self.name("engines_ready"), "Engines ready on this replica.",
                                   registry=r)
        self.engine_load = Histogram(self.name("engine_load_seconds"),
                                     "Engine start to passed smoke check.", ["engine"],
                                     buckets=SWAP_BUCKETS, registry=r)

"""Gateway Prometheus metrics (prefix ``tuneloop_gateway_``), low-cardinality labels only."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from tuneloop.metrics import LATENCY_BUCKETS, ServiceMetrics


class GatewayMetrics:
    def __init__(self, base: ServiceMetrics) -> None:
        reg, name = base.registry, base.name
        self.upstream_requests = Counter(
            name("upstream_requests_total"), "Proxied requests by upstream service and status.",
            ["upstream", "status"], registry=reg)
        self.upstream_latency = Histogram(
            name("upstream_latency_seconds"), "Upstream time to response headers.",
            ["upstream"], buckets=LATENCY_BUCKETS, registry=reg)
        self.upstream_errors = Counter(
            name("upstream_errors_total"), "Upstream failures by kind (unavailable, timeout...).",
            ["upstream", "kind"], registry=reg)
        self.auth_failures = Counter(
            name("auth_failures_total"), "Rejected requests by reason (missing, invalid, scope).",
            ["reason"], registry=reg)
        self.rate_limited = Counter(
            name("rate_limited_total"), "Requests refused by the per-key rate limit.",
            registry=reg)
        self.eval_runs = Counter(
            name("eval_runs_total"), "Evaluation runs by final status.", ["status"], registry=reg)
        self.eval_generations = Counter(
            name("eval_generations_total"), "Generations made by eval runs, by outcome.",
            ["outcome"], registry=reg)
        self.promotions = Counter(
            name("promotion_decisions_total"), "Promotion decisions by kind and status.",
            ["kind", "status"], registry=reg)
        self.captures = Counter(
            name("captures_total"), "Captured generations by outcome (recorded, skipped: an "
            "error answer, dropped: queue full, failed: parse or write error, expired: removed "
            "by retention).", ["outcome"], registry=reg)
        self.canary_requests = Counter(
            name("canary_requests_total"), "Requests to an alias under a canary, by arm (stable, "
            "candidate, shadow) and outcome (ok, error, fallback: the candidate failed and the "
            "stable model answered instead).", ["arm", "outcome"], registry=reg)
        self.canary_latency = Histogram(
            name("canary_latency_seconds"), "Latency of requests to an alias under a canary by "
            "arm (to the whole answer; to the response headers when streamed).", ["arm"],
            buckets=LATENCY_BUCKETS, registry=reg)
        self.canary_decisions = Counter(
            name("canary_decisions_total"), "Canaries ended, by how (promoted, rolled_back by a "
            "limit or by hand, stopped) and reason.", ["status", "reason"], registry=reg)
        self.key_tokens = Counter(
            name("key_tokens_total"), "Tokens metered per API key (from the answers' usage; a "
            "stream is sent upstream asking for its usage; the client gets it only if it asked).",
            ["key_id", "kind"], registry=reg)
        self.key_requests = Counter(
            name("key_requests_total"), "Generations answered per API key (any status).",
            ["key_id"], registry=reg)
        self.feedback = Counter(
            name("feedback_total"), "Feedback on captured answers by rating.", ["rating"],
            registry=reg)

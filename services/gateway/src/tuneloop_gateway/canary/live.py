"""A running canary as the request path sees it: each arm's live counts, and the limit check
that rolls it back (:func:`breach`)."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import Response

from ..db import Canary

CANARY_SYNC_S = 2.0
FALLBACK_STATUS = {404, 429}  # the candidate is gone or full: the stable model answers
SHADOW_IN_FLIGHT = 8  # mirrored requests at once per process; more are skipped and counted
LATENCY_WINDOW = 1000

Send = Callable[[bytes], Awaitable[Response]]


@dataclass
class Arm:
    """One arm's live counts: requests, errors, fallbacks and the last latencies."""

    requests: int = 0
    errors: int = 0
    fallbacks: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def add(self, ok: bool, latency: float | None) -> None:
        self.requests += 1
        self.errors += 0 if ok else 1
        if ok and latency is not None:
            self.latencies.append(latency)

    def p(self, q: float) -> float | None:
        if not self.latencies:
            return None
        xs = sorted(self.latencies)
        return round(xs[min(len(xs) - 1, int(q * len(xs)))], 4)

    def summary(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "fallbacks": self.fallbacks,
                "error_rate": round(self.errors / self.requests, 4) if self.requests else None,
                "latency_p50_s": self.p(0.5), "latency_p95_s": self.p(0.95),
                "latency_samples": len(self.latencies)}

    @classmethod
    def restore(cls, saved: dict[str, Any] | None) -> "Arm":
        saved = saved or {}
        return cls(int(saved.get("requests") or 0), int(saved.get("errors") or 0),
                   int(saved.get("fallbacks") or 0))


@dataclass
class Live:
    """A running canary as the request path sees it."""

    id: str
    alias: str
    stable: str
    candidate: str
    mode: str
    weight: float
    limits: dict[str, Any]
    arms: dict[str, Arm]
    rng: random.Random = field(default_factory=random.Random)
    dirty: bool = False

    @property
    def candidate_arm(self) -> str:
        return "shadow" if self.mode == "shadow" else "candidate"


def breach(live: Live) -> str | None:
    """The limit the candidate crossed, if any (after ``min_requests`` of its own)."""
    lim, cand, stable = live.limits, live.arms[live.candidate_arm], live.arms["stable"]
    if cand.requests < lim["min_requests"]:
        return None
    rate = cand.errors / cand.requests
    if rate > lim["max_error_rate"]:
        return (f"error rate {rate:.3f} over {cand.requests} requests > limit "
                f"{lim['max_error_rate']}")
    p95 = cand.p(0.95)
    if p95 is None:
        return None
    if lim.get("max_p95_latency_s") is not None and p95 > lim["max_p95_latency_s"]:
        return f"p95 latency {p95:.3f}s > limit {lim['max_p95_latency_s']}s"
    ratio = lim.get("max_latency_ratio")
    base = stable.p(0.95)
    if ratio is not None and base and len(stable.latencies) >= lim["min_requests"] \
            and p95 > ratio * base:
        return f"p95 latency {p95:.3f}s > {ratio} x the stable model's {base:.3f}s"
    return None


def alias_gone(row: Canary | None, live: Live) -> bool:
    return row is None or row.id != live.id

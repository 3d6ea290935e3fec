"""The canary's decisions on a real database, without processes: the weighted share, the
fallback that keeps a failing candidate's requests answered (zero failed requests), the
automatic rollback on the error rate and on latency, and per-key token metering. The same
paths with real services and the OpenAI SDK: tests/test_flywheel.py."""

from __future__ import annotations

import asyncio
import json
import random
import time
from types import SimpleNamespace

from fastapi.responses import Response, StreamingResponse

from tuneloop.db import Database
from tuneloop.errors import ServiceUnavailable
from tuneloop.ids import new_id
from tuneloop.metrics import ServiceMetrics
from tuneloop_gateway.app import MIGRATIONS
from tuneloop_gateway.auth import KeyStore
from tuneloop_gateway.canary import Arm, CanaryService, Live, breach
from tuneloop_gateway.db import Canary
from tuneloop_gateway.metrics import GatewayMetrics
from tuneloop_gateway.routing import meter, without_added_usage

LIMITS = {"max_error_rate": 0.2, "max_latency_ratio": 2.0, "max_p95_latency_s": None,
          "min_requests": 10}


def _service(tmp_path) -> tuple[CanaryService, GatewayMetrics, Database]:
    db = Database(f"sqlite:///{tmp_path / 'gw.db'}")
    db.migrate(MIGRATIONS, version_table="alembic_version_gateway")
    metrics = GatewayMetrics(ServiceMetrics("gateway"))
    return CanaryService(db, metrics, None, None, None, None), metrics, db


def _start(svc: CanaryService, db: Database, weight: float, **limits) -> Live:
    cid = new_id("cny")
    with db.session() as s:
        s.add(Canary(id=cid, alias="bot", stable="mv-old", candidate="mv-new", model_id=None,
                     mode="weighted", weight=weight, status="running", limits=LIMITS | limits,
                     stats={}, events=[], created_at=int(time.time())))
    asyncio.run(svc.refresh())
    live = svc.live["bot"]
    live.rng = random.Random(7)
    return live


def _engine(fail: set[str] = frozenset(), delay: dict[str, float] | None = None):
    """A stand-in for the upstream call (the unit under test is the router, not inference):
    answers with the model it was asked for."""
    seen: list[str] = []

    async def send(raw: bytes) -> Response:
        model = json.loads(raw)["model"]
        seen.append(model)
        await asyncio.sleep((delay or {}).get(model, 0))
        if model in fail:
            raise ServiceUnavailable("inference service unavailable", code="upstream_unavailable")
        return Response(json.dumps({"model": model, "usage": {"prompt_tokens": 3,
                                                               "completion_tokens": 2}}),
                        media_type="application/json")
    return send, seen


async def _traffic(svc: CanaryService, live: Live, send, n: int) -> list[Response]:
    body = {"model": "bot", "messages": [{"role": "user", "content": "hi"}]}
    raw = json.dumps(body).encode()
    out = []
    for _ in range(n):   # as routing.send_generation does: the canary only while it runs
        current = svc.routes("bot")
        out.append(await (svc.dispatch(current, body, raw, None, send) if current else send(raw)))
    return out


def test_weighted_share_goes_to_the_candidate(tmp_path):
    svc, _, db = _service(tmp_path)
    live = _start(svc, db, 0.25, max_latency_ratio=None)   # microsecond latencies are noise
    send, seen = _engine()
    out = asyncio.run(_traffic(svc, live, send, 400))
    assert all(r.status_code == 200 for r in out)
    share = seen.count("mv-new") / len(seen)
    assert 0.18 < share < 0.32, share
    assert live.arms["candidate"].requests == seen.count("mv-new")
    assert live.arms["stable"].requests == seen.count("bot")   # the alias itself: inference
    # resolves it, so an alias flip during the canary is followed at once
    assert svc.live["bot"] is live     # nothing crossed a limit


def test_a_failing_candidate_is_answered_by_the_stable_model_then_rolled_back(tmp_path):
    svc, metrics, db = _service(tmp_path)
    live = _start(svc, db, 0.5)
    send, seen = _engine(fail={"mv-new"})

    async def run() -> list[Response]:
        out = await _traffic(svc, live, send, 60)
        await asyncio.sleep(0.2)   # the decision is written in a thread
        return out
    out = asyncio.run(run())
    assert [r.status_code for r in out] == [200] * 60          # zero failed requests
    assert all(json.loads(r.body)["model"] == "bot" for r in out)   # the alias answered
    cand = live.arms["candidate"]
    assert cand.requests == cand.errors == cand.fallbacks == 10  # min_requests, then it stops
    assert "bot" not in svc.live and seen.count("mv-new") == 10
    with db.session() as s:
        row = s.get(Canary, live.id)
        assert row.status == "rolled_back" and row.finished_at
        assert "error rate 1.000" in row.events[-1]["detail"]
        assert row.stats["candidate"]["fallbacks"] == 10
    assert metrics.canary_decisions.labels("rolled_back", "limit")._value.get() == 1


def test_latency_limit_against_the_stable_model():
    live = Live("cny-x", "bot", "a", "b", "weighted", 0.5, dict(LIMITS),
                {"stable": Arm(), "candidate": Arm(), "shadow": Arm()})
    for _ in range(10):
        live.arms["stable"].add(True, 0.1)
        live.arms["candidate"].add(True, 0.15)
    assert breach(live) is None                      # 1.5x the stable p95: within 2x
    for _ in range(30):
        live.arms["candidate"].add(True, 0.5)
    assert "x the stable model's" in breach(live)
    live.limits["max_latency_ratio"] = None
    assert breach(live) is None
    live.limits["max_p95_latency_s"] = 0.3
    assert "> limit 0.3s" in breach(live)
    young = Live("cny-y", "bot", "a", "b", "weighted", 0.5, dict(LIMITS),
                 {"stable": Arm(), "candidate": Arm(), "shadow": Arm()})
    for _ in range(9):
        young.arms["candidate"].add(False, None)
    assert breach(young) is None                     # not judged before min_requests


def test_per_key_token_metering(tmp_path):
    metrics = GatewayMetrics(ServiceMetrics("gateway"))
    keys = KeyStore(_service(tmp_path)[2])
    key, view = asyncio.run(keys.create("tenant-a", ["inference"], models=["bot"]))
    principal = asyncio.run(keys.verify(key))
    assert principal.may_call("bot") and not principal.may_call("other")
    assert view["models"] == ["bot"]
    body = {"id": "x", "choices": [{"message": {"content": '"prompt_tokens": 999'}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}
    meter(metrics, principal, Response(json.dumps(body), media_type="application/json"))

    async def chunks():
        yield b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
        yield b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":4}}\n\n'
        yield b"data: [DONE]\n\n"

    async def drain(resp: StreamingResponse) -> None:
        async for _ in resp.body_iterator:
            pass
    asyncio.run(drain(meter(metrics, principal, StreamingResponse(chunks()))))
    tokens = metrics.key_tokens
    assert tokens.labels(view["id"], "prompt")._value.get() == 19
    assert tokens.labels(view["id"], "completion")._value.get() == 9
    assert metrics.key_requests.labels(view["id"])._value.get() == 2


def test_the_usage_chunk_we_asked_for_is_metered_then_taken_out(tmp_path):
    """A stream whose client did not ask for usage: the gateway asked for it, meters it, and
    the client gets every other event intact, however the upstream cut the bytes."""
    metrics = GatewayMetrics(ServiceMetrics("gateway"))
    keys = KeyStore(_service(tmp_path)[2])
    key, view = asyncio.run(keys.create("tenant-b", ["inference"]))
    events = [b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n',
              b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n',
              b'data: {"id":"c","choices": [ ],"usage":{"prompt_tokens":7,"completion_tokens":4}}'
              b'\n\n', b"data: [DONE]\n\n"]
    stream = b"".join(events)

    async def chunks():
        for i in range(0, len(stream), 5):   # events cut anywhere, as a socket delivers them
            yield stream[i:i + 5]

    async def drain(resp: StreamingResponse) -> bytes:
        return b"".join([c async for c in resp.body_iterator])
    asked = SimpleNamespace(state=SimpleNamespace(usage_added=True))
    got = asyncio.run(drain(without_added_usage(asked, meter(
        metrics, asyncio.run(keys.verify(key)), StreamingResponse(chunks())))))
    assert got == events[0] + events[1] + events[3]
    assert metrics.key_tokens.labels(view["id"], "completion")._value.get() == 4
    not_asked = SimpleNamespace(state=SimpleNamespace())   # the client asked: it gets the usage
    assert asyncio.run(drain(without_added_usage(not_asked, StreamingResponse(chunks())))) == stream


def test_stats_survive_a_restart(tmp_path):
    svc, _, db = _service(tmp_path)
    live = _start(svc, db, 1.0, max_latency_ratio=None)
    send, _ = _engine()
    asyncio.run(_traffic(svc, live, send, 5))
    asyncio.run(svc.refresh())   # the sync loop's round: the counts stored, the database followed
    again, _, _ = _service(tmp_path)
    asyncio.run(again.refresh())
    assert again.live["bot"].arms["candidate"].requests == 5

"""Canary lifecycle, promotion decisions and eval runs through the gateway's services and their
repositories, on a real database, without processes (the HTTP paths with real services:
tests/test_flywheel.py and tests/test_gateway_promotion.py). What is checked: each check and
the write it guards hold together, and what the services show is what was stored."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from fastapi.responses import Response

from tuneloop.db import Database
from tuneloop.errors import Conflict, NotFound
from tuneloop.ids import new_id
from tuneloop.metrics import ServiceMetrics
from tuneloop_gateway.app import MIGRATIONS
from tuneloop_gateway.canary import CanaryService
from tuneloop_gateway.db import Canary, Capture, EvalRun, Promotion
from tuneloop_gateway.evals.service import EvalService
from tuneloop_gateway.metrics import GatewayMetrics
from tuneloop_gateway.promotion import PromotionService
from tuneloop_gateway.settings import GatewaySettings

LIMITS = {"max_error_rate": 0.5, "max_latency_ratio": None, "max_p95_latency_s": None,
          "min_requests": 1000}
METRICS = GatewayMetrics(ServiceMetrics("gateway"))


@pytest.fixture
def db(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'gw.db'}")
    db.migrate(MIGRATIONS, version_table="alembic_version_gateway")
    yield db
    db.dispose()


def _canary(alias: str = "bot") -> Canary:
    return Canary(id=new_id("cny"), alias=alias, stable="mv-old", candidate="mv-new",
                  model_id=None, mode="weighted", weight=1.0, status="running", limits=LIMITS,
                  stats={}, events=[], created_at=int(time.time()))


async def _answer(raw: bytes) -> Response:
    return Response(json.dumps({"model": json.loads(raw)["model"]}),
                    media_type="application/json")


def test_canary_update_rollback_and_views(db):
    svc = CanaryService(db, METRICS, None, None, None, None)
    body = {"model": "bot", "messages": [{"role": "user", "content": "hi"}]}
    before = METRICS.canary_decisions.labels("rolled_back", "manual")._value.get()

    async def run() -> None:
        row = await svc.repo.insert(_canary())
        with pytest.raises(Conflict) as taken:   # one running canary per alias
            await svc.repo.insert(_canary())
        assert taken.value.code == "canary_exists"
        await svc.refresh()
        live = svc.live["bot"]
        for _ in range(3):
            await svc.dispatch(live, body, json.dumps(body).encode(), None, _answer)
        with db.session() as s:   # feedback on the candidate's captured answers
            for rating in ("up", "up", "down"):
                s.add(Capture(id=new_id("cap"), key_id="key-x", endpoint="chat", model="bot",
                              messages=[], output="x", stream=False, latency_s=0.1, masked={},
                              created_at=int(time.time()), status="pending", rating=rating,
                              canary_id=row.id, canary_arm="candidate"))

        view = await svc.update(row.id, weight=0.25, mode=None)
        assert view["weight"] == 0.25 and view["events"][-1]["event"] == "changed"
        assert svc.live["bot"].weight == 0.25          # followed at once by this process
        got = await svc.get(row.id)
        assert got["comparison"]["candidate"]["requests"] == 3       # the live counts
        assert got["comparison"]["quality"]["candidate"] == {
            "captured": 3, "up": 2, "down": 1, "corrected": 0, "up_share": 0.6667}

        ended = await svc.rollback(row.id, "enough")
        assert ended["status"] == "rolled_back" and "enough" in ended["events"][-1]["detail"]
        assert ended["comparison"]["candidate"]["requests"] == 3     # stored from the live arms
        assert "bot" not in svc.live
        with pytest.raises(Conflict) as again:
            await svc.rollback(row.id, None)
        assert again.value.code == "canary_not_running"
        with pytest.raises(Conflict):
            await svc.update(row.id, weight=0.5, mode=None)
        with pytest.raises(NotFound):
            await svc.get("cny-doesnotexist")
        listed = await svc.list(status="rolled_back", alias=None, limit=10)
        assert [c["id"] for c in listed] == [row.id]
        assert await svc.list(status="running", alias="bot", limit=10) == []
    asyncio.run(run())
    after = METRICS.canary_decisions.labels("rolled_back", "manual")._value.get()
    assert after - before == 1     # the refused second rollback is not counted


def _promotions(db: Database) -> PromotionService:
    return PromotionService(GatewaySettings(), db, None, None, None, METRICS)


def _promotion(status: str, job_id: str | None, model_id: str = "mv-abc123") -> Promotion:
    return Promotion(id=new_id("promo"), kind="gate", status=status, job_id=job_id,
                     model_id=model_id, alias="bot", reasons=[], evidence={},
                     created_at=int(time.time()))


def test_promotion_decisions_are_stored_and_shown_alike(db):
    svc = _promotions(db)

    async def run() -> None:
        job_gate, model_gate = _promotion("evaluating", "job-1"), _promotion("evaluating", None)
        await svc.repo.upsert(job_gate)
        await svc.repo.upsert(model_gate)
        assert await svc.recover() == 1   # a model gate cut off by a restart: failed
        assert (await svc.get(model_gate.id))["error"]["code"] == "interrupted"
        assert (await svc.get(job_gate.id))["status"] == "evaluating"  # re-run by reconcile

        done = await svc._finish(job_gate.id, "rejected", reasons=["worse"], evidence={"a": 1})
        assert done["status"] == "rejected" and done["finished_at"]
        assert await svc.repo.jobs_in({"rejected"}) == {"job-1"}
        # a decided job is not gated again: its decision, without asking the trainer
        assert (await svc.gate_job("job-1"))["id"] == job_gate.id

        amended = await svc.amend(job_gate.id, evidence={"a": 1, "canary": {"id": "cny-1"}})
        assert amended["evidence"]["canary"] == {"id": "cny-1"}
        listed = await svc.list(model_id="mv-abc123")
        assert {p["id"] for p in listed} == {job_gate.id, model_gate.id}
        assert await svc.list(job_id="job-1", limit=1) == [amended]
        with pytest.raises(NotFound):
            await svc.get("promo-doesnotexist")
    asyncio.run(run())


def test_eval_runs_left_running_are_failed_at_start_and_paged(db):
    evals = EvalService(GatewaySettings(), db, None, None, METRICS)

    async def run() -> None:
        for i in range(3):
            await evals.repo.add(EvalRun(id=f"eval-{i:06d}", status="running", name=f"r{i}",
                                         config={}, created_at=1000 + i))
        await evals._finish("eval-000000", "succeeded", {"complete": True}, [], None, 1.5)
        assert await evals.recover() == 2
        page = await evals.list(2, 0)
        assert [r["id"] for r in page["data"]] == ["eval-000002", "eval-000001"]
        assert page["has_more"] and "report" not in page["data"][0]
        one = await evals.get("eval-000001")
        assert one["status"] == "failed" and one["error"]["code"] == "interrupted"
        assert (await evals.get("eval-000000"))["duration_s"] == 1.5
        assert (await evals.list(2, 2))["data"][0]["id"] == "eval-000000"
        with pytest.raises(NotFound):
            await evals.get("eval-doesnotexist")
    asyncio.run(run())

"""Gateway replicas on one database (two on Kubernetes): work leases (``leases.py``), on SQLite
and PostgreSQL, without processes. What is checked: a job's gate runs on one replica only
(the reconcile loop of every replica lists the same finished jobs), a replica starting fails
only the work of processes that are gone, and a dead replica's work is failed by the others
once its lease runs out - each of which the start-up ``recover`` of every ``running`` row got
wrong before."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuneloop.db import Database
from tuneloop.metrics import ServiceMetrics
from tuneloop.settings import open_service_state
from tuneloop_gateway.app import MIGRATIONS
from tuneloop_gateway.db import EvalRun, Promotion
from tuneloop_gateway.evals.service import EvalService
from tuneloop_gateway.leases import LeaseKeeper, WorkLease
from tuneloop_gateway.metrics import GatewayMetrics
from tuneloop_gateway.promotion import PromotionService
from tuneloop_gateway.settings import GatewaySettings

METRICS = GatewayMetrics(ServiceMetrics("gateway"))
LEASE_S = 60


@pytest.fixture
def db(tmp_path: Path, database_url: str | None) -> Iterator[Database]:
    settings = GatewaySettings(data_dir=tmp_path, database_url=database_url, log_json=False)
    db, _ = open_service_state(settings, MIGRATIONS)
    yield db
    db.dispose()


def _replica(db: Database, name: str) -> tuple[EvalService, PromotionService]:
    """One gateway process of replica ``name``: its eval and promotion services, no peers (a
    call that reaches the trainer or inference fails: none is expected here)."""
    settings = GatewaySettings(replica_id=name, work_lease_s=LEASE_S)
    evals = EvalService(settings, db, None, None, METRICS)  # type: ignore[arg-type]
    return evals, PromotionService(settings, db, None, None, evals, METRICS)  # type: ignore[arg-type]


def _gate(job_id: str | None, model_id: str = "mv-abc123") -> Promotion:
    return Promotion(id=f"promo-{job_id or model_id}", kind="gate", status="evaluating",
                     job_id=job_id, model_id=model_id, alias="bot", reasons=[], evidence={},
                     created_at=int(time.time()))


def _run(run_id: str, owner: str | None, heartbeat_age_s: float | None) -> EvalRun:
    beat = None if heartbeat_age_s is None else int(time.time() - heartbeat_age_s)
    return EvalRun(id=run_id, status="running", name=run_id, config={},
                   created_at=int(time.time()), owner=owner, heartbeat_at=beat)


def test_a_jobs_gate_runs_on_one_replica(db):
    (_, a), (_, b) = _replica(db, "gw-a"), _replica(db, "gw-b")

    async def run() -> None:
        held = await a.repo.claim(_gate("job-1"), a.lease)
        assert held is not None and held.owner == a.lease.owner
        # replica b's reconcile loop queues the same finished job: it sees a's gate in
        # progress and leaves it (without asking the trainer: b has none here)
        seen = await b.gate_job("job-1")
        assert seen is not None and seen["status"] == "evaluating" and seen["id"] == held.id
        assert await b.repo.claim(_gate("job-1"), b.lease) is None

        # two replicas claiming the same new gate at once: one wins
        won = await asyncio.gather(a.repo.claim(_gate("job-2"), a.lease),
                                   b.repo.claim(_gate("job-2"), b.lease))
        assert sorted(w is None for w in won) == [False, True]

        # replica a dies mid-gate: once its lease runs out, b takes the gate over (same row)
        await a.repo.update(held.id, heartbeat_at=int(time.time()) - LEASE_S - 5)
        taken = await b.repo.claim(_gate("job-1"), b.lease)
        assert taken is not None and taken.id == held.id and taken.owner == b.lease.owner
        assert await a.repo.claim(_gate("job-1"), a.lease) is None   # b's now, and alive

        # a decided gate may be re-run by whoever asks (rerun of an inconclusive one)
        await b._finish(taken.id, "inconclusive", reasons=["too few rows"])
        again = await a.repo.claim(_gate("job-1"), a.lease)
        assert again is not None and again.owner == a.lease.owner and again.error is None
    asyncio.run(run())


def test_a_replica_starting_fails_only_the_work_of_stopped_processes(db, monkeypatch):
    (evals_a, gates_a), (evals_b, gates_b) = _replica(db, "gw-a"), _replica(db, "gw-b")
    old_b = "gw-b:previousboot"

    async def run() -> None:
        for row in (_run("eval-alive-a", evals_a.lease.owner, 1),    # replica a, running now
                    _run("eval-old-b", old_b, 1),                    # b's previous process
                    _run("eval-dead-c", "gw-c:x", LEASE_S + 30),     # a replica gone for good
                    _run("eval-legacy", None, None)):                # stored before leases
            await evals_a.repo.add(row)
        for row in (_gate(None, "mv-alive"), _gate(None, "mv-old-b")):
            await gates_a.repo.upsert(row)
        await gates_a.repo.update("promo-mv-alive", owner=gates_a.lease.owner,
                                  heartbeat_at=int(time.time()))
        await gates_a.repo.update("promo-mv-old-b", owner=old_b, heartbeat_at=int(time.time()))

        # replica b (re)starts: its previous process's work and dead work fail, a's goes on
        assert await evals_b.recover() == 3
        assert await gates_b.recover() == 1
        status = {r: (await evals_a.get(r))["status"] for r in
                  ("eval-alive-a", "eval-old-b", "eval-dead-c", "eval-legacy")}
        assert status == {"eval-alive-a": "running", "eval-old-b": "failed",
                          "eval-dead-c": "failed", "eval-legacy": "failed"}
        assert (await evals_a.get("eval-old-b"))["error"]["code"] == "interrupted"
        assert (await gates_a.get("promo-mv-alive"))["status"] == "evaluating"
        assert (await gates_a.get("promo-mv-old-b"))["error"]["code"] == "interrupted"

        # a keeps its work alive; when a stops refreshing, b's periodic sweep fails it
        keeper_a, keeper_b = LeaseKeeper(evals_a.lease), LeaseKeeper(evals_b.lease)
        keeper_a.refresh += [evals_a.repo.heartbeat, gates_a.repo.heartbeat]
        keeper_b.sweep += [lambda _: evals_b.recover(at_start=False),
                           lambda _: gates_b.recover(at_start=False)]
        await evals_a.repo.heartbeat(evals_a.lease)
        assert await keeper_a.tick() == 0 and await keeper_b.tick() == 0
        await gates_a.repo.update("promo-mv-alive", heartbeat_at=int(time.time()) - LEASE_S - 5)
        assert await keeper_a.tick() == 0                       # a refreshes: alive again
        assert await keeper_b.tick() == 0
        for stale in (evals_a.repo.heartbeat, gates_a.repo.heartbeat):
            assert await stale(WorkLease("gw-a", LEASE_S, boot="other")) == 0  # not its work
        real_now = WorkLease.now                                # a is gone: time passes
        monkeypatch.setattr(WorkLease, "now", lambda self: real_now(self) + LEASE_S + 5)
        assert await keeper_b.tick() == 2                       # its eval run and its gate
        assert (await evals_a.get("eval-alive-a"))["error"]["code"] == "interrupted"
        assert (await gates_a.get("promo-mv-alive"))["status"] == "failed"
    asyncio.run(run())

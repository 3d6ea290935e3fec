"""Gated promotion: a finished training job -> deploy candidate -> evaluate base, candidate and
production on the held-out split + general suite -> gate -> alias flip or refusal, recorded.

Triggers: the trainer's callback (``POST /internal/training-events``) and a reconcile loop that
lists succeeded jobs, so a lost callback or a gateway restart misses nothing. One worker runs
gates one at a time (evaluations are heavy); a job is gated once (``job_id`` is unique).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from tuneloop.clients.base import ServiceError
from tuneloop.db import Database
from tuneloop.errors import Conflict, NotFound, TuneloopError
from tuneloop.ids import is_valid_id, new_id

from .db import Promotion
from .evals.service import EvalService
from .peers import InferencePeer, TrainerPeer
from .schemas import EvalCreate, PromoteRequest, RollbackRequest, TargetSpec
from .settings import GatewaySettings

log = logging.getLogger("tuneloop.gateway.promotion")
TERMINAL = {"promoted", "rejected", "failed", "done"}


@dataclass(frozen=True)
class GateConfig:
    min_uplift: float
    min_vs_production: float
    max_general_drop: float
    min_json_validity: float

    @classmethod
    def from_settings(cls, s: GatewaySettings) -> "GateConfig":
        return cls(s.gate_min_uplift, s.gate_min_vs_production, s.gate_max_general_drop,
                   s.gate_min_json_validity)


def apply_gate(report: dict[str, Any], gate: GateConfig, *, candidate: str, base: str,
               production: str | None = None) -> tuple[bool, list[dict[str, Any]], list[str]]:
    """Decide from an eval report. Returns ``(passed, checks, reasons)``; every check records
    its value and threshold so the decision can be audited."""
    by = {t["name"]: t for t in report["targets"]}
    cand_m, base_m = by[candidate]["metrics"], by[base]["metrics"]
    metric = report["task"]["primary_metric"]
    checks: list[dict[str, Any]] = []

    def check(name: str, value: float, op: str, threshold: float, what: str) -> None:
        ok = value >= threshold if op == ">=" else value <= threshold
        checks.append({"check": name, "value": round(value, 4), "op": op, "threshold": threshold,
                       "passed": ok, "detail": what})

    if by[candidate].get("status") == "failed":
        checks.append({"check": "candidate_answers", "value": 0, "op": ">=", "threshold": 1,
                       "passed": False, "detail": "every generation of the candidate failed"})
    uplift = cand_m["task_score"]["value"] - base_m["task_score"]["value"]
    check("uplift_vs_base", uplift, ">=", gate.min_uplift,
          f"{metric}: candidate {cand_m['task_score']['value']:.3f} vs base {base_m['task_score']['value']:.3f}")
    if production and production in by:
        prod_m = by[production]["metrics"]
        d = cand_m["task_score"]["value"] - prod_m["task_score"]["value"]
        check("uplift_vs_production", d, ">=", gate.min_vs_production,
              f"{metric}: candidate vs production {prod_m['task_score']['value']:.3f}")
    if cand_m.get("general") and base_m.get("general"):
        drop = base_m["general"]["value"] - cand_m["general"]["value"]
        check("general_suite_drop", drop, "<=", gate.max_general_drop,
              f"general suite: base {base_m['general']['value']:.3f}, candidate {cand_m['general']['value']:.3f}")
    if report["task"]["kind"] == "json":
        check("json_validity", cand_m["json_valid"]["value"], ">=", gate.min_json_validity,
              "share of candidate outputs that parse as JSON objects")
    reasons = [f"{c['check']}: {c['value']} {'meets' if c['passed'] else 'fails'} "
               f"{c['op']} {c['threshold']} ({c['detail']})" for c in checks]
    return all(c["passed"] for c in checks), checks, reasons


def promotion_view(p: Promotion) -> dict[str, Any]:
    return {"id": p.id, "object": "promotion", "kind": p.kind, "status": p.status,
            "job_id": p.job_id, "model_id": p.model_id, "alias": p.alias,
            "candidate": p.candidate, "previous": p.previous, "eval_id": p.eval_id,
            "reasons": p.reasons, "evidence": p.evidence, "error": p.error, "note": p.note,
            "created_at": p.created_at, "finished_at": p.finished_at,
            # short forms for listings (the CLI's lineage view)
            "decision": p.status, "reason": p.reasons[0] if p.reasons else None}


class PromotionService:
    def __init__(self, settings: GatewaySettings, db: Database, trainer: TrainerPeer,
                 inference: InferencePeer, evals: EvalService, metrics: Any) -> None:
        self.settings = settings
        self.db = db
        self.trainer = trainer
        self.inference = inference
        self.evals = evals
        self.metrics = metrics
        self.gate = GateConfig.from_settings(settings)
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._tasks: list[asyncio.Task] = []
        self._lock = asyncio.Lock()  # one alias change at a time

    # -- background --------------------------------------------------------------------
    def recover(self) -> int:
        """Gates cut off by a restart: job gates are re-run by the reconcile loop; gates of a
        stored model version (no job) are marked failed (interrupted) - re-run them by hand."""
        with self.db.session() as s:
            rows = list(s.scalars(select(Promotion).where(
                Promotion.status == "evaluating", Promotion.job_id.is_(None))))
            for r in rows:
                r.status, r.finished_at = "failed", int(time.time())
                r.error = {"code": "interrupted", "message": "the gateway stopped during the gate"}
                r.reasons = ["gate could not run: the gateway stopped during the gate"]
        return len(rows)

    def start(self) -> None:
        self.recover()
        self._tasks.append(asyncio.create_task(self._worker(), name="promotion-worker"))
        if self.settings.reconcile_interval_s > 0 and self.settings.auto_promote:
            self._tasks.append(asyncio.create_task(self._reconcile_loop(), name="reconcile"))

    async def aclose(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    def notify(self, job_id: str) -> bool:
        """Queue a job for gating (no-op when already queued)."""
        if job_id in self._queued:
            return False
        self._queued.add(job_id)
        self.queue.put_nowait(job_id)
        return True

    async def _worker(self) -> None:
        while True:
            job_id = await self.queue.get()
            try:
                await self.gate_job(job_id)
            except Exception:
                log.exception("gate failed", extra={"job_id": job_id})
            finally:
                self._queued.discard(job_id)

    async def _reconcile_loop(self) -> None:
        while True:
            try:
                await self.reconcile_once()
            except Exception as exc:  # the trainer may be down; try again next round
                log.warning("reconcile failed", extra={"error": repr(exc)})
            await asyncio.sleep(self.settings.reconcile_interval_s)

    async def reconcile_once(self) -> list[str]:
        """Queue every succeeded job that has no final decision yet."""
        jobs = await self.trainer.succeeded_jobs()
        decided = await run_in_threadpool(self._decided_jobs)
        queued = []
        for job in jobs:
            if job.get("model_id") and job["id"] not in decided and self.notify(job["id"]):
                queued.append(job["id"])
        return queued

    def _decided_jobs(self) -> set[str]:
        with self.db.session() as s:
            return set(s.scalars(select(Promotion.job_id).where(
                Promotion.job_id.is_not(None), Promotion.status.in_(TERMINAL))))

    # -- the gate ----------------------------------------------------------------------
    async def gate_job(self, job_id: str) -> dict[str, Any] | None:
        """Evaluate a succeeded job's model and promote or refuse it (once per job)."""
        existing = await run_in_threadpool(self._by_job, job_id)
        if existing is not None and existing.status in TERMINAL:
            return promotion_view(existing)
        job = await self.trainer.get_job(job_id)
        if job.get("status") != "succeeded" or not job.get("model_id"):
            return None
        return await self._gate(job, existing.id if existing else None)

    async def gate_model(self, model_id: str, dataset_id: str,
                         base_model: str | None = None) -> dict[str, Any]:
        """Gate a model version that is already in the store (no training job needed)."""
        subject = {"id": None, "model_id": model_id, "dataset_id": dataset_id,
                   "base_model": base_model}
        return await self._gate(subject, None)

    async def _gate(self, job: dict[str, Any], pid: str | None) -> dict[str, Any]:
        alias = self.settings.promotion_alias
        pid = pid or new_id("promo")
        await run_in_threadpool(self._upsert, Promotion(
            id=pid, kind="gate", status="evaluating", job_id=job["id"], model_id=job["model_id"],
            alias=alias, reasons=[], evidence={"job": _job_summary(job)}, created_at=int(time.time())))
        try:
            return await self._evaluate_and_decide(pid, job, alias)
        except Exception as exc:  # the decision must be stored, whatever broke
            error = {"code": getattr(exc, "code", "gate_error"),
                     "message": getattr(exc, "message", None) or f"{exc.__class__.__name__}: {exc}"}
            log.warning("gate could not decide", extra={"model_id": job["model_id"],
                                                         "error": error["message"]})
            return await run_in_threadpool(self._finish, pid, "failed", error=error,
                                           reasons=[f"gate could not run: {error['message']}"])

    async def _evaluate_and_decide(self, pid: str, job: dict[str, Any], alias: str) -> dict[str, Any]:
        dep = await self.inference.deploy({"model_id": job["model_id"]})
        if dep.get("state") != "ready":
            raise TuneloopError(f"candidate deployment {dep.get('id')} is {dep.get('state')}: "
                                f"{dep.get('error')}", code="candidate_not_ready")
        candidate = dep["model"]
        base = await self.ensure_base(job.get("base_model"))
        production = await self.inference.alias_target(alias)
        targets = [TargetSpec(name="base", model=base, role="base"),
                   TargetSpec(name="candidate", model=candidate, role="candidate")]
        if production and production not in (candidate, base):
            targets.append(TargetSpec(name="production", model=production, role="production"))
        spec = EvalCreate(name=f"gate {job['id'] or job['model_id']}", dataset_id=job["dataset_id"],
                          targets=targets, baseline="base", general_suite=True)
        eval_id = await self.evals.create(spec, source={
            "dataset_id": job["dataset_id"], "job_id": job["id"], "model_id": job["model_id"]})
        await run_in_threadpool(self._set, pid, eval_id=eval_id, candidate=candidate,
                                previous=production)  # visible while the eval runs
        run = await self.evals.wait(eval_id)
        if run["status"] != "succeeded":
            raise TuneloopError(f"evaluation {run['id']} failed: {(run['error'] or {}).get('message')}",
                                code="eval_failed")
        report = run["report"]
        passed, checks, reasons = apply_gate(
            report, self.gate, candidate="candidate", base="base",
            production="production" if len(targets) == 3 else None)
        evidence = {"job": _job_summary(job), "eval_id": run["id"], "gate": self.gate.__dict__,
                    "checks": checks, "table": report["table"], "advice": report["advice"],
                    "served": {"candidate": candidate, "base": base, "production": production},
                    "deployment": dep.get("id")}
        if passed:
            async with self._lock:
                await self.inference.set_alias(alias, candidate)
            reasons.insert(0, f"promoted: '{alias}' now serves {candidate} (was {production})")
            return await run_in_threadpool(self._finish, pid, "promoted", reasons=reasons,
                                           evidence=evidence)
        reasons.insert(0, f"refused: '{alias}' stays on {production}")
        if dep.get("id") and candidate not in (production, base):
            try:  # a refused candidate should not hold an engine; the record keeps the evidence
                await self.inference.undeploy(dep["id"])
                evidence["undeployed"] = True
            except ServiceError as exc:
                evidence["undeployed"] = f"failed: {exc.message}"
        return await run_in_threadpool(self._finish, pid, "rejected", reasons=reasons,
                                       evidence=evidence)

    async def ensure_base(self, base_model: str | None) -> str:
        """The served name of the job's base model on inference, deployed if absent."""
        name = self.settings.base_model_name
        ready = [d for d in await self.inference.deployments() if d.get("state") == "ready"]
        for d in ready:  # the same folder, whatever it is called
            if base_model and d.get("path") == base_model:
                return d["model"]
        for d in ready:  # the configured base deployment (the job may name the base by hub id)
            if d.get("model") == name and not d.get("model_id"):
                return d["model"]
        if not base_model:
            raise TuneloopError("no base deployment and the job names no base model",
                                code="base_unknown")
        dep = await self.inference.deploy({"name": name, "path": base_model})
        if dep.get("state") != "ready":
            raise TuneloopError(f"base deployment is {dep.get('state')}: {dep.get('error')}",
                                code="base_not_ready")
        return dep["model"]

    # -- manual ------------------------------------------------------------------------
    async def promote(self, req: PromoteRequest) -> dict[str, Any]:
        alias = req.alias or self.settings.promotion_alias
        model, dep_id = req.model, None
        if req.model_id:
            if not is_valid_id(req.model_id, "mv"):
                raise NotFound(f"model '{req.model_id[:80]}' not found", code="model_not_found",
                               param="model_id")
            dep = await self.inference.deploy({"model_id": req.model_id})
            if dep.get("state") != "ready":
                raise Conflict(f"deployment of {req.model_id} is {dep.get('state')}: {dep.get('error')}",
                               code="deployment_not_ready")
            model, dep_id = dep["model"], dep.get("id")
        async with self._lock:
            previous = await self.inference.alias_target(alias)
            await self.inference.set_alias(alias, model)
        row = Promotion(id=new_id("promo"), kind="manual", status="promoted", job_id=None,
                        model_id=req.model_id, alias=alias, candidate=model, previous=previous,
                        reasons=[f"manual promotion: '{alias}' {previous} -> {model}"],
                        evidence={"deployment": dep_id}, note=req.note,
                        created_at=int(time.time()), finished_at=int(time.time()))
        await run_in_threadpool(self._upsert, row)
        self.metrics.promotions.labels("manual", "promoted").inc()
        return promotion_view(row)

    async def rollback(self, req: RollbackRequest) -> dict[str, Any]:
        alias = req.alias or self.settings.promotion_alias
        async with self._lock:
            before = await self.inference.alias_target(alias)
            try:
                await self.inference.rollback(alias)
            except ServiceError as exc:
                if exc.status in (404, 409):
                    raise Conflict(f"cannot roll back '{alias}': {exc.message}",
                                   code="rollback_unavailable") from exc
                raise
            after = await self.inference.alias_target(alias)
        row = Promotion(id=new_id("promo"), kind="rollback", status="done", job_id=None,
                        model_id=None, alias=alias, candidate=after, previous=before,
                        reasons=[f"rollback: '{alias}' {before} -> {after}"], evidence={},
                        note=req.note, created_at=int(time.time()), finished_at=int(time.time()))
        await run_in_threadpool(self._upsert, row)
        self.metrics.promotions.labels("rollback", "done").inc()
        return promotion_view(row)

    # -- storage -----------------------------------------------------------------------
    def _by_job(self, job_id: str) -> Promotion | None:
        with self.db.session() as s:
            return s.scalar(select(Promotion).where(Promotion.job_id == job_id))

    def _upsert(self, row: Promotion) -> None:
        with self.db.session() as s:
            s.merge(row)

    def _set(self, pid: str, **fields: Any) -> None:
        with self.db.session() as s:
            row = s.get(Promotion, pid)
            for k, v in fields.items():
                setattr(row, k, v)

    def _finish(self, pid: str, status: str, *, reasons: list[str], evidence: dict | None = None,
                error: dict | None = None) -> dict[str, Any]:
        with self.db.session() as s:
            row = s.get(Promotion, pid)
            row.status, row.reasons, row.error = status, reasons, error
            if evidence is not None:
                row.evidence = evidence
            row.finished_at = int(time.time())
            view = promotion_view(row)
        self.metrics.promotions.labels("gate", status).inc()
        log.info("promotion decision", extra={"promotion_id": pid, "status": status,
                                               "job_id": view["job_id"]})
        return view

    def get(self, pid: str) -> dict[str, Any]:
        with self.db.session() as s:
            row = s.get(Promotion, pid)
            if row is None:
                raise NotFound(f"promotion '{pid[:80]}' not found", code="promotion_not_found")
            return promotion_view(row)

    def list(self, *, model_id: str | None = None, job_id: str | None = None,
             limit: int = 50) -> list[dict[str, Any]]:
        with self.db.session() as s:
            q = select(Promotion).order_by(Promotion.created_at.desc(), Promotion.id).limit(limit)
            if model_id:
                q = q.where(Promotion.model_id == model_id)
            if job_id:
                q = q.where(Promotion.job_id == job_id)
            return [promotion_view(p) for p in s.scalars(q)]

    def for_model(self, model_id: str) -> list[dict[str, Any]]:
        """Decisions about a model version (what its lineage shows)."""
        return self.list(model_id=model_id)


def _job_summary(job: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "dataset_id", "base_model", "backend", "model_id", "finished_at")
    return {k: job.get(k) for k in keys} | {"hyperparameters": job.get("hyperparameters")}

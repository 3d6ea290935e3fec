"""Gated promotion: a finished training job -> deploy candidate -> evaluate base, base k-shot,
candidate and production on the held-out split + general suite -> gate -> alias flip, refusal,
or ``inconclusive``, recorded.

The gate decides on intervals, never on point estimates: each check passes when its 95%
interval lies on the right side of its threshold, fails when it lies entirely on the wrong side,
and is *inconclusive* otherwise (saying about how many eval rows would decide it). A run with
generations that failed after their retries is inconclusive too: an infrastructure error is not
a wrong answer. Any failed check -> ``rejected``; else any inconclusive one -> ``inconclusive``
(the alias is not touched and the gate can be run again: ``POST /v1/promotions/gate``, which
generates only what is missing); else ``promoted``.

The alias a job is gated for is its own (``gate_alias`` on the job), the gateway's
``GATEWAY_PROMOTION_ALIAS`` being only the default.

Triggers: the trainer's callback (``POST /internal/training-events``) and a reconcile loop that
lists succeeded jobs, so a lost callback or a gateway restart misses nothing. One worker runs
gates one at a time (evaluations are heavy); a job is gated once (``job_id`` is unique) unless
its gate was inconclusive or failed and is asked to run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from tuneloop.clients.base import ServiceError
from tuneloop.clients.inference import InferenceClient
from tuneloop.clients.trainer import TrainerClient
from tuneloop.contracts import Deployment
from tuneloop.db import Database
from tuneloop.errors import Conflict, InvalidRequest, NotFound, TuneloopError
from tuneloop.ids import is_valid_id, new_id

from .db import Promotion
from .evals.service import EvalService
from .gate import GateConfig, apply_gate
from .leases import WorkLease
from .repository.promotions import PromotionRepository
from .schemas import EvalCreate, PromoteRequest, RollbackRequest, TargetSpec
from .settings import GatewaySettings

log = logging.getLogger("tuneloop.gateway.promotion")
TERMINAL = {"promoted", "rejected", "inconclusive", "failed", "done"}
RERUNNABLE = {"inconclusive", "failed"}
DECISION = {"pass": "promoted", "fail": "rejected", "inconclusive": "inconclusive"}


def _alias_state(model: str | None) -> str:
    return model if model else "nothing (it had no target before)"


def promotion_view(p: Promotion) -> dict[str, Any]:
    return {"id": p.id, "object": "promotion", "kind": p.kind, "status": p.status,
            "job_id": p.job_id, "model_id": p.model_id, "alias": p.alias,
            "candidate": p.candidate, "previous": p.previous, "eval_id": p.eval_id,
            "reasons": p.reasons, "evidence": p.evidence, "error": p.error, "note": p.note,
            "created_at": p.created_at, "finished_at": p.finished_at,
            # short forms for listings (the CLI's lineage view)
            "decision": p.status, "reason": p.reasons[0] if p.reasons else None}


class PromotionService:
    def __init__(self, settings: GatewaySettings, db: Database, trainer: TrainerClient,
                 inference: InferenceClient, evals: EvalService, metrics: Any) -> None:
        self.settings = settings
        self.repo = PromotionRepository(db)
        self.trainer = trainer
        self.inference = inference
        self.evals = evals
        self.metrics = metrics
        self.gate = GateConfig.from_settings(settings)
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._tasks: list[asyncio.Task] = []
        self._lock = asyncio.Lock()  # one alias change at a time
        self._gating: set[str] = set()  # jobs whose gate runs in this process right now
        # replicas share the database: a gate is claimed by one process (leases.py)
        self.lease = evals.lease if evals is not None else WorkLease(
            settings.replica_id, settings.work_lease_s)

    # -- background --------------------------------------------------------------------
    async def recover(self, *, at_start: bool = True) -> int:
        """Gates cut off by a restart or a dead replica: job gates are claimed and re-run by the
        reconcile loop; gates of a stored model version (no job) are marked failed
        (interrupted) - re-run them by hand. Gates another live replica runs go on."""
        return await self.repo.recover(self.lease, at_start=at_start)

    async def start(self) -> None:
        await self.recover()
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
        jobs = (await self.trainer.list_jobs(status="succeeded", limit=100)).data
        decided = await self.repo.jobs_in(TERMINAL)
        queued = []
        for job in jobs:
            if job.model_id and job.id not in decided and self.notify(job.id):
                queued.append(job.id)
        return queued

    # -- the gate ----------------------------------------------------------------------
    async def gate_job(self, job_id: str, *, rerun: bool = False,
                       alias: str | None = None) -> dict[str, Any] | None:
        """Evaluate a succeeded job's model and promote or refuse it (once per job; a gate that
        was inconclusive or failed runs again when ``rerun``)."""
        existing = await self.repo.by_job(job_id)
        if existing is not None and existing.status in TERMINAL and not (
                rerun and existing.status in RERUNNABLE):
            return promotion_view(existing)
        if job_id in self._gating:  # a re-run in progress is not "undecided": never two at once
            return promotion_view(existing) if existing is not None else None
        if existing is not None and existing.status == "evaluating" and \
                self.lease.held_elsewhere(existing.owner, existing.heartbeat_at):
            return promotion_view(existing)  # another live replica runs this gate
        job = await self.trainer.get_job(job_id)
        if job.status != "succeeded" or not job.model_id:
            return None
        subject = job.to_dict() | ({"gate_alias": alias} if alias else {})
        self._gating.add(job_id)
        try:
            return await self._gate(subject, existing)
        finally:
            self._gating.discard(job_id)

    async def gate_model(self, model_id: str, dataset_id: str, base_model: str | None = None,
                         alias: str | None = None) -> dict[str, Any]:
        """Gate a model version that is already in the store (no training job needed)."""
        subject = {"id": None, "model_id": model_id, "dataset_id": dataset_id,
                   "base_model": base_model, "gate_alias": alias}
        return await self._gate(subject, None)

    async def _gate(self, job: dict[str, Any], existing: Promotion | None) -> dict[str, Any]:
        alias = job.get("gate_alias") or self.settings.promotion_alias
        pid = existing.id if existing else new_id("promo")
        evidence: dict[str, Any] = {"job": _job_summary(job)}
        if existing is not None:  # a re-run keeps what the earlier attempts found
            evidence["earlier_attempts"] = (existing.evidence or {}).get("earlier_attempts", []) + [
                {"status": existing.status, "eval_id": existing.eval_id,
                 "reasons": (existing.reasons or [])[:3], "finished_at": existing.finished_at}]
        claimed = await self.repo.claim(Promotion(
            id=pid, kind="gate", status="evaluating", job_id=job["id"], model_id=job["model_id"],
            alias=alias, reasons=[], evidence=evidence, created_at=int(time.time())), self.lease)
        if claimed is None:  # another replica claimed this job's gate first: it decides
            held = await self.repo.by_job(job["id"])
            if held is None:
                raise Conflict(f"the gate of job {job['id']} is being claimed by another gateway "
                               "replica; try again", code="gate_in_progress")
            return promotion_view(held)
        pid = claimed.id
        try:
            return await self._evaluate_and_decide(pid, job, alias, evidence)
        except Exception as exc:  # the decision must be stored, whatever broke
            error = {"code": getattr(exc, "code", "gate_error"),
                     "message": getattr(exc, "message", None) or f"{exc.__class__.__name__}: {exc}"}
            log.warning("gate could not decide", extra={"model_id": job["model_id"],
                                                         "error": error["message"]})
            return await self._finish(pid, "failed", error=error,
                                      reasons=[f"gate could not run: {error['message']}"])

    async def _evaluate_and_decide(self, pid: str, job: dict[str, Any], alias: str,
                                   evidence: dict[str, Any]) -> dict[str, Any]:
        base = await self.ensure_base(job.get("base_model"))
        dep, swap = await self._deploy_candidate(job["model_id"], base)
        if dep.state != "ready":
            raise TuneloopError(f"candidate deployment {dep.id} is {dep.state}: {dep.error}",
                                code="candidate_not_ready")
        candidate = dep.model
        evidence["swap"] = swap
        production = await self.inference.alias_target(alias)
        targets = [TargetSpec(name="base", model=base, role="base"),
                   TargetSpec(name="candidate", model=candidate, role="candidate")]
        if production and production not in (candidate, base):
            targets.append(TargetSpec(name="production", model=production, role="production"))
        spec = EvalCreate(name=f"gate {job['id'] or job['model_id']}", dataset_id=job["dataset_id"],
                          targets=targets, baseline="base", general_suite=True)
        eval_id = await self.evals.create(spec, source={
            "dataset_id": job["dataset_id"], "job_id": job["id"], "model_id": job["model_id"]})
        await self.repo.update(pid, eval_id=eval_id, candidate=candidate,
                               previous=production)  # visible while the eval runs
        run = await self.evals.wait(eval_id)
        if run["status"] not in ("succeeded", "incomplete"):
            raise TuneloopError(f"evaluation {run['id']} failed: {(run['error'] or {}).get('message')}",
                                code="eval_failed")
        report = run["report"]
        decision, checks, reasons = apply_gate(
            report, self.gate, candidate="candidate", base="base",
            production="production" if any(t.name == "production" for t in targets) else None)
        evidence.update({
            "job": _job_summary(job), "eval_id": run["id"], "eval_status": run["status"],
            "gate": self.gate.__dict__, "decision": decision, "checks": checks,
            "table": report["table"], "advice": report["advice"],
            "baselines": [t["name"] for t in report["targets"] if t.get("role") in ("base", "base_kshot")],
            "failed_requests": (report.get("failed_requests") or [])[:50],
            "served": {"candidate": candidate, "base": base, "production": production},
            "deployment": dep.id})
        if decision == "pass":
            serve = await self._serve_merged(job["model_id"], dep, swap) \
                if swap["candidate_via"] == "adapter" else candidate
            t0 = time.monotonic()
            async with self._lock:
                await self.inference.set_alias(alias, serve)
            swap["alias_flip_s"] = round(time.monotonic() - t0, 3)
            if serve != candidate:
                await self._drop(dep, evidence)
                candidate = serve
                await self.repo.update(pid, candidate=serve)
            reasons.insert(0, f"promoted: '{alias}' now serves {candidate} "
                              f"(before: {_alias_state(production)})")
            return await self._finish(pid, "promoted", reasons=reasons, evidence=evidence)
        if decision == "inconclusive":
            where = (f"'{alias}' stays on {production}" if production
                     else f"'{alias}' had no target before and still has none")
            reasons.insert(0, f"inconclusive: neither promoted nor rejected; {where}. Run the gate "
                              "again (POST /v1/promotions/gate) once the cause is fixed; it generates "
                              "only what is missing. The candidate stays deployed for that.")
            return await self._finish(pid, "inconclusive", reasons=reasons, evidence=evidence)
        reasons.insert(0, f"refused: '{alias}' stays on {production}" if production
                       else f"refused: '{alias}' had no target before and still has none")
        if candidate not in (production, base):
            await self._drop(dep, evidence)  # a refused candidate should not hold an engine
        return await self._finish(pid, "rejected", reasons=reasons, evidence=evidence)

    async def _deploy_candidate(self, model_id: str, base: str) -> tuple[Deployment, dict[str, Any]]:
        """The candidate for its evaluation: attached as a runtime LoRA adapter to the served base
        when inference can (vLLM with LoRA on: seconds, no second engine), else its merged
        weights in an engine of their own."""
        t0 = time.monotonic()
        if self.settings.gate_via_adapter:
            try:
                dep = await self.inference.deploy(model_id=model_id, adapter_of=base)
                if dep.state == "ready":
                    return dep, {"candidate_via": "adapter", "adapter_of": base,
                                 "candidate_deploy_s": round(time.monotonic() - t0, 3)}
                await self._drop(dep, {})
                why = f"adapter deployment {dep.state}: {dep.error}"
            except ServiceError as exc:
                why = f"{exc.code}: {exc.message}"
            log.info("candidate evaluated as merged weights", extra={"model_id": model_id, "why": why})
        t0 = time.monotonic()
        dep = await self.inference.deploy(model_id=model_id)
        swap = {"candidate_via": "merged", "candidate_deploy_s": round(time.monotonic() - t0, 3)}
        if self.settings.gate_via_adapter:
            swap["adapter_refused"] = why
        return dep, swap

    async def _serve_merged(self, model_id: str, adapter_dep: Deployment,
                            swap: dict[str, Any]) -> str:
        """After a pass through the adapter: the merged weights (the verified export, the
        documented contract) get an engine of their own, and the alias moves to them."""
        t0 = time.monotonic()
        merged = await self.inference.deploy(model_id=model_id)
        swap["merged_deploy_s"] = round(time.monotonic() - t0, 3)
        if merged.state != "ready":
            raise TuneloopError(f"merged deployment {merged.id} is {merged.state}: {merged.error}",
                                code="candidate_not_ready")
        return merged.model

    async def _drop(self, dep: Deployment, evidence: dict[str, Any]) -> None:
        try:  # the record keeps the evidence; the engine (or adapter slot) is freed
            await self.inference.undeploy(dep.id)
            evidence["undeployed"] = True
        except ServiceError as exc:
            evidence["undeployed"] = f"failed: {exc.message}"

    async def ensure_base(self, base_model: str | None) -> str:
        """The served name of the job's base model on inference, deployed if absent."""
        name = self.settings.base_model_name
        ready = [d for d in await self.inference.deployments() if d.state == "ready"]
        for d in ready:  # the same folder, whatever it is called
            if base_model and d.path == base_model:
                return d.model
        for d in ready:  # the configured base deployment (the job may name the base by hub id)
            if d.model == name and not d.model_id:
                return d.model
        if not base_model:
            raise TuneloopError("no base deployment and the job names no base model",
                                code="base_unknown")
        dep = await self.inference.deploy(name=name, path=base_model)
        if dep.state != "ready":
            raise TuneloopError(f"base deployment is {dep.state}: {dep.error}", code="base_not_ready")
        return dep.model

    # -- manual ------------------------------------------------------------------------
    async def promote(self, req: PromoteRequest) -> dict[str, Any]:
        alias = req.alias or self.settings.promotion_alias
        model, dep_id = req.model, None
        if req.model_id:
            if not is_valid_id(req.model_id, "mv"):
                raise NotFound(f"model '{req.model_id[:80]}' not found", code="model_not_found",
                               param="model_id")
            dep = await self.inference.deploy(model_id=req.model_id)
            if dep.state != "ready":
                raise Conflict(f"deployment of {req.model_id} is {dep.state}: {dep.error}",
                               code="deployment_not_ready")
            model, dep_id = dep.model, dep.id
        if model is None:  # PromoteRequest asks for model or model_id
            raise InvalidRequest("give model or model_id", param="model")
        async with self._lock:
            previous = await self.inference.alias_target(alias)
            await self.inference.set_alias(alias, model)
        row = Promotion(id=new_id("promo"), kind="manual", status="promoted", job_id=None,
                        model_id=req.model_id, alias=alias, candidate=model, previous=previous,
                        reasons=[f"manual promotion: '{alias}' {_alias_state(previous)} -> {model}"],
                        evidence={"deployment": dep_id}, note=req.note,
                        created_at=int(time.time()), finished_at=int(time.time()))
        await self.repo.upsert(row)
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
        await self.repo.upsert(row)
        self.metrics.promotions.labels("rollback", "done").inc()
        return promotion_view(row)

    # -- decisions -------------------------------------------------------------------
    async def _finish(self, pid: str, status: str, *, reasons: list[str],
                      evidence: dict | None = None, error: dict | None = None) -> dict[str, Any]:
        view = promotion_view(await self.repo.finish(pid, status, reasons=reasons,
                                                     evidence=evidence, error=error))
        self.metrics.promotions.labels("gate", status).inc()
        log.info("promotion decision", extra={"promotion_id": pid, "status": status,
                                               "job_id": view["job_id"]})
        return view

    async def amend(self, pid: str, **fields: Any) -> dict[str, Any]:
        """Set ``fields`` on a decision (a canary's promotion adds its comparison)."""
        return promotion_view(await self.repo.update(pid, **fields))

    async def get(self, pid: str) -> dict[str, Any]:
        return promotion_view(await self.repo.get(pid))

    async def list(self, *, model_id: str | None = None, job_id: str | None = None,
                   limit: int = 50) -> list[dict[str, Any]]:
        rows = await self.repo.list(model_id=model_id, job_id=job_id, limit=limit)
        return [promotion_view(p) for p in rows]


def _job_summary(job: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "dataset_id", "base_model", "backend", "model_id", "finished_at", "gate_alias")
    return {k: job.get(k) for k in keys} | {"hyperparameters": job.get("hyperparameters")}

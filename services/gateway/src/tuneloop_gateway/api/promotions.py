"""Promotion API: decisions (with evidence), manual promote, rollback, gate a job now, and the
trainer's callback ``POST /internal/training-events``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from tuneloop.contracts import Page, Promotion
from tuneloop.errors import Conflict
from tuneloop.ids import require_id

from ..auth import require_admin
from ..schemas import GateRequest, PromoteRequest, RollbackRequest
from .deps import PromotionsDep, SettingsDep

router = APIRouter(prefix="/v1/promotions", tags=["promotions"], dependencies=[Depends(require_admin)])
callbacks = APIRouter(tags=["internal"])


@router.get("", summary="Promotion decisions, newest first", response_model=Page[Promotion],
            response_model_exclude_unset=True)
async def list_promotions(service: PromotionsDep, model_id: str | None = None,
                          job_id: str | None = None, limit: int = Query(50, ge=1, le=200)) -> dict:
    """``has_more`` is known: one decision more than the page is read."""
    data = await service.list(model_id=model_id, job_id=job_id, limit=limit + 1)
    return {"object": "list", "data": data[:limit], "has_more": len(data) > limit}


@router.get("/gate", summary="The gate's thresholds")
async def gate_config(service: PromotionsDep, s: SettingsDep) -> dict:
    return {"alias": s.promotion_alias, "auto_promote": s.auto_promote, **service.gate.__dict__}


@router.post("/gate", summary="Gate a succeeded job, or a stored model version, now (waits)",
             response_model=Promotion,
             response_model_exclude_unset=True)
async def gate(body: GateRequest, service: PromotionsDep) -> dict:
    """Runs the gate and answers with the decision. A job whose gate was ``inconclusive`` (or
    failed) is gated again; one already promoted or rejected answers its decision."""
    if body.model_id is not None:
        model_id = require_id(body.model_id, "mv", "model")
        dataset_id = require_id(body.dataset_id or "", "ds", "dataset")
        return await service.gate_model(model_id, dataset_id, body.base_model, body.alias)
    job_id = require_id(body.job_id or "", "job", "job")
    decision = await service.gate_job(job_id, rerun=True, alias=body.alias)
    if decision is None:
        raise Conflict(f"job '{body.job_id}' has not succeeded with a model", code="job_not_succeeded",
                       param="job_id")
    return decision


@router.post("", status_code=201, summary="Manual promotion of a served model or model version",
             response_model=Promotion,
             response_model_exclude_unset=True)
async def promote(body: PromoteRequest, service: PromotionsDep) -> dict:
    return await service.promote(body)


@router.post("/rollback", status_code=201, summary="Roll the alias back to its previous model",
             response_model=Promotion,
             response_model_exclude_unset=True)
async def rollback(body: RollbackRequest, service: PromotionsDep) -> dict:
    return await service.rollback(body)


@router.get("/{promotion_id}", summary="One decision with its evidence", response_model=Promotion,
            response_model_exclude_unset=True)
async def get_promotion(promotion_id: str, service: PromotionsDep) -> dict:
    return await service.get(promotion_id)


class TrainingEvent(BaseModel):
    event: str
    job_id: str
    model_id: str | None = None


@callbacks.post("/internal/training-events", summary="Trainer callback: a job finished")
async def training_event(body: TrainingEvent, service: PromotionsDep,
                         settings: SettingsDep) -> JSONResponse:
    """Queue the job for gating. The body is only a hint: the gate re-reads the job from the
    trainer, so this endpoint needs no key and cannot be used to promote anything."""
    require_id(body.job_id, "job", "job")
    queued = False
    if body.event.endswith("succeeded") and settings.auto_promote:
        queued = service.notify(body.job_id)
    return JSONResponse({"accepted": True, "queued": queued}, status_code=202)

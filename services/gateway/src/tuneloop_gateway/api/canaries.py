"""Canary API (docs/flywheel.md, "Canary"): start, watch, re-weight, roll back, promote.

| path | what | scope |
|---|---|---|
| `POST /v1/canaries` | start a weighted or shadow canary of a model on an alias | admin |
| `GET /v1/canaries`, `GET /v1/canaries/{id}` | canaries with their live comparison and events | admin |
| `PATCH /v1/canaries/{id}` | change the weight or the mode | admin |
| `POST /v1/canaries/{id}/rollback` | stop sending traffic to the candidate | admin |
| `POST /v1/canaries/{id}/promote` | alias flip (or the gate) with the comparison as evidence | admin |
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuneloop.ids import require_id

from ..auth import require_admin
from ..schemas import NAME
from .deps import CanariesDep as Canaries

router = APIRouter(prefix="/v1/canaries", tags=["canaries"], dependencies=[Depends(require_admin)])

SERVED = r"^[A-Za-z0-9._:-]{1,128}$"  # a served name (inference's rule) or a model version
DS_ID = r"^ds-[a-z0-9]{6,64}$"


class CanaryCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alias: str = Field(..., pattern=NAME, description="The alias whose traffic is shared.")
    model: str = Field(..., pattern=SERVED, description="The candidate: a served name, or a model "
                       "version (mv-...) that is deployed first.")
    mode: Literal["weighted", "shadow"] = Field(
        "weighted", description="weighted: `weight` of the alias's requests are answered by the "
        "candidate; shadow: every request is answered by the stable model and mirrored to the "
        "candidate, whose answer is recorded, not returned.")
    weight: float = Field(0.05, ge=0, le=1, description="Share of requests to the candidate.")
    max_error_rate: float = Field(0.05, ge=0, le=1, description="Roll back when the candidate's "
                                  "error rate goes above this.")
    max_latency_ratio: float | None = Field(2.0, gt=0, description="Roll back when the "
                                            "candidate's p95 latency exceeds this x the stable's.")
    max_p95_latency_s: float | None = Field(None, gt=0, description="Roll back when the "
                                            "candidate's p95 latency exceeds this (seconds).")
    min_requests: int = Field(20, ge=1, le=1_000_000, description="Candidate requests (and "
                              "stable latencies, for the ratio) before a limit is judged.")
    note: str | None = Field(None, max_length=2000)


class CanaryUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float | None = Field(None, ge=0, le=1)
    mode: Literal["weighted", "shadow"] | None = None

    @model_validator(mode="after")
    def _something(self) -> "CanaryUpdate":
        if self.weight is None and self.mode is None:
            raise ValueError("nothing to change: give weight and/or mode")
        return self


class CanaryRollback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(None, max_length=2000)


class CanaryPromote(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gate: bool = Field(False, description="Run the gate on `dataset_id` first (the alias flips "
                       "only on a pass); false: flip the alias now.")
    dataset_id: str | None = Field(None, pattern=DS_ID)
    note: str | None = Field(None, max_length=2000)




@router.post("", status_code=201, summary="Start a canary of a model on an alias")
async def create(body: CanaryCreate, svc: Canaries) -> JSONResponse:
    limits = body.model_dump(include={"max_error_rate", "max_latency_ratio", "max_p95_latency_s",
                                      "min_requests"})
    view = await svc.create(body.alias, body.model, mode=body.mode, weight=body.weight,
                                      limits=limits, note=body.note)
    return JSONResponse(view, status_code=201)


@router.get("", summary="Canaries, newest first, with their live comparison")
async def list_canaries(svc: Canaries,
                        status: Literal["running", "rolled_back", "promoted", "stopped"] | None = None,
                        alias: str | None = Query(None, pattern=NAME),
                        limit: int = Query(50, ge=1, le=200)) -> dict:
    data = await svc.list(status=status, alias=alias, limit=limit + 1)
    return {"object": "list", "data": data[:limit], "has_more": len(data) > limit}


@router.get("/{canary_id}", summary="One canary: live comparison (error rate, latency, feedback) "
            "and events")
async def get_canary(canary_id: str, svc: Canaries) -> dict:
    require_id(canary_id, "cny", "canary")
    return await svc.get(canary_id)


@router.patch("/{canary_id}", summary="Change a running canary's weight or mode")
async def update(canary_id: str, body: CanaryUpdate, svc: Canaries) -> dict:
    require_id(canary_id, "cny", "canary")
    return await svc.update(canary_id, weight=body.weight, mode=body.mode)


@router.post("/{canary_id}/rollback", summary="Stop sending traffic to the candidate")
async def rollback(canary_id: str, svc: Canaries, body: CanaryRollback | None = None) -> dict:
    require_id(canary_id, "cny", "canary")
    return await svc.rollback(canary_id, body.reason if body else None)


@router.post("/{canary_id}/promote", summary="Promote the candidate (alias flip, or the gate)")
async def promote(canary_id: str, body: CanaryPromote, svc: Canaries) -> dict:
    require_id(canary_id, "cny", "canary")
    return await svc.promote(canary_id, gate=body.gate, dataset_id=body.dataset_id,
                                       note=body.note)

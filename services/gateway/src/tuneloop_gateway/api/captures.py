"""The flywheel's API (docs/flywheel.md).

| path | what | scope |
|---|---|---|
| `POST /v1/chat/completions/{id}/feedback`, `/v1/completions/{id}/feedback` | rating, correction | inference |
| `GET /v1/captures`, `GET /v1/captures/{id}` | the review queue, filtered | admin |
| `POST /v1/captures/review` | accept / edit / reject | admin |
| `POST /v1/captures/publish` | accepted rows (+ a base version) -> a new dataset version | admin |
| `POST /v1/captures/retrain` | publish + a training job, gated like any other | admin |
| `GET /v1/captures/drift` | captured prompts vs a version's training prompts | admin |
"""

from __future__ import annotations

import re
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuneloop.contracts import Capture, Page
from tuneloop.errors import InvalidRequest
from tuneloop.offload import offload

from ..auth import require_admin, require_inference
from ..flywheel.curate import CurateService, capture_view
from ..metrics import GatewayMetrics
from .deps import CurateDep as Curate
from .deps import MetricsDep as Metrics

router = APIRouter(tags=["flywheel"])
admin = APIRouter(prefix="/v1/captures", tags=["flywheel"], dependencies=[Depends(require_admin)])

ID = r"^[A-Za-z0-9._:-]{1,200}$"
CAP_ID = r"^cap-[a-z0-9]{6,64}$"
DS_ID = r"^ds-[a-z0-9]{6,64}$"


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rating: Literal["up", "down"] | None = Field(None, description="Thumbs up or down.")
    correction: str | None = Field(None, min_length=1, max_length=100_000,
                                   description="The answer the model should have given.")
    comment: str | None = Field(None, max_length=2000)

    @model_validator(mode="after")
    def _something(self) -> "Feedback":
        if self.rating is None and self.correction is None:
            raise ValueError("give a rating ('up' or 'down') and/or a correction")
        return self


class Edit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(..., pattern=CAP_ID)
    output: str = Field(..., min_length=1, max_length=100_000)


class Review(BaseModel):
    model_config = ConfigDict(extra="forbid")
    accept: list[str] = Field([], max_length=10_000)
    reject: list[str] = Field([], max_length=10_000)
    edit: list[Edit] = Field([], max_length=10_000, description="Accept with this answer instead.")

    @model_validator(mode="after")
    def _ids(self) -> "Review":
        for i in self.accept + self.reject:
            if not re.match(CAP_ID, i):
                raise ValueError(f"not a capture id: {i[:80]!r}")
        if not (self.accept or self.reject or self.edit):
            raise ValueError("nothing to review: give accept, reject or edit")
        return self


class Publish(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_dataset_id: str | None = Field(
        None, pattern=DS_ID, description="The version to extend (its train rows + the accepted "
        "captures; its eval split kept as is). None: the captures alone.")
    name: str | None = Field(None, max_length=128)
    ids: list[str] | None = Field(None, max_length=100_000,
                                  description="Only these accepted captures (default: all).")


class Retrain(Publish):
    base_dataset_id: str = Field(..., pattern=DS_ID)
    base_model: str = Field(..., min_length=1, max_length=4096)
    backend: Literal["auto", "unsloth", "peft"] = "auto"
    hyperparameters: dict[str, Any] | None = None
    gate_alias: str | None = Field(None, max_length=200)




async def _feedback(request: Request, svc: CurateService, metrics: GatewayMetrics,
                    response_id: str, body: Feedback) -> dict:
    if len(response_id) > 200:
        response_id = response_id[:200]
    out = await svc.feedback(request.state.principal, response_id, body.rating,
                             body.correction, body.comment)
    metrics.feedback.labels(body.rating or "none").inc()
    return out


@router.post("/v1/chat/completions/{response_id}/feedback", dependencies=[Depends(require_inference)],
             summary="Feedback on a captured chat answer (by its response id)")
async def chat_feedback(request: Request, svc: Curate, metrics: Metrics, response_id: str,
                        body: Feedback) -> dict:
    return await _feedback(request, svc, metrics, response_id, body)


@router.post("/v1/completions/{response_id}/feedback", dependencies=[Depends(require_inference)],
             summary="Feedback on a captured completion (by its response id)")
async def completion_feedback(request: Request, svc: Curate, metrics: Metrics, response_id: str,
                              body: Feedback) -> dict:
    return await _feedback(request, svc, metrics, response_id, body)


def _filters(status: str | None, rating: str | None, corrected: bool | None, model: str | None,
             served_model: str | None, key_id: str | None, dataset_id: str | None,
             since: int | None) -> dict[str, Any]:
    return {"status": status, "rating": rating, "corrected": corrected, "model": model,
            "served_model": served_model, "key_id": key_id, "dataset_id": dataset_id,
            "since": since}


@admin.get("", summary="The review queue: captured rows, filtered, newest first",
           response_model=Page[Capture], response_model_exclude_unset=True)
async def list_captures(
        svc: Curate,
        status: Literal["pending", "accepted", "rejected"] | None = None,
        rating: Literal["up", "down", "none"] | None = None,
        corrected: bool | None = None, model: str | None = Query(None, max_length=300),
        served_model: str | None = Query(None, max_length=300),
        key_id: str | None = Query(None, max_length=40),
        dataset_id: str | None = Query(None, pattern=DS_ID, description="Published into this version."),
        since: int | None = Query(None, ge=0),
        json_valid: bool | None = Query(None, description="Only answers that are (not) JSON."),
        similar_to: str | None = Query(None, pattern=DS_ID, description="Add each row's similarity "
                                       "to its nearest training prompt of this version."),
        min_similarity: float | None = Query(None, ge=0, le=1),
        max_similarity: float | None = Query(None, ge=0, le=1),
        offset: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=500)) -> dict:
    filters = _filters(status, rating, corrected, model, served_model, key_id, dataset_id, since)
    if (min_similarity is not None or max_similarity is not None) and similar_to is None:
        raise InvalidRequest("min_similarity/max_similarity need similar_to=<dataset id>",
                             code="similar_to_required", param="similar_to")
    if similar_to is None and json_valid is None:
        rows, total = await svc.list(filters, offset, limit + 1)
        return _page([capture_view(r) for r in rows[:limit]], len(rows) > limit, total)
    # these filters apply after the query: up to 5,000 rows of the other filters are scanned
    rows, _ = await svc.list(filters, 0, 5000)
    views = await offload(_views, rows)  # thousands of answers parsed: not on the event loop
    if json_valid is not None:
        views = [v for v in views if v["metrics"]["json_valid"] is json_valid]
    if similar_to is not None:
        sims = await svc.similarities(similar_to, [r for r in rows if r.id in {v["id"] for v in views}])
        views = [{**v, "similarity": sims[v["id"]]} for v in views
                 if (min_similarity is None or sims[v["id"]] >= min_similarity)
                 and (max_similarity is None or sims[v["id"]] <= max_similarity)]
    return _page(views[offset:offset + limit], offset + limit < len(views), len(views))


def _views(rows: list[Any]) -> list[dict]:
    return [capture_view(r) for r in rows]


def _page(data: list[dict], has_more: bool, total: int) -> dict:
    """A ``Page`` of Capture objects plus the ``total`` matching the filters."""
    return {"object": "list", "data": data, "has_more": has_more, "total": total}


@admin.get("/drift", summary="Drift of captured prompts from a version's training prompts")
async def drift(svc: Curate, dataset_id: str = Query(..., pattern=DS_ID),
                model: str | None = Query(None, max_length=300),
                served_model: str | None = Query(None, max_length=300),
                since: int | None = Query(None, ge=0), limit: int = Query(5000, ge=1, le=50_000),
                novel_below: float = Query(0.2, gt=0, le=1), max_ks: float = Query(0.3, gt=0, le=1),
                max_novel_share: float = Query(0.5, gt=0, le=1)) -> dict:
    filters = _filters(None, None, None, model, served_model, None, None, since)
    return await svc.drift(dataset_id, filters, limit, novel_below=novel_below,
                                     max_ks=max_ks, max_novel_share=max_novel_share)


@admin.post("/review", summary="Accept, edit (= accept with a new answer) or reject captures")
async def review(svc: Curate, body: Review) -> dict:
    counts = await svc.review(body.accept, body.reject, [e.model_dump() for e in body.edit])
    return {"object": "capture.review", **counts}


@admin.post("/publish", status_code=201, summary="Accepted captures -> a new dataset version")
async def publish(svc: Curate, body: Publish) -> JSONResponse:
    out = await svc.publish(body.base_dataset_id, body.name, body.ids)
    return JSONResponse(out, status_code=201)


@admin.post("/retrain", status_code=201,
            summary="Publish, then train on the new version (the gate decides as for any job)")
async def retrain(svc: Curate, body: Retrain) -> JSONResponse:
    out = await svc.retrain(body.base_dataset_id, body.base_model, name=body.name,
                                      ids=body.ids, backend=body.backend,
                                      hyperparameters=body.hyperparameters,
                                      gate_alias=body.gate_alias)
    return JSONResponse(out, status_code=201)


@admin.get("/{capture_id}", summary="One captured row", response_model=Capture,
           response_model_exclude_unset=True)
async def get_capture(svc: Curate, capture_id: str) -> dict:
    return capture_view(await svc.get(capture_id))

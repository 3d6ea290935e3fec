"""``/v1/synthetic/jobs``: generate examples with a teacher, review them, publish a version."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from ..schemas import PublishRequest, ReviewRequest, SynthRequest, parse_model
from .datasets import _read_json
from .deps import IngestLimiterDep, SynthDep

router = APIRouter(prefix="/v1/synthetic/jobs", tags=["synthetic"])


@router.post("", status_code=201, summary="Start a synthetic-data job (runs in the background)")
async def create_job(request: Request, svc: SynthDep) -> dict:
    body = parse_model(SynthRequest, await _read_json(request, 4 << 20))
    return await svc.create(body)


@router.get("", summary="List synthetic-data jobs")
async def list_jobs(svc: SynthDep, limit: int = Query(20, ge=1, le=100),
                    offset: int = Query(0, ge=0)) -> dict:
    return await svc.list(limit, offset)


@router.get("/{job_id}", summary="A job: status, progress, parse failures, row counts")
async def get_job(svc: SynthDep, job_id: str) -> dict:
    return await svc.get(job_id)


@router.post("/{job_id}/cancel", summary="Stop a running job (rows so far stay in the draft)")
async def cancel_job(svc: SynthDep, job_id: str) -> dict:
    return await svc.cancel(job_id)


@router.get("/{job_id}/rows", summary="The draft's rows with their review status")
async def job_rows(svc: SynthDep, job_id: str,
                   status: Literal["pending", "accepted", "rejected"] | None = Query(None),
                   offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)) -> dict:
    return await svc.rows(job_id, status, offset, limit)


@router.post("/{job_id}/review", summary="Accept/reject draft rows by id")
async def review(request: Request, svc: SynthDep, job_id: str) -> dict:
    body = parse_model(ReviewRequest, await _read_json(request, 4 << 20))
    return await svc.review(job_id, body)


@router.post("/{job_id}/publish", summary="Accepted rows -> a new dataset version")
async def publish(request: Request, svc: SynthDep, limiter: IngestLimiterDep,
                  job_id: str) -> JSONResponse:
    raw = await request.body()
    body = parse_model(PublishRequest, await _read_json(request, 1 << 16) if raw.strip() else {})
    async with limiter:
        result = await svc.publish(job_id, body)
    return JSONResponse(result.dataset, status_code=201 if result.created else 200)

"""``/v1/jobs``: create, list, get, cancel, delete, events (paginated and SSE)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tuneloop.contracts import Deleted, Job, JobEvent, Page

from ..db import TERMINAL
from ..schemas import JobCreate
from ..service import TrainerService
from .deps import SettingsDep, SupervisorDep, TrainerDep

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
STATUSES = "^(validating|queued|running|succeeded|failed|cancelled)$"


@router.post("", status_code=201, summary="Validate and queue a training job (or, with "
             "dry_run, estimate it: 200, nothing queued)", response_model=Job,
             response_model_exclude_unset=True)
async def create_job(body: JobCreate, svc: TrainerDep, settings: SettingsDep,
                     supervisor: SupervisorDep) -> JSONResponse:
    backend = body.backend or settings.backend
    if body.dry_run:
        est = await svc.estimate_job(
            dataset_id=body.dataset_id, base_model=body.base_model, backend=backend,
            gpus=body.gpus, hyperparameters=body.hyperparameters, export=body.export)
        return JSONResponse(est, status_code=200)
    job = await svc.create_job(
        dataset_id=body.dataset_id, base_model=body.base_model, backend=backend, gpus=body.gpus,
        hyperparameters=body.hyperparameters, export=body.export, callback_url=body.callback_url,
        suffix=body.suffix, gate_alias=body.gate_alias)
    supervisor.wake.set()
    return JSONResponse(Job.model_validate(job).to_dict(), status_code=201)


@router.get("", summary="List jobs, newest first (cursor: ?after=<last job id>)",
            response_model=Page[Job],
            response_model_exclude_unset=True)
async def list_jobs(svc: TrainerDep, status: str | None = Query(None, pattern=STATUSES),
                    limit: int = Query(20, ge=1, le=500), after: str | None = None) -> dict:
    return await svc.list_jobs(status=status, limit=limit, after=after)


@router.get("/{job_id}", summary="One job with its progress", response_model=Job,
            response_model_exclude_unset=True)
async def get_job(job_id: str, svc: TrainerDep) -> dict:
    return await svc.get_job(job_id)


@router.post("/{job_id}/cancel", summary="Cancel a queued or running job", response_model=Job,
             response_model_exclude_unset=True)
async def cancel_job(job_id: str, svc: TrainerDep, supervisor: SupervisorDep) -> dict:
    job, kill = await svc.request_cancel(job_id)
    supervisor.wake.set()
    if not kill:
        row = await svc.job_row(job_id)
        try:
            await svc.datasets.unlease(row.dataset_id, job_id)
        except Exception:  # a stale lease is harmless
            pass
    return job


@router.delete("/{job_id}", summary="Delete a finished job (its model version stays)",
               response_model=Deleted,
               response_model_exclude_unset=True)
async def delete_job(job_id: str, svc: TrainerDep) -> dict:
    row = await svc.job_row(job_id)
    out = await svc.delete_job(job_id)
    try:  # normally released when the job ended; make sure no stale holder remains
        await svc.datasets.unlease(row.dataset_id, job_id)
    except Exception:  # the dataset may be gone or the lease already released
        pass
    return out


@router.get("/{job_id}/events", summary="Events after a sequence number (oldest first)",
            response_model=Page[JobEvent],
            response_model_exclude_unset=True)
async def job_events(job_id: str, svc: TrainerDep, after: int = Query(0, ge=0),
                     limit: int = Query(100, ge=1, le=1000)) -> dict:
    return await svc.events(job_id, after=after, limit=limit)


@router.get("/{job_id}/events/stream", summary="Live events (Server-Sent Events)")
async def job_events_stream(job_id: str, request: Request, svc: TrainerDep,
                            settings: SettingsDep, after: int = Query(0, ge=0)) -> StreamingResponse:
    await svc.get_job(job_id)  # 404 before the stream starts
    last = request.headers.get("last-event-id", "")
    start = int(last) if last.isdigit() else after
    return StreamingResponse(_sse(request, svc, job_id, start, settings.poll_interval_s),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _sse(request: Request, svc: TrainerService, job_id: str, after: int,
               interval: float) -> AsyncIterator[bytes]:
    """Each event as ``id/event/data``; ends after the job's final state; heartbeats meanwhile."""
    idle = 0.0
    while True:
        page = await svc.events(job_id, after=after, limit=500)
        for ev in page["data"]:
            after = ev["seq"]
            yield f"id: {ev['seq']}\nevent: {ev['type']}\ndata: {json.dumps(ev)}\n\n".encode()
            idle = 0.0
        if page["has_more"]:
            continue
        job = await svc.get_job(job_id)
        if job["status"] in TERMINAL:
            final = await svc.events(job_id, after=after, limit=500)
            if not final["data"]:
                yield b"event: end\ndata: {\"status\": \"" + job["status"].encode() + b"\"}\n\n"
                return
            continue
        if await request.is_disconnected():
            return
        await asyncio.sleep(interval)
        idle += interval
        if idle >= 15:
            idle = 0.0
            yield b": keep-alive\n\n"

"""The OpenAI fine-tuning API shape over the same jobs: ``/v1/files`` and ``/v1/fine_tuning/jobs``.

``openai.OpenAI(base_url=...).files.create(file=..., purpose="fine-tune")`` stores the JSONL and
creates a dataset version through the dataset service (validation errors come back as 422);
``fine_tuning.jobs.create(training_file=..., model=...)`` creates a job like ``POST /v1/jobs``.
Statuses: validating_files -> queued -> running -> succeeded | failed | cancelled.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from tuneloop import layout
from tuneloop.errors import InvalidRequest, PayloadTooLarge, TuneloopError
from tuneloop.ids import new_id
from tuneloop.offload import offload
from tuneloop.storage import ArtifactStore

from ..db import Job
from ..schemas import ALIAS_PATTERN, FineTuningJobCreate, openai_to_native
from ..views import file_view
from .deps import SettingsDep, SupervisorDep, TrainerDep

router = APIRouter(tags=["openai"])
MAX_UPLOAD = 1 << 30
_STATUS = {"validating": "validating_files"}
_LEVEL = {"warning": "warn", "error": "error"}


@contextlib.asynccontextmanager
async def _tmp_dir() -> AsyncIterator[Path]:
    """A temporary folder, made and removed off the event loop."""
    tmp = Path(await offload(tempfile.mkdtemp, prefix="tuneloop-upload-"))
    try:
        yield tmp
    finally:
        await offload(shutil.rmtree, tmp, True)


def _download(store: ArtifactStore, key: str, dst: Path) -> Path:
    """A stored file as a local file (any store: local folder or object store)."""
    with store.open(key, "rb") as src, open(dst, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    return dst


# ----------------------------------------------------------------------------- files
@router.post("/v1/files", summary="Upload a fine-tuning JSONL (creates a dataset version)")
async def create_file(request: Request, svc: TrainerDep) -> JSONResponse:
    form = await request.form(max_files=1, max_fields=10)
    upload, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("multipart field 'file' is required", code="file_required", param="file")
    if purpose != "fine-tune":
        raise InvalidRequest(f"purpose must be 'fine-tune' (got {purpose!r})",
                             code="unsupported_purpose", param="purpose")
    file_id = new_id("file")
    key = layout.upload_file(file_id)
    filename = Path(upload.filename or "train.jsonl").name
    async with _tmp_dir() as tmp:
        path = tmp / "upload.jsonl"
        size = 0
        fh = await offload(open, path, "wb")
        try:
            while chunk := await upload.read(1 << 20):
                size += len(chunk)
                if size > MAX_UPLOAD:
                    raise PayloadTooLarge(f"file is larger than {MAX_UPLOAD} bytes")
                await offload(fh.write, chunk)
        finally:
            await offload(fh.close)  # (flushes: a write)
        if size == 0:
            raise InvalidRequest("the uploaded file is empty", code="file_empty", param="file")
        ds = await svc.datasets.upload_file(path, name=Path(filename).stem[:80] or "upload")
        await offload(svc.store.put_file, path, key)
    view = await svc.add_file(file_id, filename, size, "fine-tune", ds["id"], key)
    return JSONResponse(view, status_code=200)


@router.get("/v1/files", summary="List uploaded files")
async def list_files(svc: TrainerDep, purpose: str | None = None) -> dict:
    return await svc.list_files(purpose)


@router.get("/v1/files/{file_id}", summary="One file")
async def get_file(file_id: str, svc: TrainerDep) -> dict:
    return file_view(await svc.get_file_row(file_id))


@router.get("/v1/files/{file_id}/content", summary="The uploaded JSONL")
async def file_content(file_id: str, svc: TrainerDep) -> Response:
    row = await svc.get_file_row(file_id)
    data = await offload(svc.store.read_bytes, row.key)
    return Response(data, media_type="application/jsonl")


@router.delete("/v1/files/{file_id}", summary="Delete a file (its dataset version stays)")
async def delete_file(file_id: str, svc: TrainerDep) -> dict:
    return await svc.delete_file(file_id)


# ---------------------------------------------------------------------- fine-tuning jobs
@router.post("/v1/fine_tuning/jobs", summary="Create a fine-tuning job (OpenAI shape)")
async def create_ft_job(body: FineTuningJobCreate, svc: TrainerDep, settings: SettingsDep,
                        supervisor: SupervisorDep) -> dict:
    try:
        hp, extra = openai_to_native(body)
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="unsupported_method", param="method") from exc
    train = await svc.get_file_row(body.training_file)
    dataset_id = train.dataset_id
    if body.validation_file:
        val = await svc.get_file_row(body.validation_file)
        async with _tmp_dir() as tmp:  # the two files, from the store (local or object store)
            train_path = await offload(_download, svc.store, train.key, tmp / "train.jsonl")
            val_path = await offload(_download, svc.store, val.key, tmp / "eval.jsonl")
            ds = await svc.datasets.upload_file(train_path, eval_path=val_path,
                                                name=Path(train.filename).stem[:80] or "upload")
        dataset_id = ds["id"]
    unknown = set(extra) - {"backend", "gpus", "export", "callback_url", "gate_alias"}
    if unknown:
        raise InvalidRequest(f"unknown tuneloop options: {sorted(unknown)}", param="tuneloop")
    gate_alias = extra.get("gate_alias")
    if gate_alias is not None and not (isinstance(gate_alias, str) and re.match(ALIAS_PATTERN, gate_alias)):
        raise InvalidRequest(f"gate_alias must match {ALIAS_PATTERN} (got {str(gate_alias)[:80]!r})",
                             param="tuneloop.gate_alias")
    backend = extra.get("backend") or settings.backend
    if backend not in ("auto", "unsloth", "peft"):
        raise InvalidRequest(f"backend must be auto|unsloth|peft (got {backend!r})",
                             param="tuneloop.backend")
    job = await svc.create_job(dataset_id=dataset_id, base_model=body.model, backend=backend,
                               gpus=extra.get("gpus", 1), hyperparameters=hp, export=extra.get("export") or {},
                               callback_url=extra.get("callback_url"), suffix=body.suffix,
                               source="openai", training_file=body.training_file,
                               validation_file=body.validation_file, gate_alias=gate_alias)
    supervisor.wake.set()
    return ft_view(await svc.job_row(job["id"]))


@router.get("/v1/fine_tuning/jobs", summary="List fine-tuning jobs")
async def list_ft_jobs(svc: TrainerDep, after: str | None = None,
                       limit: int = Query(20, ge=1, le=500)) -> dict:
    rows, more = await svc.list_rows(limit=limit, after=after)
    return {"object": "list", "data": [ft_view(j) for j in rows], "has_more": more}


@router.get("/v1/fine_tuning/jobs/{job_id}", summary="Retrieve a fine-tuning job")
async def get_ft_job(job_id: str, svc: TrainerDep) -> dict:
    return ft_view(await svc.job_row(job_id))


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel", summary="Cancel a fine-tuning job")
async def cancel_ft_job(job_id: str, svc: TrainerDep, supervisor: SupervisorDep) -> dict:
    await svc.request_cancel(job_id)
    supervisor.wake.set()
    return ft_view(await svc.job_row(job_id))


@router.get("/v1/fine_tuning/jobs/{job_id}/events", summary="Job events, newest first")
async def ft_events(job_id: str, svc: TrainerDep, after: str | None = None,
                    limit: int = Query(20, ge=1, le=1000)) -> dict:
    before = _seq_from_event_id(after, job_id) if after else 0
    page = await svc.events(job_id, after=before, limit=limit, newest_first=True)
    return {"object": "list", "data": [ft_event(job_id, e) for e in page["data"]],
            "has_more": page["has_more"]}


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints", summary="Epoch/step checkpoints")
async def ft_checkpoints(job_id: str, svc: TrainerDep,
                         limit: int = Query(10, ge=1, le=100)) -> dict:
    events = await svc.events_of_type(job_id, "checkpoint")
    data = [{
        "object": "fine_tuning.job.checkpoint", "id": f"ftckpt-{job_id[4:]}-{e['data'].get('step')}",
        "created_at": e["created_at"], "fine_tuning_job_id": job_id,
        "fine_tuned_model_checkpoint": e["data"].get("key"), "step_number": e["data"].get("step"),
        "metrics": {"step": e["data"].get("step"), "train_loss": e["data"].get("train_loss"),
                    "valid_loss": e["data"].get("eval_loss")},
    } for e in reversed(events)]
    return {"object": "list", "data": data[:limit], "has_more": len(data) > limit,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


# ----------------------------------------------------------------------------- views
def ft_view(j: Job) -> dict[str, Any]:
    hp = j.hyperparameters or {}
    p = j.progress or {}
    err = j.error or {}
    return {
        "id": j.id, "object": "fine_tuning.job", "created_at": j.created_at,
        "finished_at": j.finished_at, "model": j.base_model,
        "fine_tuned_model": j.model_id if j.registered else None,
        "organization_id": "org-tuneloop", "result_files": [],
        "status": _STATUS.get(j.status, j.status),
        "training_file": j.training_file or j.dataset_id, "validation_file": j.validation_file,
        "hyperparameters": {"n_epochs": hp.get("num_train_epochs"),
                            "batch_size": hp.get("per_device_train_batch_size", 0)
                            * hp.get("gradient_accumulation_steps", 1),
                            "learning_rate_multiplier": (hp.get("learning_rate") or 2e-4) / 2e-4},
        "method": {"type": "supervised", "supervised": {"hyperparameters": hp}},
        "trained_tokens": p.get("num_tokens"), "seed": hp.get("seed"),
        "error": {"code": err.get("code"), "message": err.get("message"), "param": None} if err else None,
        "estimated_finish": (int(j.started_at or 0) + int(p["eta_s"])) if p.get("eta_s") else None,
        "integrations": [], "metadata": None, "user_provided_suffix": j.suffix,
        "dataset_id": j.dataset_id,
    }


def ft_event(job_id: str, e: dict[str, Any]) -> dict[str, Any]:
    data, type_ = e["data"], e["type"]
    if type_ == "metrics":
        msg = f"Step {data.get('step')}/{data.get('total_steps')}: training loss={data.get('loss'):.4f}" \
            if isinstance(data.get("loss"), (int, float)) else f"Step {data.get('step')}"
    elif type_ == "eval":
        msg = f"Step {data.get('step')}: eval loss={data.get('eval_loss')}"
    else:
        msg = data.get("message") or type_
    return {"object": "fine_tuning.job.event", "id": f"ftevent-{job_id[4:]}-{e['seq']}",
            "created_at": e["created_at"], "level": _LEVEL.get(type_, "info"), "message": msg,
            "data": data, "type": "metrics" if type_ in ("metrics", "eval") else "message"}


def _seq_from_event_id(event_id: str, job_id: str) -> int:
    prefix = f"ftevent-{job_id[4:]}-"
    if not event_id.startswith(prefix) or not event_id[len(prefix):].isdigit():
        raise TuneloopError(f"unknown event id {event_id[:80]!r}", code="invalid_cursor", param="after",
                            status=400)
    return int(event_id[len(prefix):])

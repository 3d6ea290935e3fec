"""``/v1/datasets``: thin routes. Bodies are streamed to disk; the service's methods are awaited
directly (they reach the DB through the repository and offload their blocking work), and the
routes' own file work runs in a thread (:func:`tuneloop.offload.offload`): nothing that touches a
file, the DB or the store runs on the loop. The service, settings and limits come in as
dependencies (:mod:`.deps`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from tuneloop.errors import InvalidRequest, PayloadTooLarge, TuneloopError, UnsupportedMediaType
from tuneloop import layout
from tuneloop.contracts import Dataset, Deleted, Lease, Page, RowsPage
from tuneloop.examples.support_tickets import write_jsonl
from tuneloop.offload import offload

from ..schemas import ExampleRequest, JsonUpload, PushRequest, UploadOptions, check_holder, parse_model
from ..service import DatasetService, Ingested, Input
from ..settings import DatasetSettings
from ..sources import hub_to_jsonl, name_from_filename, push_to_hub, resolve_import_path, write_rows
from .deps import DatasetsDep, IngestLimiterDep, MetricsDep, SettingsDep

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

JSON_TYPES = {"application/json"}
JSONL_TYPES = {"application/jsonl", "application/x-ndjson", "application/x-jsonlines",
               "application/jsonlines", "text/jsonl", "text/plain", "application/octet-stream"}
COMPRESSED_TYPES = {"application/gzip", "application/x-gzip", "application/zip",
                    "application/x-bzip2", "application/x-xz", "application/zstd"}
_CHUNK = 1 << 16


def _respond(result: Ingested) -> JSONResponse:
    """201 for a new version, 200 when identical content was stored before; checked against
    the contract here because a returned ``JSONResponse`` skips FastAPI's check."""
    body = Dataset.model_validate(result.dataset).to_dict()
    return JSONResponse(body, status_code=201 if result.created else 200)


class Ingestion:
    """Runs ingests: at most DATASET_MAX_CONCURRENT_INGESTS at once."""

    def __init__(self, svc: DatasetService, settings: DatasetSettings,
                 limiter: anyio.CapacityLimiter) -> None:
        self.svc, self.settings, self.limiter = svc, settings, limiter

    async def run(self, src: Input, opts: UploadOptions, source: dict[str, Any],
                  eval_src: Input | None = None, replay_src: Input | None = None) -> Ingested:
        async with self.limiter:
            return await self.svc.ingest(src, opts, source, eval_src, replay_src)


async def _ingestion(svc: DatasetsDep, settings: SettingsDep,
                     limiter: IngestLimiterDep) -> Ingestion:
    return Ingestion(svc, settings, limiter)


IngestionDep = Annotated[Ingestion, Depends(_ingestion)]


def _check_length(request: Request, limit: int) -> None:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")


@router.post("", summary="Upload a JSONL dataset (multipart, raw JSONL or JSON body)",
             response_model=Dataset, status_code=201,
             response_model_exclude_unset=True)
async def create_dataset(request: Request, ingestion: IngestionDep,
                         metrics: MetricsDep) -> JSONResponse:
    """Count every refused upload (``uploads_total{result="rejected"|"error"}``)."""
    uploads = metrics.uploads
    try:
        return await _create(request, ingestion)
    except (TuneloopError, HTTPException) as exc:
        status = exc.status if isinstance(exc, TuneloopError) else exc.status_code
        uploads.labels("rejected" if status < 500 else "error").inc()
        raise
    except Exception:
        uploads.labels("error").inc()
        raise


async def _create(request: Request, ingestion: Ingestion) -> JSONResponse:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    settings = ingestion.settings
    if ctype == "multipart/form-data":
        _check_length(request, settings.max_upload_bytes * 2)
        return await _multipart(request, ingestion)
    if ctype in JSON_TYPES:
        _check_length(request, settings.max_json_body_bytes)
        return await _json(request, ingestion)
    if ctype in JSONL_TYPES:
        _check_length(request, settings.max_upload_bytes)
        return await _raw(request, ingestion)
    if ctype in COMPRESSED_TYPES:
        raise UnsupportedMediaType(f"content type {ctype!r} is compressed; upload plain JSONL",
                                   code="compressed_upload")
    raise UnsupportedMediaType(
        f"unsupported content type {ctype or '(none)'!r}: use multipart/form-data (field 'file'), "
        "application/jsonl (raw JSONL body) or application/json ({\"rows\": [...]} or "
        "{\"source\": {...}})", param="content-type")


async def _multipart(request: Request, ingestion: Ingestion) -> JSONResponse:
    form = await request.form(max_files=3, max_fields=20)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("multipart upload needs a file field named 'file'",
                                 code="missing_file", param="file")
        eval_upload = form.get("eval_file")
        if eval_upload is not None and not isinstance(eval_upload, UploadFile):
            raise InvalidRequest("'eval_file' must be a file", code="invalid_request", param="eval_file")
        replay_upload = form.get("replay_file")
        if replay_upload is not None and not isinstance(replay_upload, UploadFile):
            raise InvalidRequest("'replay_file' must be a file", code="invalid_request", param="replay_file")
        for f in (upload, eval_upload, replay_upload):
            if f is not None and (f.content_type or "").lower() in COMPRESSED_TYPES:
                raise UnsupportedMediaType(f"'{f.filename}' is compressed ({f.content_type}); "
                                           "upload plain JSONL", code="compressed_upload")
        fields = {k: v for k, v in form.multi_items() if k not in ("file", "eval_file", "replay_file")}
        opts = parse_model(UploadOptions, fields)
        source = {"kind": "upload", "filename": name_from_filename(upload.filename)}
        if opts.name is None and source["filename"]:
            opts.name = source["filename"]
        result = await ingestion.run(upload.file, opts, source,
                                     eval_upload.file if eval_upload else None,
                                     replay_upload.file if replay_upload else None)
        return _respond(result)
    finally:
        await form.close()


async def _raw(request: Request, ingestion: Ingestion) -> JSONResponse:
    """Raw JSONL body (curl --data-binary @file.jsonl); options as query parameters."""
    settings = ingestion.settings
    opts = parse_model(UploadOptions, dict(request.query_params))
    async with ingestion.svc.tmp_dir() as tmp:
        path = Path(tmp) / "body.jsonl"
        size = 0
        async with await anyio.open_file(path, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > settings.max_upload_bytes:
                    raise PayloadTooLarge(f"upload is larger than {settings.max_upload_bytes} bytes")
                await fh.write(chunk)
        return _respond(await ingestion.run(path, opts, {"kind": "upload"}))


async def _read_json(request: Request, limit: int) -> Any:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"JSON body is larger than {limit} bytes "
                                  "(use a multipart or raw JSONL upload for big files)")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from exc


async def _json(request: Request, ingestion: Ingestion) -> JSONResponse:
    settings = ingestion.settings
    body = parse_model(JsonUpload, await _read_json(request, settings.max_json_body_bytes))
    opts = body.options()
    async with ingestion.svc.tmp_dir() as tmp:
        eval_path = replay_path = None
        if body.eval_rows is not None:
            eval_path = Path(tmp) / "eval.jsonl"
            await offload(write_rows, body.eval_rows, eval_path)
        if body.replay_rows is not None:
            replay_path = Path(tmp) / "replay.jsonl"
            await offload(write_rows, body.replay_rows, replay_path)
        if body.rows is not None:
            if not body.rows:
                raise InvalidRequest("'rows' is empty", code="no_rows", param="rows")
            path = Path(tmp) / "rows.jsonl"
            await offload(write_rows, body.rows, path)
            source: dict[str, Any] = {"kind": "rows"}
            if body.lineage is not None:
                source["lineage"] = body.lineage.model_dump()
        elif body.source.path is not None:
            path = await offload(resolve_import_path, settings, body.source.path)
            source = {"kind": "path", "path": str(path)}
        else:
            path = Path(tmp) / "hub.jsonl"
            await offload(hub_to_jsonl, settings, body.source, path)
            source = {"kind": "hf_dataset", "hf_dataset": body.source.hf_dataset,
                      "split": body.source.split}
        if opts.name is None:
            opts.name = name_from_filename(path.name) if source["kind"] == "path" else None
        return _respond(await ingestion.run(path, opts, source, eval_path, replay_path))


class _anull:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


@router.post("/examples/support-tickets", summary="Generate and store the built-in example task",
             response_model=Dataset, status_code=201,
             response_model_exclude_unset=True)
async def create_example(request: Request, ingestion: IngestionDep) -> JSONResponse:
    raw = await _read_json(request, 1 << 16) if await request.body() else {}
    body = parse_model(ExampleRequest, raw)
    opts = body.options()
    opts.name = opts.name or f"support-tickets-{body.n}-seed{body.example_seed}"
    async with ingestion.svc.tmp_dir() as tmp:
        path = Path(tmp) / "tickets.jsonl"
        await offload(write_jsonl, str(path), body.n, body.example_seed)
        source = {"kind": "example", "example": "support-tickets", "n": body.n,
                  "seed": body.example_seed}
        return _respond(await ingestion.run(path, opts, source))


@router.get("", summary="List dataset versions (newest first)", response_model=Page[Dataset],
            response_model_exclude_unset=True)
async def list_datasets(svc: DatasetsDep, limit: int = Query(20, ge=1, le=100),
                        offset: int = Query(0, ge=0)) -> dict:
    return await svc.list(limit, offset)


@router.get("/{dataset_id}", summary="One dataset version", response_model=Dataset,
            response_model_exclude_unset=True)
async def get_dataset(svc: DatasetsDep, dataset_id: str) -> dict:
    return await svc.get(dataset_id)


@router.get("/{dataset_id}/rows", summary="A page of a split's rows", response_model=RowsPage,
            response_model_exclude_unset=True)
async def get_rows(svc: DatasetsDep, dataset_id: str,
                   split: Literal["train", "eval"] = Query("train"),
                   offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)) -> dict:
    return await svc.rows(dataset_id, split, offset, limit)


@router.get("/{dataset_id}/report", summary="The quality report (?format=text: readable summary)",
            response_model=None)
async def get_report(svc: DatasetsDep, limiter: IngestLimiterDep, dataset_id: str,
                     format: Literal["json", "text"] = Query("json"),
                     tokenizer: str | None = Query(None, max_length=512),
                     max_seq_length: int | None = Query(None, ge=8, le=1 << 20)) -> Any:
    """``tokenizer``/``max_seq_length`` recompute the token section for another base model."""
    if format == "text":
        return PlainTextResponse(await svc.report_text(dataset_id, tokenizer,
                                                   max_seq_length))
    async with limiter if tokenizer or max_seq_length else _anull():
        return await svc.report(dataset_id, tokenizer, max_seq_length)


@router.delete("/{dataset_id}", summary="Delete a version (409 dataset_in_use while leased)",
               response_model=Deleted,
               response_model_exclude_unset=True)
async def delete_dataset(svc: DatasetsDep, dataset_id: str) -> dict:
    return await svc.delete(dataset_id)


@router.put("/{dataset_id}/leases/{holder}", summary="Mark a version as used by a job",
            response_model=Lease,
            response_model_exclude_unset=True)
async def put_lease(svc: DatasetsDep, dataset_id: str, holder: str) -> dict:
    return await svc.lease(dataset_id, check_holder(holder))


@router.delete("/{dataset_id}/leases/{holder}", summary="Release a lease", response_model=Lease,
               response_model_exclude_unset=True)
async def delete_lease(svc: DatasetsDep, dataset_id: str, holder: str) -> dict:
    return await svc.unlease(dataset_id, check_holder(holder))


@router.post("/{dataset_id}/push", summary="Push a version to the Hugging Face Hub (optional)")
async def push(request: Request, svc: DatasetsDep, settings: SettingsDep,
               dataset_id: str) -> dict:
    body = parse_model(PushRequest, await _read_json(request, 1 << 16))
    await svc.get(dataset_id)  # 404 before anything is fetched
    hf_dir = await offload(svc.store.get_dir, layout.dataset_hf(dataset_id),
                           svc.tmp_root / f"push-{dataset_id}")
    url = await offload(push_to_hub, settings, hf_dir, body.repo_id, body.private)
    return {"object": "dataset.push", "dataset_id": dataset_id, "repo_id": body.repo_id, "url": url}

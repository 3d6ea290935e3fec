"""Eval runs: ``POST /v1/evals`` (JSON, or multipart with an eval ``file`` + ``config``),
``GET /v1/evals``, ``GET /v1/evals/{id}``, ``GET /v1/evals/{id}/samples``."""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from tuneloop.contracts import EvalRun, Page
from tuneloop.errors import InvalidRequest, Unprocessable, UnsupportedMediaType

from ..auth import require_admin
from ..proxy import check_length, read_body
from ..schemas import EvalCreate
from ..settings import GatewaySettings
from .deps import EvalsDep, SettingsDep

router = APIRouter(prefix="/v1/evals", tags=["evals"], dependencies=[Depends(require_admin)])


def _parse_jsonl(data: bytes) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise Unprocessable(f"eval file line {n}: invalid JSON ({exc.msg})",
                                code="eval_file_invalid", details={"line": n}) from exc
        if not isinstance(row, dict):
            raise Unprocessable(f"eval file line {n}: not a JSON object", code="eval_file_invalid",
                                details={"line": n})
        rows.append({**row, "line": n})
    return rows


async def _spec_from_request(request: Request,
                             s: GatewaySettings) -> tuple[EvalCreate, dict | None]:
    ctype = request.headers.get("content-type", "")
    try:
        if ctype.startswith("multipart/form-data"):
            check_length(request, s.max_upload_bytes)
            form = await request.form()
            upload, raw = form.get("file"), form.get("config") or "{}"
            if upload is None or isinstance(upload, str):
                raise InvalidRequest("multipart evals need a 'file' part (JSONL)", param="file")
            if not isinstance(raw, str):
                raise InvalidRequest("'config' must be a form field holding JSON", param="config")
            data = await upload.read()
            config = json.loads(raw)
            if not isinstance(config, dict):
                raise InvalidRequest("'config' must be a JSON object", param="config")
            config["rows"] = _parse_jsonl(data)
            return EvalCreate.model_validate(config), {"file": upload.filename,
                                                       "rows": len(config["rows"])}
        if ctype and not ctype.startswith("application/json"):
            raise UnsupportedMediaType("send JSON or multipart/form-data", code="unsupported_media_type")
        body = await read_body(request, s.max_upload_bytes)
        return EvalCreate.model_validate_json(body or b"{}"), None
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from exc
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"'config' is not valid JSON: {exc.msg}", param="config") from exc


@router.post("", summary="Start an eval run (202), or wait for the report", status_code=202,
             response_model=EvalRun,
             response_model_exclude_unset=True)
async def create_eval(request: Request, service: EvalsDep, settings: SettingsDep) -> JSONResponse:
    spec, source = await _spec_from_request(request, settings)
    run_id = await service.create(spec, source=source)
    if spec.wait:
        return JSONResponse(EvalRun.model_validate(await service.wait(run_id)).to_dict(),
                            status_code=200)
    return JSONResponse(EvalRun.model_validate(await service.get(run_id)).to_dict(),
                        status_code=202)


@router.get("", summary="List eval runs (newest first)", response_model=Page[EvalRun],
            response_model_exclude_unset=True)
async def list_evals(service: EvalsDep, limit: int = Query(20, ge=1, le=100),
                     offset: int = Query(0, ge=0)) -> dict:
    return await service.list(limit, offset)


@router.get("/{eval_id}", summary="An eval run and its report", response_model=EvalRun,
            response_model_exclude_unset=True)
async def get_eval(eval_id: str, service: EvalsDep) -> dict:
    return await service.get(eval_id)


@router.get("/{eval_id}/samples", summary="Per-example outputs side by side")
async def get_samples(eval_id: str, service: EvalsDep,
                      suite: Literal["task", "general"] | None = None,
                      offset: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=500)) -> dict:
    return await service.samples(eval_id, suite, offset, limit)

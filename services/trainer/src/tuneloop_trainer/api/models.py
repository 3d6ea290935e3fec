"""``/v1/models``: model versions with lineage."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Query, Request

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", summary="Model versions, newest first")
async def list_models(request: Request, limit: int = Query(50, ge=1, le=500)) -> dict:
    return await anyio.to_thread.run_sync(lambda: request.app.state.trainer.list_models(limit))


@router.get("/{model_id}", summary="One model version: lineage, config, metrics, artifacts, checks")
async def get_model(model_id: str, request: Request) -> dict:
    return await anyio.to_thread.run_sync(request.app.state.trainer.get_model, model_id)

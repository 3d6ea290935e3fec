"""``/v1/models``: model versions with lineage."""

from __future__ import annotations

from fastapi import APIRouter, Query

from tuneloop.contracts import ModelVersion, Page

from .deps import TrainerDep

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", summary="Model versions, newest first", response_model=Page[ModelVersion],
            response_model_exclude_unset=True)
async def list_models(svc: TrainerDep, limit: int = Query(50, ge=1, le=500)) -> dict:
    return await svc.list_models(limit)


@router.get("/{model_id}", summary="One model version: lineage, config, metrics, artifacts, checks",
            response_model=ModelVersion,
            response_model_exclude_unset=True)
async def get_model(model_id: str, svc: TrainerDep) -> dict:
    return await svc.get_model(model_id)

"""Admin API (``Authorization: Bearer <INFERENCE_ADMIN_KEY>``): deployments and aliases."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from tuneloop.errors import ServiceUnavailable, Unauthorized

router = APIRouter(prefix="/admin", tags=["admin"])


def require_admin(request: Request) -> None:
    key = request.app.state.settings.admin_key
    if not key:
        raise ServiceUnavailable("admin API disabled: set INFERENCE_ADMIN_KEY",
                                 code="admin_disabled")
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    if not token or not hmac.compare_digest(token.encode(), key.encode()):
        raise Unauthorized("admin API: invalid or missing admin key", code="invalid_admin_key")


admin = [Depends(require_admin)]


class DeploymentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: str | None = Field(None, description="Model version id (reads models/<id>/merged).")
    name: str | None = Field(None, description="Served name for a `path` deployment.")
    path: str | None = Field(None, description="Local model folder (e.g. the base model).")
    adapter_of: str | None = Field(None, description="Attach `model_id`'s LoRA adapter to this "
                                   "served vLLM base at run time instead of a new engine.")
    tensor_parallel_size: int | None = Field(None, ge=1, le=64, description="GPUs the vLLM "
                                             "engine shards the model over (default: "
                                             "INFERENCE_TENSOR_PARALLEL_SIZE).")


class AliasIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="Served name (version id) the alias should point to; "
                       "a model version id not deployed yet is deployed first.")
    retire_previous: bool = Field(True, description="After the flip, drain and stop the "
                                  "previous version unless something else still uses it.")
    tensor_parallel_size: int | None = Field(None, ge=1, le=64, description="For a model "
                                             "version deployed by this flip: default, the "
                                             "tensor_parallel_size of the version it replaces.")


def _ctl(request: Request) -> Any:
    return request.app.state.controller


@router.post("/deployments", dependencies=admin, status_code=201)
async def create_deployment(body: DeploymentIn, request: Request, response: Response,
                            wait: bool = Query(False)) -> dict[str, Any]:
    """Load a model version (or a local folder) into a new engine; ``?wait=true`` blocks."""
    obj, created = await _ctl(request).create_deployment(
        model_id=body.model_id, name=body.name, path=body.path, adapter_of=body.adapter_of,
        tensor_parallel_size=body.tensor_parallel_size, wait=wait)
    if not created:
        response.status_code = 200
    return obj


@router.get("/deployments", dependencies=admin)
async def list_deployments(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": await _ctl(request).list_deployments(), "has_more": False}


@router.get("/deployments/{dep_id}", dependencies=admin)
async def get_deployment(dep_id: str, request: Request) -> dict[str, Any]:
    return await _ctl(request).get_deployment(dep_id)


@router.delete("/deployments/{dep_id}", dependencies=admin)
async def delete_deployment(dep_id: str, request: Request) -> dict[str, Any]:
    """Drain and stop (409 while an alias points to it)."""
    return await _ctl(request).delete_deployment(dep_id)


@router.get("/gpus", dependencies=admin)
async def gpus(request: Request) -> dict[str, Any]:
    """GPU placement on this replica: each GPU's used share and which engine holds which GPUs
    (``enabled: false`` for the CPU engine)."""
    alloc = _ctl(request).gpus
    return {"enabled": alloc is not None, **(alloc.describe() if alloc is not None else {})}


@router.get("/aliases", dependencies=admin)
async def list_aliases(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": await _ctl(request).list_aliases(), "has_more": False}


@router.get("/aliases/{alias}", dependencies=admin)
async def get_alias(alias: str, request: Request) -> dict[str, Any]:
    return await _ctl(request).get_alias(alias)


@router.put("/aliases/{alias}", dependencies=admin)
async def set_alias(alias: str, body: AliasIn, request: Request) -> dict[str, Any]:
    """Blue/green flip: load + smoke the target if needed, flip, drain + stop the old one."""
    return await _ctl(request).set_alias(alias, body.model,
                                         retire_previous=body.retire_previous,
                                         tensor_parallel_size=body.tensor_parallel_size)


@router.post("/aliases/{alias}/rollback", dependencies=admin)
async def rollback(alias: str, request: Request) -> dict[str, Any]:
    """Flip back to the previous version (same blue/green path)."""
    return await _ctl(request).rollback(alias)


@router.delete("/aliases/{alias}", dependencies=admin)
async def delete_alias(alias: str, request: Request) -> dict[str, Any]:
    return await _ctl(request).delete_alias(alias)

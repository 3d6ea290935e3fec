"""Admin API (``Authorization: Bearer <INFERENCE_ADMIN_KEY>``): deployments and aliases."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from tuneloop.contracts import Alias, Deleted, Deployment, GpuPlacement, Page
from tuneloop.errors import ServiceUnavailable, Unauthorized

from .deps import AliasesDep, DeploymentsDep, SettingsDep

router = APIRouter(prefix="/admin", tags=["admin"])


async def require_admin(request: Request, settings: SettingsDep) -> None:
    key = settings.admin_key
    if not key:
        raise ServiceUnavailable("admin API disabled: set INFERENCE_ADMIN_KEY",
                                 code="admin_disabled")
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    if not token or not hmac.compare_digest(token.encode(), key.encode()):
        raise Unauthorized("admin API: invalid or missing admin key", code="invalid_admin_key")


admin = [Depends(require_admin)]
model_out: dict[str, Any] = {"response_model_exclude_unset": True}  # fields as the service builds them


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


@router.post("/deployments", dependencies=admin, status_code=201, response_model=Deployment,
             **model_out)
async def create_deployment(body: DeploymentIn, deployments: DeploymentsDep, response: Response,
                            wait: bool = Query(False)) -> dict[str, Any]:
    """Load a model version (or a local folder) into a new engine; ``?wait=true`` blocks."""
    row, created = await deployments.create(
        model_id=body.model_id, name=body.name, path=body.path, adapter_of=body.adapter_of,
        tensor_parallel_size=body.tensor_parallel_size, wait=wait)
    if not created:
        response.status_code = 200
    return await deployments.get(row.id)


@router.get("/deployments", dependencies=admin, response_model=Page[Deployment], **model_out)
async def list_deployments(deployments: DeploymentsDep) -> dict[str, Any]:
    return {"object": "list", "data": await deployments.list_all(), "has_more": False}


@router.get("/deployments/{dep_id}", dependencies=admin, response_model=Deployment, **model_out)
async def get_deployment(dep_id: str, deployments: DeploymentsDep) -> dict[str, Any]:
    return await deployments.get(dep_id)


@router.delete("/deployments/{dep_id}", dependencies=admin, response_model=Deployment,
               **model_out)
async def delete_deployment(dep_id: str, deployments: DeploymentsDep) -> dict[str, Any]:
    """Drain and stop (409 while an alias points to it)."""
    return await deployments.delete(dep_id)


@router.get("/gpus", dependencies=admin, response_model=GpuPlacement, **model_out)
async def gpus(deployments: DeploymentsDep) -> dict[str, Any]:
    """GPU placement on this replica: each GPU's used share and which engine holds which GPUs
    (``enabled: false`` for the CPU engine)."""
    alloc = deployments.gpus
    return {"enabled": alloc is not None, **(alloc.describe() if alloc is not None else {})}


@router.get("/aliases", dependencies=admin, response_model=Page[Alias], **model_out)
async def list_aliases(aliases: AliasesDep) -> dict[str, Any]:
    return {"object": "list", "data": await aliases.list_all(), "has_more": False}


@router.get("/aliases/{alias}", dependencies=admin, response_model=Alias, **model_out)
async def get_alias(alias: str, aliases: AliasesDep) -> dict[str, Any]:
    return await aliases.get(alias)


@router.put("/aliases/{alias}", dependencies=admin, response_model=Alias, **model_out)
async def set_alias(alias: str, body: AliasIn, aliases: AliasesDep) -> dict[str, Any]:
    """Blue/green flip: load + smoke the target if needed, flip, drain + stop the old one."""
    return await aliases.set(alias, body.model, retire_previous=body.retire_previous,
                             tensor_parallel_size=body.tensor_parallel_size)


@router.post("/aliases/{alias}/rollback", dependencies=admin, response_model=Alias, **model_out)
async def rollback(alias: str, aliases: AliasesDep) -> dict[str, Any]:
    """Flip back to the previous version (same blue/green path)."""
    return await aliases.rollback(alias)


@router.delete("/aliases/{alias}", dependencies=admin, response_model=Deleted, **model_out)
async def delete_alias(alias: str, aliases: AliasesDep) -> dict[str, Any]:
    return await aliases.delete(alias)

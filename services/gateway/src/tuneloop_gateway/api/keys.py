"""Admin API for keys: create (the key is returned once), list, revoke, capture opt-in."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from ..auth import require_admin

router = APIRouter(prefix="/v1/keys", tags=["keys"], dependencies=[Depends(require_admin)])


class KeyCreate(BaseModel):
    name: str = Field("unnamed", max_length=200, description="A label for humans.")
    scopes: list[Literal["inference", "admin"]] = Field(
        ["inference"], min_length=1, description="inference (chat/completions/models) or admin.")
    rate_limit_rpm: int | None = Field(None, ge=1, le=1_000_000,
                                       description="Requests per minute (default: the gateway's).")
    capture: bool = Field(False, description="Record this key's generations for review (only on "
                          "models/aliases listed in GATEWAY_CAPTURE_MODELS; masked before storage).")


class KeyUpdate(BaseModel):
    model_config = {"extra": "forbid"}
    capture: bool = Field(..., description="Opt this key in to (or out of) traffic capture.")


@router.post("", status_code=201, summary="Create an API key (returned once)")
async def create_key(body: KeyCreate, request: Request) -> dict:
    key, view = await run_in_threadpool(request.app.state.keys.create, body.name,
                                        list(body.scopes), body.rate_limit_rpm, None, body.capture)
    return {**view, "key": key}


@router.get("", summary="List API keys (hashes never leave the gateway)")
async def list_keys(request: Request, include_revoked: bool = False) -> dict:
    data = await run_in_threadpool(request.app.state.keys.list, include_revoked)
    return {"object": "list", "data": data, "has_more": False}


@router.patch("/{key_id}", summary="Change a key's capture opt-in")
async def update_key(key_id: str, body: KeyUpdate, request: Request) -> dict:
    return await run_in_threadpool(request.app.state.keys.set_capture, key_id, body.capture)


@router.delete("/{key_id}", summary="Revoke an API key")
async def revoke_key(key_id: str, request: Request) -> dict:
    return await run_in_threadpool(request.app.state.keys.revoke, key_id)

"""Admin API for keys: create (the key is returned once), list, revoke, capture opt-in, and the
aliases a key is bound to (per-tenant: a key bound to A cannot call B)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field, StringConstraints, model_validator

from ..auth import require_admin
from .deps import KeysDep

Model = Annotated[str, StringConstraints(min_length=1, max_length=300)]
router = APIRouter(prefix="/v1/keys", tags=["keys"], dependencies=[Depends(require_admin)])


class KeyCreate(BaseModel):
    name: str = Field("unnamed", max_length=200, description="A label for humans.")
    scopes: list[Literal["inference", "admin"]] = Field(
        ["inference"], min_length=1, description="inference (chat/completions/models) or admin.")
    rate_limit_rpm: int | None = Field(None, ge=1, le=1_000_000,
                                       description="Requests per minute (default: the gateway's).")
    capture: bool = Field(False, description="Record this key's generations for review (only on "
                          "models/aliases listed in GATEWAY_CAPTURE_MODELS; masked before storage).")
    models: list[Model] | None = Field(
        None, max_length=1000, description="Bind the key to these aliases/served names: it may "
        "generate with them only (403 model_not_allowed otherwise). None: any model.")


class KeyUpdate(BaseModel):
    model_config = {"extra": "forbid"}
    capture: bool | None = Field(None, description="Opt this key in to (or out of) traffic capture.")
    models: list[Model] | None = Field(
        None, max_length=1000, description="Bind the key to these aliases/served names "
        "(an empty list: to none).")
    unbind: bool = Field(False, description="Remove the binding: any model again.")

    @model_validator(mode="after")
    def _something(self) -> "KeyUpdate":
        if self.capture is None and self.models is None and not self.unbind:
            raise ValueError("nothing to change: give capture, models or unbind")
        if self.unbind and self.models is not None:
            raise ValueError("give models or unbind, not both")
        return self


@router.post("", status_code=201, summary="Create an API key (returned once)")
async def create_key(body: KeyCreate, keys: KeysDep) -> dict:
    key, view = await keys.create(body.name, list(body.scopes), body.rate_limit_rpm, None,
                                  body.capture, body.models)
    return {**view, "key": key}


@router.get("", summary="List API keys (hashes never leave the gateway)")
async def list_keys(keys: KeysDep, include_revoked: bool = False) -> dict:
    data = await keys.list(include_revoked)
    return {"object": "list", "data": data, "has_more": False}


@router.patch("/{key_id}", summary="Change a key's capture opt-in or the aliases it is bound to")
async def update_key(key_id: str, body: KeyUpdate, keys: KeysDep) -> dict:
    return await keys.set_capture(key_id, body.capture, body.models, body.unbind)


@router.delete("/{key_id}", summary="Revoke an API key")
async def revoke_key(key_id: str, keys: KeysDep) -> dict:
    return await keys.revoke(key_id)

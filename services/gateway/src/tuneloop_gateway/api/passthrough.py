"""Thin passthroughs of public admin state that the gateway did not route yet (used by the web
console, and scriptable like everything else; no logic of their own):

| path | upstream | scope |
|---|---|---|
| `GET /v1/aliases` | inference `GET /admin/aliases` (each alias with its state per replica) | admin |
| `GET /v1/deployments` | inference `GET /admin/deployments` (engines, state per replica) | admin |
| `/v1/synthetic/*` | dataset `/v1/synthetic/*` (synthetic-data jobs and their review) | admin |
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from tuneloop.contracts import Alias, Deployment, Page

from ..auth import require_admin
from ..proxy import forward
from .deps import InferenceDep, SettingsDep, UpstreamsDep

router = APIRouter(tags=["passthrough"], dependencies=[Depends(require_admin)])


@router.get("/v1/aliases", summary="Aliases with their state per inference replica",
            response_model=Page[Alias],
            response_model_exclude_unset=True)
async def aliases(inference: InferenceDep) -> Page[Alias]:
    return Page[Alias](object="list", data=await inference.aliases(), has_more=False)


@router.get("/v1/deployments", summary="Deployments (engines) with their state per replica",
            response_model=Page[Deployment],
            response_model_exclude_unset=True)
async def deployments(inference: InferenceDep) -> Page[Deployment]:
    return Page[Deployment](object="list", data=await inference.deployments(), has_more=False)


@router.api_route("/v1/synthetic/{rest:path}", methods=["GET", "POST"])
async def synthetic(request: Request, rest: str, s: SettingsDep,
                    upstreams: UpstreamsDep) -> Response:
    """The dataset service's synthetic-data jobs (create, progress, rows, review, publish)."""
    return await forward(request, upstreams["dataset"], f"/v1/synthetic/{rest}",
                         limit=s.max_request_bytes)

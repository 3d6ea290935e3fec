"""Routing: the OpenAI inference surface to inference, the rest to dataset and trainer.

| path | upstream | scope |
|---|---|---|
| `/v1/chat/completions`, `/v1/completions`, `/v1/models`, `/v1/models/{name}` | inference | inference |
| `/v1/models/mv-...` (lineage + promotion decisions) | trainer + gateway | inference |
| `/v1/datasets*` | dataset | admin |
| `/v1/jobs*`, `/v1/files*`, `/v1/fine_tuning/*` | trainer | admin |
"""

from __future__ import annotations

import json
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from tuneloop.errors import NotFound
from tuneloop.ids import is_valid_id
from tuneloop.upstream import until_disconnect

from ..auth import require_admin, require_inference
from ..flywheel.capture import CaptureRecorder, Pending
from ..proxy import Upstream, forward, read_body
from ..routing import send_generation, without_added_usage
from .deps import PromotionsDep, SettingsDep, UpstreamsDep

router = APIRouter(tags=["proxy"])
ALL = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def _ups(request: Request, name: str) -> Upstream:
    """The generation routes read the app state directly (no dependency to solve per request on
    the hot path; see ``deps.py``)."""
    return request.app.state.upstreams[name]


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    """OpenAI chat completions (streaming passes through untouched)."""
    return await _generate(request, "/v1/chat/completions")


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    """OpenAI legacy completions."""
    return await _generate(request, "/v1/completions")


async def _generate(request: Request, path: str) -> Response:
    """A generation: safe to send again if the connection closed before any answer byte (no
    side effect); cancelled upstream if the client goes away before the answer. The key check
    is called here, not declared as a route dependency: FastAPI solves declared dependencies
    per request, a cost on the hot path (``bench/serve_load.py --profile``)."""
    await require_inference(request)
    s = request.app.state.settings
    body = await read_body(request, s.max_request_bytes)
    recorder = request.app.state.captures
    endpoint = "chat" if path.endswith("/chat/completions") else "completions"
    pending = recorder.begin(getattr(request.state, "principal", None), endpoint, body)
    resp = await until_disconnect(request, send_generation(  # key binding, canary, metering
        request, body, pending, lambda raw: forward(
            request, _ups(request, "inference"), path, limit=s.max_request_bytes, body=raw,
            repeatable=True, openai_stream=True)))
    if pending is not None and resp.status_code == 200:
        _capture_after(resp, recorder, pending)
    return without_added_usage(request, resp)


def _capture_after(resp: Response, recorder: CaptureRecorder, pending: Pending) -> None:
    """Hand the answer to the capture queue once it has been sent (docs/flywheel.md)."""
    if isinstance(resp, StreamingResponse):
        resp.body_iterator = recorder.tee(pending, resp.body_iterator)
        return
    pending.body = bytes(resp.body)
    pending.finished = time.perf_counter()
    resp.background = BackgroundTask(recorder.offer, pending)


@router.get("/v1/models", dependencies=[Depends(require_inference)])
async def list_models(request: Request, s: SettingsDep, upstreams: UpstreamsDep) -> Response:
    """Served models and aliases (from inference); a key bound to aliases sees those only."""
    resp = await forward(request, upstreams["inference"], "/v1/models", limit=s.max_request_bytes)
    principal = getattr(request.state, "principal", None)
    if principal is None or principal.models is None or resp.status_code != 200:
        return resp
    listing = json.loads(bytes(resp.body))
    listing["data"] = [m for m in listing.get("data", []) if principal.may_call(m.get("id"))]
    return JSONResponse(listing)


@router.get("/v1/models/{model_id:path}", dependencies=[Depends(require_inference)])
async def get_model(model_id: str, request: Request, s: SettingsDep, upstreams: UpstreamsDep,
                    promotions: PromotionsDep) -> Response:
    """A model version's lineage (``mv-...``: trainer + promotion decisions) or a served model.
    A key bound to aliases sees those only (404 for any other, as OpenAI answers for a model
    the key has no access to)."""
    principal = getattr(request.state, "principal", None)
    if principal is not None and not principal.may_call(model_id):
        raise NotFound(f"The model '{model_id[:200]}' does not exist", code="model_not_found",
                       param="model")
    if not is_valid_id(model_id, "mv"):
        return await forward(request, upstreams["inference"], f"/v1/models/{model_id}",
                             limit=s.max_request_bytes)
    resp = await forward(request, upstreams["trainer"], f"/v1/models/{model_id}",
                         limit=s.max_request_bytes)
    if resp.status_code != 200:
        return resp
    lineage = json.loads(bytes(resp.body))
    lineage["promotions"] = await promotions.list(model_id=model_id)
    return JSONResponse(lineage)


@router.api_route("/v1/datasets", methods=ALL, dependencies=[Depends(require_admin)])
@router.api_route("/v1/datasets/{rest:path}", methods=ALL, dependencies=[Depends(require_admin)])
async def datasets(request: Request, s: SettingsDep, upstreams: UpstreamsDep) -> Response:
    """The dataset service (uploads streamed, bounded by max_upload_bytes)."""
    path = "/v1/datasets" + _rest(request)
    upload = request.method in ("POST", "PUT")
    return await forward(request, upstreams["dataset"], path, limit=s.max_upload_bytes,
                         stream_body=upload, timeout=s.upload_timeout_s if upload else None)


@router.api_route("/v1/files", methods=ALL, dependencies=[Depends(require_admin)])
@router.api_route("/v1/files/{rest:path}", methods=ALL, dependencies=[Depends(require_admin)])
async def files(request: Request, s: SettingsDep, upstreams: UpstreamsDep) -> Response:
    """OpenAI files API (training files), served by the trainer."""
    path = "/v1/files" + _rest(request)
    upload = request.method == "POST"
    return await forward(request, upstreams["trainer"], path, limit=s.max_upload_bytes,
                         stream_body=upload, timeout=s.upload_timeout_s if upload else None)


@router.api_route("/v1/fine_tuning/{rest:path}", methods=ALL, dependencies=[Depends(require_admin)])
async def fine_tuning(request: Request, rest: str, s: SettingsDep,
                      upstreams: UpstreamsDep) -> Response:
    """OpenAI fine-tuning jobs API, served by the trainer (job creation gets the gateway's
    callback in the ``tuneloop`` extension unless one is given)."""
    body = await read_body(request, s.max_request_bytes)
    if request.method == "POST" and rest.strip("/") == "jobs" and body:
        body = _with_callback(body, s.callback_url(), nested="tuneloop")
    return await forward(request, upstreams["trainer"], f"/v1/fine_tuning/{rest}",
                         limit=s.max_request_bytes, body=body)


@router.api_route("/v1/jobs", methods=ALL, dependencies=[Depends(require_admin)])
@router.api_route("/v1/jobs/{rest:path}", methods=ALL, dependencies=[Depends(require_admin)])
async def jobs(request: Request, s: SettingsDep, upstreams: UpstreamsDep) -> Response:
    """Native training jobs; creation gets the gateway's callback_url unless one is given."""
    rest = request.path_params.get("rest", "")
    path = "/v1/jobs" + _rest(request)
    body = await read_body(request, s.max_request_bytes)
    if request.method == "POST" and not rest and body:
        body = _with_callback(body, s.callback_url())
    return await forward(request, upstreams["trainer"], path, limit=s.max_request_bytes,
                         body=body)


def _rest(request: Request) -> str:
    """The ``{rest:path}`` of the route from the *path* only: declared as a function argument
    with a default, FastAPI would fill it from a ``?rest=`` query parameter on the routes
    without it (``/v1/datasets?rest=../jobs`` forwarded to another path)."""
    rest = request.path_params.get("rest", "")
    return f"/{rest}" if rest else ""


def _with_callback(body: bytes, url: str, nested: str | None = None) -> bytes:
    """Add ``callback_url`` (at the top, or inside ``nested``) to a JSON job request that has
    none; anything else (not JSON, a callback already set) is forwarded untouched."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return body
    if not isinstance(parsed, dict):
        return body
    holder = parsed
    if nested:
        if parsed.get(nested) is None:
            parsed[nested] = {}
        holder = parsed[nested]
        if not isinstance(holder, dict):
            return body
    if holder.get("callback_url"):
        return body
    holder["callback_url"] = url
    return json.dumps(parsed).encode()

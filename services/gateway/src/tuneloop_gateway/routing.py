"""Where a generation goes, decided in one place (called once by ``api/proxy.py``):

1. the key's binding (per-tenant: a key bound to aliases A may call A only: 403
   ``model_not_allowed`` for anything else);
2. the alias's canary, when it has one (:mod:`.canary`: a weighted share to the candidate,
   with the stable model as the fallback, or a mirror);
3. per-key token metering (``tuneloop_gateway_key_tokens_total{key_id,kind}``) from the
   answer's ``usage``: read from a plain answer's bytes, or from a stream's last chunks.

Without a binding and a canary the request body is not even parsed here.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from tuneloop.errors import Forbidden

from .canary import CanaryService, Send
from .flywheel.capture import Pending

PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
USAGE_TAIL = 4096  # the usage of a stream is in its last chunk(s)
DONE = b"data: [DONE]"


async def send_generation(request: Request, raw: bytes, pending: Pending | None,
                          send: Send) -> Response:
    """Send a chat/completions request on its way (see the module doc) and meter its tokens."""
    state = request.app.state
    canaries: CanaryService = state.canaries
    principal = getattr(request.state, "principal", None)
    bound = principal is not None and principal.models is not None
    if not bound and not canaries.live:
        return meter(state.gw_metrics, principal, await send(raw))
    body = _parse(raw)
    model = body.get("model") if body is not None else None
    if bound and not principal.may_call(model):
        raise Forbidden(f"this key may not call model '{str(model)[:80]}' (it is bound to: "
                        f"{', '.join(sorted(principal.models)) or 'nothing'})",
                        code="model_not_allowed", param="model")
    live = canaries.routes(model)
    if live is None or body is None:
        return meter(state.gw_metrics, principal, await send(raw))
    return meter(state.gw_metrics, principal,
                 await canaries.dispatch(live, body, raw, pending, send))


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return None  # the engine answers 400 for it
    return body if isinstance(body, dict) else None


def meter(metrics: Any, principal: Any, resp: Response) -> Response:
    """Count the key's request and, once known, its prompt and completion tokens."""
    if principal is None:
        return resp
    key = principal.key_id
    metrics.key_requests.labels(key).inc()
    if isinstance(resp, StreamingResponse):
        if resp.status_code < 400:
            resp.body_iterator = _metered(metrics, key, resp.body_iterator)
        return resp
    if resp.status_code < 400:
        _count(metrics, key, bytes(resp.body[-USAGE_TAIL:]))
    return resp


async def _metered(metrics: Any, key: str, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Counted when ``[DONE]`` passes (before it is sent: the OpenAI SDK closes the connection
    on it, and the usage chunk came before it), else at the end of the stream."""
    tail, counted = b"", False
    async for chunk in chunks:
        tail = (tail + chunk)[-USAGE_TAIL:]
        if not counted and DONE in tail:
            counted = True
            _count(metrics, key, tail)
        yield chunk
    if not counted:
        _count(metrics, key, tail)


def _count(metrics: Any, key: str, tail: bytes) -> None:
    prompt, completion = PROMPT.findall(tail), COMPLETION.findall(tail)
    if prompt:
        metrics.key_tokens.labels(key, "prompt").inc(int(prompt[-1]))
    if completion:
        metrics.key_tokens.labels(key, "completion").inc(int(completion[-1]))

"""Where a generation goes, decided in one place (called once by ``api/proxy.py``):

1. the key's binding (per-tenant: a key bound to aliases A may call A only: 403
   ``model_not_allowed`` for anything else);
2. the alias's canary, when it has one (:mod:`.canary`: a weighted share to the candidate,
   with the stable model as the fallback, or a mirror);
3. per-key token metering (``tuneloop_gateway_key_tokens_total{key_id,kind}``) from the
   answer's ``usage``: read from a plain answer's bytes, or from a stream's last chunks. A
   stream whose client did not ask for usage (``stream_options.include_usage``, off by default
   in the OpenAI SDK) is sent upstream asking for it, counted (and captured), and its usage-only
   chunk (``"choices": []``) is taken out before the client sees it: the client gets the stream
   it asked for, and every streamed token is metered.

Without a binding, a canary or a stream the request body is not even parsed here.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterable, AsyncIterator
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
STREAM = b'"stream"'
EVENT_END = b"\n\n"
EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')


async def send_generation(request: Request, raw: bytes, pending: Pending | None,
                          send: Send) -> Response:
    """Send a chat/completions request on its way (see the module doc) and meter its tokens."""
    state = request.app.state
    canaries: CanaryService = state.canaries
    principal = getattr(request.state, "principal", None)
    bound = principal is not None and principal.models is not None
    body = None
    if (principal is not None or pending is not None) and STREAM in raw:
        body = _parse(raw)
        if body is not None and _usage_not_asked(body):
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
            raw = json.dumps(body).encode()
            request.state.usage_added = True
    if not bound and not canaries.live:
        return meter(state.gw_metrics, principal, await send(raw))
    body = _parse(raw) if body is None else body
    model = body.get("model") if body is not None else None
    if bound and principal is not None and not principal.may_call(model):
        raise Forbidden(f"this key may not call model '{str(model)[:80]}' (it is bound to: "
                        f"{', '.join(sorted(principal.models)) or 'nothing'})",
                        code="model_not_allowed", param="model")
    live = canaries.routes(model)
    if live is None or body is None:
        return meter(state.gw_metrics, principal, await send(raw))
    return meter(state.gw_metrics, principal,
                 await canaries.dispatch(live, body, raw, pending, send))


def _usage_not_asked(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return body.get("stream") is True and (options is None or (
        isinstance(options, dict) and not options.get("include_usage")))


def without_added_usage(request: Request, resp: Response) -> Response:
    """The stream as its client asked for it: the usage-only chunk we asked for taken out (the
    last thing to touch the stream, after metering and capture have read the usage)."""
    if getattr(request.state, "usage_added", False) and isinstance(resp, StreamingResponse):
        resp.body_iterator = _drop_usage_events(resp.body_iterator)
    return resp


async def _drop_usage_events(chunks: AsyncIterable[Any]) -> AsyncIterator[bytes]:
    """Pass whole server-sent events through, except those whose choices are empty and that
    carry a usage (OpenAI's usage chunk)."""
    pending = b""
    async for chunk in chunks:
        pending += chunk.encode() if isinstance(chunk, str) else bytes(chunk)
        if EVENT_END not in pending:
            continue
        *events, pending = pending.split(EVENT_END)
        kept = [e for e in events if not _usage_only(e)]
        if kept:
            yield EVENT_END.join(kept) + EVENT_END
    if pending:
        yield pending


def _usage_only(event: bytes) -> bool:
    return event.startswith(b"data: {") and b'"usage"' in event \
        and EMPTY_CHOICES.search(event) is not None


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


async def _metered(metrics: Any, key: str, chunks: AsyncIterable[Any]) -> AsyncIterator[Any]:
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

"""Reverse proxy to the services behind the gateway.

One aiohttp session per upstream (opened in the lifespan, explicit connect and read
timeouts); aiohttp rather than httpx on this hot path because it costs about a third of the
CPU per request (measured: bench/gateway_overhead.py notes). Request bodies are bounded
(``Content-Length`` checked up front, streamed bodies counted); event streams pass through
byte for byte as they arrive; upstream failures become 502/503/504 in the error envelope
instead of hangs.

Idle pooled connections live ``upstream_keepalive_s`` (60 s), less than the upstreams' own
65 s, and a request whose connection closed before any response byte is sent again when that
is safe (a replayable body and a read or a generation: :mod:`tuneloop.upstream`). A stream
the upstream breaks, or ends without ``data: [DONE]`` or a finish_reason, ends with an error event, so OpenAI
clients raise instead of returning a cut answer as complete.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any
from dataclasses import dataclass

import aiohttp
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask
from yarl import URL

from tuneloop import upstream as upstream_http
from tuneloop.errors import (
    PayloadTooLarge,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
    error_body,
)

log = logging.getLogger("tuneloop.gateway.proxy")

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length", "authorization",
    "x-api-key",
}
# Bodies are relayed as the upstream sent them, so ask upstreams for identity encoding.
REQUEST_DROP = HOP_BY_HOP | {"accept-encoding"}


@dataclass
class Upstream:
    """A service behind the gateway: its name, base URL, session, timeouts and bearer key."""

    name: str
    base_url: str
    session: aiohttp.ClientSession
    connect: float
    read: float
    api_key: str | None = None

    @classmethod
    def open(cls, name: str, base_url: str, *, connect: float, read: float,
             api_key: str | None = None, max_connections: int = 0,
             keepalive_s: float = upstream_http.KEEPALIVE_S) -> "Upstream":
        """``connect`` bounds the TCP connect only, not a wait for a pooled connection (under
        load that wait is queueing, not an outage)."""
        session = aiohttp.ClientSession(
            connector=upstream_http.connector(max_connections, keepalive_s),
            timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_connect=connect,
                                          sock_read=read),
            auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding"))
        return cls(name, base_url.rstrip("/"), session, connect, read, api_key)

    async def aclose(self) -> None:
        await self.session.close()


def _forward_headers(request: Request, upstream: Upstream) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in REQUEST_DROP}
    rid = getattr(request.state, "request_id", None)
    if rid:
        headers["x-request-id"] = rid
    if upstream.api_key:
        headers["authorization"] = f"Bearer {upstream.api_key}"
    client = request.client.host if request.client else ""
    prior = request.headers.get("x-forwarded-for")
    headers["x-forwarded-for"] = f"{prior}, {client}" if prior else client
    return headers


def check_length(request: Request, limit: int) -> None:
    """Refuse early when ``Content-Length`` announces more than ``limit`` bytes."""
    raw = request.headers.get("content-length")
    if raw is not None:
        try:
            size = int(raw)
        except ValueError:
            size = limit + 1
        if size > limit:
            raise PayloadTooLarge(f"request body of {raw} bytes exceeds the limit of {limit} bytes",
                                  details={"limit_bytes": limit})


async def read_body(request: Request, limit: int) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes (413)."""
    check_length(request, limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes",
                                  details={"limit_bytes": limit})
        chunks.append(chunk)
    return b"".join(chunks)


async def _counted(request: Request, limit: int) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"upload exceeds the limit of {limit} bytes",
                                  details={"limit_bytes": limit})
        yield chunk


def _envelope_or_wrap(upstream: str, status: int, body: bytes, content_type: str) -> Response | None:
    """Upstream error bodies in our envelope pass through; anything else is wrapped."""
    if "json" in content_type:
        try:
            parsed = json.loads(body)
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                return None
        except ValueError:
            pass
    text = body[:300].decode("utf-8", "replace")
    if status >= 500:
        msg = f"{upstream} service failed ({status}): {text}"
        return Response(json.dumps(error_body(msg, "upstream_error", "bad_gateway")),
                        status_code=502, media_type="application/json")
    detail = text
    try:
        parsed = json.loads(body)
        detail = str(parsed.get("detail", parsed)) if isinstance(parsed, dict) else text
    except ValueError:
        pass
    code = {401: "upstream_unauthorized", 404: "not_found", 405: "method_not_allowed",
            422: "invalid_request"}.get(status, f"http_{status}")
    return Response(json.dumps(error_body(f"{upstream}: {detail}", "invalid_request_error", code)),
                    status_code=status, media_type="application/json")


SAFE_TO_REPEAT = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}


async def forward(request: Request, upstream: Upstream, path: str, *, limit: int,
                  body: bytes | None = None, stream_body: bool = False,
                  timeout: float | None = None, repeatable: bool | None = None,
                  openai_stream: bool = False) -> Response:
    """Send ``request`` to ``upstream`` at ``path`` and relay the answer. ``repeatable``:
    the call may be sent again if its connection closed before any response byte (default:
    idempotent methods; never a streamed upload). ``openai_stream``: an event stream must end
    with ``data: [DONE]`` (else it gets an error event)."""
    metrics = request.app.state.gw_metrics
    if body is None and not stream_body:
        body = await read_body(request, limit)
    elif stream_body:
        check_length(request, limit)
    query = request.url.query
    url = URL(upstream.base_url + path + (f"?{query}" if query else ""), encoded=True)
    per_call = (aiohttp.ClientTimeout(total=None, connect=upstream.connect,
                                      sock_connect=upstream.connect, sock_read=timeout)
                if timeout else None)
    if repeatable is None:
        repeatable = request.method in SAFE_TO_REPEAT
    timeouts: dict[str, Any] = {"timeout": per_call} if per_call else {}
    start = time.perf_counter()
    try:
        resp = await upstream_http.send(
            upstream.session, request.method, url, retry=repeatable and not stream_body,
            headers=_forward_headers(request, upstream),
            data=_counted(request, limit) if stream_body else body,
            **timeouts)
    except PayloadTooLarge:
        raise
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        metrics.upstream_errors.labels(upstream.name, "unavailable").inc()
        raise ServiceUnavailable(f"{upstream.name} service unavailable: {exc.__class__.__name__}",
                                 code="upstream_unavailable") from exc
    except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
        metrics.upstream_errors.labels(upstream.name, "timeout").inc()
        raise UpstreamTimeout(f"{upstream.name} service timed out ({request.method} {path})",
                              code="upstream_timeout") from exc
    except aiohttp.ClientError as exc:
        if isinstance(exc.__cause__, PayloadTooLarge):
            raise exc.__cause__ from None
        metrics.upstream_errors.labels(upstream.name, "protocol").inc()
        raise UpstreamError(f"{upstream.name} service failed: {exc.__class__.__name__}: {exc}",
                            code="bad_gateway") from exc
    metrics.upstream_latency.labels(upstream.name).observe(time.perf_counter() - start)
    metrics.upstream_requests.labels(upstream.name, str(resp.status)).inc()
    headers = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
    ctype = resp.headers.get("content-type", "")
    if "text/event-stream" in ctype and resp.status < 400:
        return StreamingResponse(_relay(resp, upstream.name, openai_stream), status_code=resp.status,
                                 headers=headers, background=BackgroundTask(resp.release))
    try:
        data = await resp.read()
    except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
        metrics.upstream_errors.labels(upstream.name, "timeout").inc()
        raise UpstreamTimeout(f"{upstream.name} service timed out reading the answer",
                              code="upstream_timeout") from exc
    except aiohttp.ClientError as exc:
        metrics.upstream_errors.labels(upstream.name, "protocol").inc()
        raise UpstreamError(f"{upstream.name} service broke the answer: {exc}",
                            code="bad_gateway") from exc
    finally:
        resp.release()
    if resp.status >= 400:
        wrapped = _envelope_or_wrap(upstream.name, resp.status, data, ctype)
        if wrapped is not None:
            return wrapped
    return Response(data, status_code=resp.status, headers=headers)


DONE = b"data: [DONE]"
FINISHED = re.compile(rb'"finish_reason"\s*:\s*"')


async def _relay(resp: aiohttp.ClientResponse, name: str, openai: bool) -> AsyncIterator[bytes]:
    """Pass the upstream stream through untouched. If the upstream breaks it, or (``openai``)
    ends it without ``data: [DONE]`` or an error event, end it with an error event (what the
    inference service sends when its engine breaks): an OpenAI client then raises instead of
    keeping a cut answer as complete."""
    tail, error = b"", None
    try:
        async for chunk in resp.content.iter_any():
            tail = (tail + chunk)[-4096:]
            yield chunk
        # complete: [DONE], or (engines that omit it, e.g. transformers serve) a clean end after
        # a chunk that carries a finish_reason; a clean end without either is a cut answer
        if openai and DONE not in tail and b'data: {"error"' not in tail \
                and not FINISHED.search(tail):
            error = "ended without [DONE] or a finish_reason"
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        error = f"{exc.__class__.__name__}"
    if error is not None:
        log.warning("upstream stream broke", extra={"upstream": name, "error": error})
        body = error_body(f"{name} stream broke: {error}", "upstream_error", "upstream_stream_error")
        sep = b"" if not tail or tail.endswith(b"\n\n") else b"\n\n"
        yield sep + f"data: {json.dumps(body)}\n\n".encode()

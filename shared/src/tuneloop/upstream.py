"""Pooled HTTP to an upstream server, safe against the idle keep-alive race.

uvicorn (our services, ``transformers serve``) and vLLM close a keep-alive connection after
5 s idle. A pool that keeps idle connections longer (aiohttp's default: 15 s; ours were
30-60 s) sooner or later sends a request on a connection the server is closing at that very
moment: the request fails with "server disconnected" before any byte of an answer, and a proxy
that does not retry turns it into a 502 (issue 15: the first request of a load round, a few
seconds after the proxy's last use). Two fixes, both here:

- pools keep idle connections for less than the upstream does, so the client closes first:
  our services keep theirs 65 s (``TUNELOOP_KEEPALIVE_TIMEOUT_S``) and vLLM engines are
  started with the same, so the gateway's and inference's pools keep 60 s (a setting per
  service); :data:`KEEPALIVE_S` (2 s) is the default for a server that keeps uvicorn's 5 s;
- a request whose connection was closed before any response byte arrived is sent again on
  another connection (:func:`send`): the server never read it, or read it and answered
  nothing, so a retry cannot duplicate an answer the client has seen. Only bodies that can be
  replayed (bytes, not a streamed upload) are retried, and only for calls the caller marks
  safe to repeat (reads, and generations, which have no side effect).
"""

from __future__ import annotations

import asyncio
import logging
import contextlib
from collections.abc import Awaitable
from typing import Any

import aiohttp
from starlette.requests import Request
from starlette.responses import Response

log = logging.getLogger("tuneloop.upstream")

#: idle keep-alive for a pool to a server with uvicorn's (and vLLM's) default 5 s
KEEPALIVE_S = 2.0
#: attempts for a request whose connection closed before any response byte
ATTEMPTS = 3


def connector(limit: int, keepalive_s: float = KEEPALIVE_S) -> aiohttp.TCPConnector:
    """A pool of at most ``limit`` connections (0 = unbounded) kept idle ``keepalive_s``."""
    return aiohttp.TCPConnector(limit=limit, keepalive_timeout=keepalive_s)


def closed_before_answer(exc: BaseException) -> bool:
    """The connection closed (or reset) before the server sent a response byte. Connect
    failures are not this: nothing listens there, another attempt would fail the same way."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return False
    return isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError))


async def send(session: aiohttp.ClientSession, method: str, url: Any, *, retry: bool = True,
               attempts: int = ATTEMPTS, **kwargs: Any) -> aiohttp.ClientResponse:
    """``session.request`` (returns once the response headers are in); with ``retry``, a
    request that lost its connection before any response byte is sent again."""
    for attempt in range(1, attempts + 1):
        try:
            return await session.request(method, url, **kwargs)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            if not retry or attempt == attempts or not closed_before_answer(exc):
                raise
            log.info("upstream closed the connection before answering; sending again",
                     extra={"url": str(url), "attempt": attempt, "error": repr(exc)})
            await asyncio.sleep(0)
    raise AssertionError("unreachable")


async def until_disconnect(request: Request, work: Awaitable[Response]) -> Response:
    """Run ``work`` (a proxied, non-streamed call); if the client disconnects first, cancel
    it, which closes the upstream connection, so the upstream (the inference service, then
    the engine) stops generating for nobody. The request body must have been read already:
    the next ASGI message is then ``http.disconnect``, when the client goes."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watcher.cancel()
    if task.cancelled() or not task.done():
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return Response(status_code=499)  # nobody reads it: the client is gone
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass

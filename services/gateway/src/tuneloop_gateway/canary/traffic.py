"""The request path of canaries: which arm answers a request for an alias with a running
canary, the stable model as the fallback, mirrors (shadow), and each answer counted against
its arm (rolled back at once when the candidate crosses a limit)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from fastapi.responses import Response, StreamingResponse

from tuneloop.errors import TuneloopError

from ..flywheel.capture import CaptureRecorder, Pending
from .live import FALLBACK_STATUS, SHADOW_IN_FLIGHT, Live, Send, breach
from .store import CanaryStore

log = logging.getLogger("tuneloop.gateway.canary")

STREAM_BROKE = b"upstream_stream_error"
STREAM_DONE = b"data: [DONE]"


class CanaryTraffic:
    """The live set this process routes by (``live``, by alias) and the request path."""

    def __init__(self, store: CanaryStore, metrics: Any, recorder: CaptureRecorder | None,
                 upstream: Any) -> None:
        self.store = store
        self.metrics = metrics
        self.recorder = recorder
        self.upstream = upstream  # the inference Upstream (its aiohttp session) for shadows
        self.live: dict[str, Live] = {}
        self._shadows: set[asyncio.Task] = set()
        self._writes: set[asyncio.Task] = set()

    def routes(self, model: object) -> Live | None:
        return self.live.get(model) if isinstance(model, str) else None

    async def dispatch(self, live: Live, body: dict[str, Any], raw: bytes,
                       pending: Pending | None, send: Send) -> Response:
        """Answer a request for ``live.alias``: from the candidate (its weighted share, with the
        stable model as the fallback) or the stable model (and a mirror to the candidate)."""
        if live.mode == "weighted" and live.rng.random() < live.weight:
            resp = await self._candidate(live, body, send)
            if resp is not None:
                _mark(pending, live.id, "candidate")
                return resp
        _mark(pending, live.id, "stable")
        resp = await self._timed(live, "stable", send, raw)
        if live.mode == "shadow" and resp.status_code == 200:
            self._mirror(live, body, pending)
        return resp

    async def _timed(self, live: Live, arm: str, send: Send, raw: bytes) -> Response:
        t0 = time.perf_counter()
        try:
            resp = await send(raw)
        except TuneloopError:
            self._record(live, arm, False, None)
            raise
        return self._watch(live, arm, resp, time.perf_counter() - t0)

    async def _candidate(self, live: Live, body: dict[str, Any], send: Send) -> Response | None:
        """The candidate's answer, or None (counted as a fallback) when it failed before any
        answer byte; the caller then asks the stable model."""
        t0 = time.perf_counter()
        try:
            resp = await send(json.dumps({**body, "model": live.candidate}).encode())
        except TuneloopError as exc:
            why = exc.code or "error"
        else:
            if resp.status_code < 500 and resp.status_code not in FALLBACK_STATUS:
                return self._watch(live, "candidate", resp, time.perf_counter() - t0)
            why = f"http_{resp.status_code}"
        live.arms["candidate"].fallbacks += 1
        self.metrics.canary_requests.labels("candidate", "fallback").inc()
        log.info("canary fallback", extra={"canary_id": live.id, "why": why})
        self._record(live, "candidate", False, None)
        return None

    def _watch(self, live: Live, arm: str, resp: Response, latency: float) -> Response:
        """Count the answer: at once, or at the end of a stream (a stream broken by the
        upstream ends with our error event)."""
        if not isinstance(resp, StreamingResponse):
            self._record(live, arm, resp.status_code < 500, latency)
            return resp
        resp.body_iterator = self._stream(live, arm, resp.body_iterator, latency)
        return resp

    async def _stream(self, live: Live, arm: str, chunks: AsyncIterable[Any],
                      latency: float) -> AsyncIterator[Any]:
        """Counted when ``[DONE]`` or our error event passes (before it is sent: the OpenAI
        SDK closes the connection on ``[DONE]``), else at the end; a client gone mid-stream
        is not counted."""
        counted = False
        async for chunk in chunks:
            if not counted and (STREAM_DONE in chunk or STREAM_BROKE in chunk):
                counted = True
                self._record(live, arm, STREAM_BROKE not in chunk, latency)
            yield chunk
        if not counted:
            self._record(live, arm, True, latency)

    def _mirror(self, live: Live, body: dict[str, Any], pending: Pending | None) -> None:
        if len(self._shadows) >= SHADOW_IN_FLIGHT:
            self.metrics.canary_requests.labels("shadow", "skipped").inc()
            return
        task = asyncio.create_task(self._shadow(live, body, pending))
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _shadow(self, live: Live, body: dict[str, Any], pending: Pending | None) -> None:
        """Send the same request to the candidate (not streamed); record the outcome and, when
        the request is captured, the candidate's answer as a capture of the ``shadow`` arm."""
        mirrored = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        mirrored["model"] = live.candidate
        ups = self.upstream
        path = "/v1/chat/completions" if pending is None or pending.endpoint == "chat" \
            else "/v1/completions"
        if "messages" not in body:
            path = "/v1/completions"
        headers = {"content-type": "application/json"}
        if ups.api_key:
            headers["authorization"] = f"Bearer {ups.api_key}"
        started, t0 = time.perf_counter(), time.perf_counter()
        try:
            async with ups.session.post(ups.base_url + path, data=json.dumps(mirrored).encode(),
                                        headers=headers) as resp:
                data = await resp.read()
                ok = resp.status < 500 and resp.status not in FALLBACK_STATUS
        except Exception:
            ok, data = False, b""
        self._record(live, "shadow", ok, time.perf_counter() - t0)
        if ok and pending is not None and self.recorder is not None:
            self.recorder.offer(Pending(pending.key_id, pending.endpoint, pending.request, started,
                                        int(time.time()), False, body=data,
                                        finished=time.perf_counter(), canary_id=live.id,
                                        canary_arm="shadow"))

    def _record(self, live: Live, arm: str, ok: bool, latency: float | None) -> None:
        live.arms[arm].add(ok, latency)
        live.dirty = True
        self.metrics.canary_requests.labels(arm, "ok" if ok else "error").inc()
        if ok and latency is not None:
            self.metrics.canary_latency.labels(arm).observe(latency)
        if arm != "stable" and live.alias in self.live:
            why = breach(live)
            if why:
                self._end_now(live, "rolled_back", why, by="limit")

    def _end_now(self, live: Live, status: str, reason: str, *, by: str) -> None:
        """Stop routing at once (this process), then store the decision."""
        if self.live.get(live.alias) is live:
            self.live.pop(live.alias)
        self.metrics.canary_decisions.labels(status, by).inc()
        log.warning("canary ended", extra={"canary_id": live.id, "status": status,
                                           "reason": reason})
        stats = {k: a.summary() for k, a in live.arms.items()}
        task = asyncio.get_running_loop().create_task(
            self.store.finish(live.id, status, reason, stats))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)


def _mark(pending: Pending | None, cid: str, arm: str) -> None:
    if pending is not None:
        pending.canary_id, pending.canary_arm = cid, arm

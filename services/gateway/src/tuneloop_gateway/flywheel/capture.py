"""Capture: record opted-in generations after they were answered, masked, bounded.

The request path does only O(1) work: it decides whether the request is captured (the key
opted in *and* the model is listed in ``GATEWAY_CAPTURE_MODELS``), keeps the raw request and
answer bytes (a streamed answer is teed as it passes, up to a byte cap) and, once the answer
has been sent, puts them on a bounded queue without waiting. One worker parses and masks them
in a separate process (regular expressions hold the GIL) and writes them in a thread. A full
queue or a failed write is counted in ``tuneloop_gateway_captures_total{outcome=...}`` and
logged; it is never the user's error.
Retention (rows and days) is applied by the same worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from tuneloop.db import Database
from tuneloop.ids import new_id
from tuneloop.offload import offload

from ..auth import Principal
from ..db import Capture
from ..repository.captures import CaptureRepository
from ..settings import GatewaySettings
from .prepare import prepare_batch

log = logging.getLogger("tuneloop.gateway.capture")

PRUNE_EVERY_S = 60.0


@dataclass
class Pending:
    """One answered generation, raw, waiting to be parsed, masked and written."""

    key_id: str
    endpoint: str  # chat | completions
    request: dict[str, Any]
    started: float
    created_at: int
    stream: bool
    status: int = 200
    body: bytes = b""
    truncated: bool = False
    finished: float = 0.0
    chunks: list[bytes] = field(default_factory=list)
    canary_id: str | None = None  # the canary that routed it, and to which arm
    canary_arm: str | None = None


class CaptureRecorder:
    """The bounded queue and its writer (started and stopped by the app's lifespan)."""

    def __init__(self, settings: GatewaySettings, db: Database, metrics: Any) -> None:
        self.settings = settings
        self.repo = CaptureRepository(db)
        self.metrics = metrics
        self.queue: asyncio.Queue[Pending] = asyncio.Queue(maxsize=settings.capture_queue_size)
        self.models = frozenset(settings.capture_models)
        self._task: asyncio.Task | None = None
        self._last_prune = 0.0
        self._pool: ProcessPoolExecutor | None = None

    # -- request path (event loop, O(1)) ---------------------------------------------------
    def begin(self, principal: Principal | None, endpoint: str, body: bytes) -> Pending | None:
        """A :class:`Pending` when this request is to be captured, else None."""
        if principal is None or not principal.capture or not self.models:
            return None
        try:
            req = json.loads(body)
        except (ValueError, RecursionError):
            return None
        if not isinstance(req, dict) or req.get("model") not in self.models:
            return None
        return Pending(principal.key_id, endpoint, req, time.perf_counter(), int(time.time()),
                       bool(req.get("stream")))

    def offer(self, item: Pending) -> None:
        """Queue an answered generation; never waits, never raises."""
        item.finished = item.finished or time.perf_counter()
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.metrics.captures.labels("dropped").inc()
        except Exception:  # capture must never fail a request
            self.metrics.captures.labels("failed").inc()

    async def tee(self, item: Pending, chunks: AsyncIterable[Any]) -> AsyncIterator[Any]:
        """Pass a streamed answer through unchanged, keeping up to a byte cap of it; offer it
        once the stream has ended (a stream cut by the client is not captured)."""
        cap = self.settings.capture_max_chars * 8 + 65536
        size, complete = 0, False
        try:
            async for chunk in chunks:
                if size < cap:
                    item.chunks.append(chunk)
                    size += len(chunk)
                else:
                    item.truncated = True
                # complete once [DONE] passes: the OpenAI SDK closes the connection on it, so
                # the stream's own end may never be reached (this generator is closed instead)
                complete = complete or b"data: [DONE]" in chunk
                yield chunk
            complete = True
        finally:
            if complete:
                item.body = b"".join(item.chunks)
                item.chunks = []
                self.offer(item)

    # -- the writer ------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="capture-writer")

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait (at most ``timeout``) until everything queued so far has been written."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.queue.join(), timeout)

    async def aclose(self) -> None:
        await self.flush(2.0)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < 100 and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                results = await self._prepare(batch)
                outcomes = await self._write(batch, results)
                for outcome, n in outcomes.items():
                    self.metrics.captures.labels(outcome).inc(n)
                if time.monotonic() - self._last_prune > PRUNE_EVERY_S:
                    await self.prune()
            except asyncio.CancelledError:
                raise
            except Exception:  # counted and logged, never the user's error
                self.metrics.captures.labels("failed").inc(len(batch))
                log.exception("capture write failed", extra={"rows": len(batch)})
            finally:
                for _ in batch:
                    self.queue.task_done()

    async def _prepare(self, batch: list[Pending]) -> list[tuple[str, Any]]:
        """Parse and mask the batch in the masking process (a thread when that is off); a
        crashed process is replaced for the next batch."""
        items = [{"request": p.request, "body": p.body, "stream": p.stream,
                  "endpoint": p.endpoint, "truncated": p.truncated} for p in batch]
        limit = self.settings.capture_max_chars
        if self.settings.capture_mask_subprocess:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    self._pool, prepare_batch, items, limit)
            except BrokenProcessPool:
                self._pool = None
                raise
        return await offload(prepare_batch, items, limit)

    async def _write(self, batch: list[Pending],
                     results: list[tuple[str, Any]]) -> Counter[str]:
        """Store the batch's prepared rows (retention runs with them when the table is over its
        row limit); what became of each item, counted."""
        outcomes: Counter[str] = Counter()
        rows = []
        for item, (outcome, fields) in zip(batch, results, strict=True):
            if outcome == "failed":
                log.warning("capture parse failed", extra={"error": fields})
            if outcome != "ok":
                outcomes[outcome] += 1
                continue
            rows.append(Capture(
                id=new_id("cap"), key_id=item.key_id, endpoint=item.endpoint, stream=item.stream,
                latency_s=round(item.finished - item.started, 6), created_at=item.created_at,
                status="pending", canary_id=item.canary_id, canary_arm=item.canary_arm, **fields))
        gone = await self.repo.add(rows, **self._retention())
        if rows:
            outcomes["recorded"] += len(rows)
        if gone is not None:
            self._pruned(gone)
        return outcomes

    async def prune(self) -> int:
        """Apply retention: rows older than the limit in days, then the oldest over the row
        limit. Returns how many rows went."""
        gone = await self.repo.prune(**self._retention())
        self._pruned(gone)
        return gone

    def _retention(self) -> dict[str, int]:
        return {"cutoff": int(time.time() - self.settings.capture_retention_days * 86400),
                "max_rows": self.settings.capture_max_rows}

    def _pruned(self, gone: int) -> None:
        self._last_prune = time.monotonic()
        if gone:
            self.metrics.captures.labels("expired").inc(gone)

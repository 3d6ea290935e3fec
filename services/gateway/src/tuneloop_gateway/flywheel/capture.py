"""Capture: record opted-in generations after they were answered, masked, bounded.

The request path does only O(1) work: it decides whether the request is captured (the key
opted in *and* the model is listed in ``GATEWAY_CAPTURE_MODELS``), keeps the raw request and
answer bytes (a streamed answer is teed as it passes, up to a byte cap) and, once the answer
has been sent, puts them on a bounded queue without waiting. One worker parses, masks and
writes them in a thread. A full queue or a failed write is counted in
``tuneloop_gateway_captures_total{outcome=...}`` and logged; it is never the user's error.
Retention (rows and days) is applied by the same worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, select

from tuneloop.db import Database
from tuneloop.ids import new_id

from ..auth import Principal
from ..db import Capture
from ..settings import GatewaySettings
from .masking import mask, mask_messages

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


class CaptureRecorder:
    """The bounded queue and its writer (started and stopped by the app's lifespan)."""

    def __init__(self, settings: GatewaySettings, db: Database, metrics: Any) -> None:
        self.settings = settings
        self.db = db
        self.metrics = metrics
        self.queue: asyncio.Queue[Pending] = asyncio.Queue(maxsize=settings.capture_queue_size)
        self.models = frozenset(settings.capture_models)
        self._task: asyncio.Task | None = None
        self._last_prune = 0.0

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

    async def tee(self, item: Pending, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Pass a streamed answer through unchanged, keeping up to a byte cap of it; offer it
        once the stream has ended (a stream cut by the client is not captured)."""
        cap = self.settings.capture_max_chars * 8 + 65536
        size, complete = 0, False
        try:
            async for chunk in chunks:
                yield chunk
                if size < cap:
                    item.chunks.append(chunk)
                    size += len(chunk)
                else:
                    item.truncated = True
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

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < 100 and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                outcomes = await asyncio.to_thread(self._write, batch)
                for outcome, n in outcomes.items():
                    self.metrics.captures.labels(outcome).inc(n)
                if time.monotonic() - self._last_prune > PRUNE_EVERY_S:
                    await asyncio.to_thread(self.prune)
            except asyncio.CancelledError:
                raise
            except Exception:  # counted and logged, never the user's error
                self.metrics.captures.labels("failed").inc(len(batch))
                log.exception("capture write failed", extra={"rows": len(batch)})
            finally:
                for _ in batch:
                    self.queue.task_done()

    def _write(self, batch: list[Pending]) -> Counter[str]:
        outcomes: Counter[str] = Counter()
        rows = []
        for item in batch:
            try:
                row = self._row(item)
            except Exception:  # one bad answer does not lose the batch
                log.exception("capture parse failed")
                outcomes["failed"] += 1
                continue
            if row is None:  # an error answer: nothing to learn from
                outcomes["skipped"] += 1
            else:
                rows.append(row)
        if rows:
            with self.db.session() as s:
                s.add_all(rows)
            outcomes["recorded"] += len(rows)
        over = self._count() - self.settings.capture_max_rows
        if over > 0:
            self.prune()
        return outcomes

    def _row(self, item: Pending) -> Capture | None:
        """The masked row of one answer, or None when there is nothing to keep (an error)."""
        answer = parse_stream(item.body) if item.stream else parse_answer(item.body)
        if answer is None:
            return None
        limit = self.settings.capture_max_chars
        if item.endpoint == "chat":
            msgs = [m for m in item.request.get("messages") or [] if isinstance(m, dict)]
        else:
            prompt = item.request.get("prompt")
            msgs = [{"role": "user", "content": prompt if isinstance(prompt, str) else json.dumps(prompt)}]
        msgs = [{**m, "content": _cut(m.get("content"), limit)} for m in msgs]
        masked_msgs, found = mask_messages(msgs)
        text, found_out = mask(_cut(answer["text"], limit))
        found += found_out
        usage = answer.get("usage") or {}
        marks = dict(found)
        if item.truncated or len(answer["text"]) > limit:
            marks["truncated"] = 1
        return Capture(
            id=new_id("cap"), response_id=_str(answer.get("id"), 200), key_id=item.key_id,
            endpoint=item.endpoint, model=str(item.request.get("model"))[:300],
            served_model=_str(answer.get("model"), 300), messages=masked_msgs, output=text,
            stream=item.stream, finish_reason=_str(answer.get("finish_reason"), 40),
            latency_s=round(item.finished - item.started, 6),
            prompt_tokens=_int(usage.get("prompt_tokens")),
            completion_tokens=_int(usage.get("completion_tokens")), masked=marks,
            created_at=item.created_at, status="pending")

    def _count(self) -> int:
        with self.db.session() as s:
            return s.scalar(select(func.count()).select_from(Capture)) or 0

    def prune(self) -> int:
        """Apply retention: rows older than the limit in days, then the oldest over the row
        limit. Returns how many rows went."""
        self._last_prune = time.monotonic()
        cutoff = int(time.time() - self.settings.capture_retention_days * 86400)
        gone = 0
        with self.db.session() as s:
            gone += s.execute(delete(Capture).where(Capture.created_at < cutoff)).rowcount or 0
            total = s.scalar(select(func.count()).select_from(Capture)) or 0
            over = total - self.settings.capture_max_rows
            if over > 0:
                oldest = select(Capture.id).order_by(Capture.created_at, Capture.id).limit(over)
                ids = list(s.scalars(oldest))
                gone += s.execute(delete(Capture).where(Capture.id.in_(ids))).rowcount or 0
        if gone:
            self.metrics.captures.labels("expired").inc(gone)
        return gone


def parse_answer(body: bytes) -> dict[str, Any] | None:
    """id, model, text, finish_reason, usage of a non-streamed OpenAI answer (first choice)."""
    data = json.loads(body)
    if not isinstance(data, dict) or not data.get("choices"):
        return None
    choice = data["choices"][0]
    text = (choice.get("message") or {}).get("content") if "message" in choice else choice.get("text")
    return {"id": data.get("id"), "model": data.get("model"), "text": text or "",
            "finish_reason": choice.get("finish_reason"), "usage": data.get("usage")}


def parse_stream(body: bytes) -> dict[str, Any] | None:
    """The same, assembled from an OpenAI event stream; None if it carried an error."""
    out: dict[str, Any] = {"id": None, "model": None, "finish_reason": None, "usage": None}
    parts: list[str] = []
    seen = False
    for line in body.decode("utf-8", "replace").splitlines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            break
        try:
            event = json.loads(payload)
        except ValueError:
            continue
        if not isinstance(event, dict) or "error" in event:
            return None
        seen = True
        out["id"] = out["id"] or event.get("id")
        out["model"] = out["model"] or event.get("model")
        out["usage"] = event.get("usage") or out["usage"]
        for choice in event.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            piece = (delta or {}).get("content") if delta is not None else choice.get("text")
            if piece:
                parts.append(piece)
            out["finish_reason"] = choice.get("finish_reason") or out["finish_reason"]
    if not seen:
        return None
    out["text"] = "".join(parts)
    return out


def _cut(value: Any, limit: int) -> Any:
    return value[:limit] if isinstance(value, str) else value


def _str(value: Any, limit: int) -> str | None:
    return str(value)[:limit] if value is not None else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None

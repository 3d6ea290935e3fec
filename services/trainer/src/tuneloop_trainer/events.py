"""The job process -> service event channel: one JSON object per line in ``jobs/<id>/events.jsonl``.

The job process appends (and flushes) whole lines; the service tails the file from a byte
offset it stores in its DB, so a restart neither loses nor repeats events. The same file
works for the local executor and for Kubernetes Jobs (the artifact volume is shared). An object
store has no append: there the job process writes a local file and mirrors it whole to the
store after every event (``EventWriter(mirror=...)``), and the service reads the object from its
offset (:func:`read_store_events`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneloop.storage import ArtifactStore


class EventWriter:
    """Append-only JSONL event log written by the job process."""

    def __init__(self, path: Path, mirror: Callable[[bytes], None] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.mirror = mirror  # gets the whole file after every event (object stores)
        self._lock = threading.Lock()

    def emit(self, type_: str, **data: Any) -> None:
        line = json.dumps({"type": type_, "ts": time.time(), "data": data}, default=_jsonable)
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            if self.mirror is not None:
                self.mirror(self.path.read_bytes())

    def warning(self, code: str, message: str, **data: Any) -> None:
        self.emit("warning", code=code, message=message, **data)


class RankEventWriter(EventWriter):
    """A DDP worker other than rank 0: it trains but reports nothing, except its own failure
    (an ``error`` event tagged with its rank)."""

    def __init__(self, path: Path, rank: int) -> None:
        super().__init__(path)
        self.rank = rank

    def emit(self, type_: str, **data: Any) -> None:
        if type_ == "error":
            super().emit(type_, rank=self.rank, **data)


def _jsonable(value: Any) -> Any:
    try:
        return float(value)
    except Exception:
        return str(value)


def read_new_events(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Complete lines after ``offset`` -> (events, new offset). A partial last line waits."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
    except FileNotFoundError:
        return [], offset
    return parse_events(chunk, offset)


def read_store_events(store: ArtifactStore, key: str,
                      offset: int) -> tuple[list[dict[str, Any]], int]:
    """:func:`read_new_events` of the store's ``key``, local folder or object store."""
    if store.is_local:
        return read_new_events(store.local_path(key), offset)
    try:
        with store.open(key, "rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
    except FileNotFoundError:
        return [], offset
    return parse_events(chunk, offset)


def parse_events(chunk: bytes, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The complete lines of ``chunk`` (read from ``offset``) -> (events, new offset)."""
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset
    events = []
    for raw in chunk[: end + 1].splitlines():
        if not raw.strip():
            continue
        try:
            events.append(json.loads(raw))
        except json.JSONDecodeError:
            events.append({"type": "warning", "ts": time.time(),
                           "data": {"code": "bad_event_line", "message": raw[:200].decode("utf-8", "replace")}})
    return events, offset + end + 1


_PROGRESS_KEYS = ("step", "total_steps", "epoch", "loss", "learning_rate", "tokens_per_s", "eta_s",
                  "step_time_s", "peak_gpu_bytes", "peak_rss_bytes", "num_tokens")


def fold_progress(progress: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """A job's ``progress`` after ``events`` (a new dict): the last metrics, eval loss, backend,
    resolved hyperparameters, and the job's own error (``_error``, kept until it ends)."""
    out = dict(progress)
    for ev in events:
        type_, data = ev.get("type", "info"), ev.get("data") or {}
        if type_ in ("metrics", "train_begin"):
            out.update({k: data[k] for k in _PROGRESS_KEYS if data.get(k) is not None})
        elif type_ == "eval":
            out["eval_loss"] = data.get("eval_loss")
        elif type_ == "info" and data.get("backend"):
            out["backend"] = data["backend"]
        elif type_ == "plan":  # the hyperparameters the job really uses (defaults resolved)
            out["resolved_hyperparameters"] = data.get("hyperparameters")
        elif type_ == "error":
            out["_error"] = {"code": data.get("code"), "message": data.get("message")}
    return out

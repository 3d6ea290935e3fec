"""Parse and mask one captured answer: pure functions on plain data, so that the capture
writer can run them in a separate process (regular expressions hold the GIL; masking a large
prompt there never delays the gateway's event loop)."""

from __future__ import annotations

import json
from typing import Any

from .masking import mask, mask_messages


def prepare_batch(items: list[dict[str, Any]], limit: int) -> list[tuple[str, Any]]:
    """``("ok", fields)``, ``("skipped", None)`` (an error answer) or ``("failed", why)`` per item."""
    out: list[tuple[str, Any]] = []
    for item in items:
        try:
            fields = prepare(item, limit)
        except Exception as exc:  # one bad answer does not lose the batch
            out.append(("failed", f"{exc.__class__.__name__}: {exc}"[:300]))
            continue
        out.append(("skipped", None) if fields is None else ("ok", fields))
    return out


def prepare(item: dict[str, Any], limit: int) -> dict[str, Any] | None:
    """The masked fields of one capture, or None when there is nothing to keep."""
    answer = parse_stream(item["body"]) if item["stream"] else parse_answer(item["body"])
    if answer is None:
        return None
    request = item["request"]
    if item["endpoint"] == "chat":
        msgs = [m for m in request.get("messages") or [] if isinstance(m, dict)]
    else:
        prompt = request.get("prompt")
        msgs = [{"role": "user", "content": prompt if isinstance(prompt, str) else json.dumps(prompt)}]
    msgs = [{**m, "content": _cut(m.get("content"), limit)} for m in msgs]
    masked_msgs, found = mask_messages(msgs)
    text, found_out = mask(_cut(answer["text"], limit))
    found += found_out
    usage = answer.get("usage") or {}
    marks = dict(found)
    if item["truncated"] or len(answer["text"]) > limit:
        marks["truncated"] = 1
    return {"response_id": _str(answer.get("id"), 200), "model": str(request.get("model"))[:300],
            "served_model": _str(answer.get("model"), 300), "messages": masked_msgs, "output": text,
            "finish_reason": _str(answer.get("finish_reason"), 40),
            "prompt_tokens": _int(usage.get("prompt_tokens")),
            "completion_tokens": _int(usage.get("completion_tokens")), "masked": marks}


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

"""CPU engine: ``transformers serve`` pinned to the model folder (see ``transformers_serve.py``)."""

from __future__ import annotations

import json
import sys
from typing import Any

from tuneloop.errors import InvalidRequest

from .base import Engine

_SAMPLING = ("temperature", "top_p", "stop", "seed", "frequency_penalty", "logit_bias")


class TransformersEngine(Engine):
    kind = "transformers"
    supports_n = False  # transformers 5.17 ignores `n`; the proxy fans out instead
    # transformers serve cancels a streamed generation when its client goes, never a plain one
    abort_needs_stream = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.per_request_sampling = not self.settings.continuous_batching
        self.greedy = _greedy_by_default(self.model_dir)

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "tuneloop_inference.engines.transformers_serve",
               "--model-dir", self.model_dir, "--served-model-name", self.name,
               "--host", self.host, "--port", str(self.port),
               "--device", self.settings.engine_device]
        if self.settings.continuous_batching:
            cmd += ["--continuous-batching", "--cb-kv-cache-tokens", str(self.settings.cb_kv_cache_tokens)]
        return cmd

    def adapt_body(self, endpoint: str, body: dict[str, Any]) -> None:
        if not self.per_request_sampling:
            used = [k for k in _SAMPLING if body.get(k) is not None
                    and not (k == "temperature" and self.greedy and _is_zero(body[k]))]
            if used:
                raise InvalidRequest(
                    f"{used[0]}: not supported per request by the CPU engine in continuous-"
                    "batching mode (transformers 5.17 applies one sampling config to every "
                    "request); set INFERENCE_CONTINUOUS_BATCHING=false", param=used[0],
                    code="unsupported_parameter")
        # transformers serve rejects stream_options; usage is always sent in the last chunk
        body.pop("stream_options", None)

    def fix_response(self, body: dict[str, Any], data: dict[str, Any]) -> bool:
        """OpenAI returns text *without* the stop sequence; transformers keeps it at the end."""
        stop = body.get("stop")
        if not stop:
            return False
        stops = [stop] if isinstance(stop, str) else stop
        changed = False
        for choice in data.get("choices") or []:
            if choice.get("finish_reason") != "stop":
                continue
            holder, key = (choice["message"], "content") if "message" in choice else (choice, "text")
            text = holder.get(key)
            for s in stops:
                if isinstance(text, str) and text.endswith(s):
                    holder[key] = text[: len(text) - len(s)]
                    changed = True
                    break
        return changed

    def stream_filter(self, body: dict[str, Any]) -> "StopStripper | None":
        stop = body.get("stop")
        if not stop:
            return None
        return StopStripper([stop] if isinstance(stop, str) else list(stop))


def _is_zero(value: Any) -> bool:
    try:
        return float(value) == 0.0
    except (TypeError, ValueError):
        return False


def _greedy_by_default(model_dir: str) -> bool:
    """True when the model's generation config decodes greedily: then ``temperature: 0`` asks
    for exactly what the continuous-batching engine does for every request, and is accepted."""
    try:
        with open(f"{model_dir}/generation_config.json", encoding="utf-8") as fh:
            return not json.load(fh).get("do_sample", False)
    except (OSError, ValueError):
        return True  # transformers' default GenerationConfig is greedy


class StopStripper:
    """Removes the stop sequence from a streamed answer (transformers streams it, OpenAI not).

    Text deltas are held back until at least ``len(longest stop)`` characters follow them; when
    the chunk with ``finish_reason == "stop"`` arrives, the held text loses its stop suffix and is
    sent as one delta before that chunk. Everything else passes through unchanged.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.keep = max((len(s) for s in self.stops), default=0)
        self.buf = b""
        self.held: list[tuple[dict, str]] = []  # (chunk, text)

    @staticmethod
    def _text_slot(choice: dict) -> tuple[dict, str] | None:
        if isinstance(choice.get("delta"), dict) and isinstance(choice["delta"].get("content"), str):
            return choice["delta"], "content"
        if isinstance(choice.get("text"), str):
            return choice, "text"
        return None

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = []
        while b"\n\n" in self.buf:
            event, self.buf = self.buf.split(b"\n\n", 1)
            out.append(self._event(event))
        return b"".join(out)

    def flush(self) -> bytes:
        out = self._emit(self.held) + self.buf
        self.held, self.buf = [], b""
        return out

    @staticmethod
    def _emit(items: list[tuple[dict, str]]) -> bytes:
        return b"".join(b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk, _ in items)

    def _event(self, event: bytes) -> bytes:
        raw = event + b"\n\n"
        if not event.startswith(b"data: {"):
            return self.flush_held() + raw
        try:
            chunk = json.loads(event[6:])
            choice = (chunk.get("choices") or [None])[0] or {}
        except (ValueError, AttributeError, IndexError):
            return self.flush_held() + raw
        slot = self._text_slot(choice)
        if choice.get("finish_reason") == "stop":
            text = "".join(t for _, t in self.held) + (slot[0][slot[1]] if slot else "")
            for s in self.stops:
                if text.endswith(s):
                    text = text[: len(text) - len(s)]
                    break
            out = b""
            if self.held:
                first = self.held[0][0]
                holder = self._text_slot(first["choices"][0])
                if holder is not None and text:
                    holder[0][holder[1]] = text
                    out = self._emit([(first, text)])
            elif slot and text:
                slot[0][slot[1]] = text
                self.held = []
                return b"data: " + json.dumps(chunk).encode() + b"\n\n"
            if slot:
                slot[0][slot[1]] = ""
            self.held = []
            return out + b"data: " + json.dumps(chunk).encode() + b"\n\n"
        if slot is not None and slot[0][slot[1]] and not choice.get("finish_reason"):
            self.held.append((chunk, slot[0][slot[1]]))
            released = []
            while self.held and sum(len(t) for _, t in self.held[1:]) >= self.keep:
                released.append(self.held.pop(0))
            return self._emit(released)
        return self.flush_held() + raw

    def flush_held(self) -> bytes:
        out = self._emit(self.held)
        self.held = []
        return out

"""CPU engine: ``transformers serve`` pinned to the model folder (see ``transformers_serve.py``)."""

from __future__ import annotations

import sys
from typing import Any

from tuneloop.errors import InvalidRequest

from .base import Engine

_SAMPLING = ("temperature", "top_p", "stop", "seed", "frequency_penalty", "logit_bias")


class TransformersEngine(Engine):
    kind = "transformers"
    supports_n = False  # transformers 5.17 ignores `n`; the proxy fans out instead

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.per_request_sampling = not self.settings.continuous_batching

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "tuneloop_inference.engines.transformers_serve",
               "--model-dir", self.model_dir, "--served-model-name", self.name,
               "--host", self.host, "--port", str(self.port),
               "--device", self.settings.engine_device]
        if self.settings.continuous_batching:
            cmd.append("--continuous-batching")
        return cmd

    def adapt_body(self, endpoint: str, body: dict[str, Any]) -> None:
        if not self.per_request_sampling:
            used = [k for k in _SAMPLING if body.get(k) is not None]
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

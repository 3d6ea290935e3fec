"""What a deployment request may name, checked before anything is registered.

A source is exactly one of a model version (``model_id``: its merged weights, or its LoRA
adapter attached to a served vLLM base) or a local model folder (``path`` + ``name``). Then the
placement: ``tensor_parallel_size`` is vLLM only, divides the model's attention heads, and fits
on this replica's GPUs now. The store and file checks are the only blocking part: one hop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tuneloop import layout
from tuneloop.errors import Conflict, InvalidRequest, NotFound
from tuneloop.ids import is_valid_id
from tuneloop.storage import ArtifactStore
from tuneloop.offload import offloaded

from .placement import GpuAllocator, PlacementError
from .routing import ADAPTER_SUFFIX, NAME_RE, RoutingTable
from .settings import InferenceSettings


@dataclass
class Source:
    name: str
    model_id: str | None
    path: str | None
    adapter_of: str | None
    heads: int | None  # the model's attention heads (read only when placing on GPUs)


class SourceChecks:
    def __init__(self, settings: InferenceSettings, store: ArtifactStore, routing: RoutingTable,
                 kind: str, device: str, gpus: GpuAllocator | None) -> None:
        self.settings, self.store, self.routing = settings, store, routing
        self.kind, self.device, self.gpus = kind, device, gpus

    async def source(self, model_id: str | None, name: str | None, path: str | None,
                     adapter_of: str | None) -> Source:
        """The served name and resolved folder of a request, or 400/404/409 saying why not."""
        if bool(model_id) == bool(path):
            raise InvalidRequest("give exactly one of `model_id` (a trained model version) or "
                                 "`path` (a local model folder)", param="model_id")
        if model_id:
            if not is_valid_id(model_id, "mv"):
                raise InvalidRequest(f"model_id '{model_id[:80]}' is not a model version id "
                                     "(mv-...)", param="model_id", code="invalid_model_id")
            # a runtime adapter and the merged weights of one version are different deployments
            # (two engines' caches): each keeps an immutable served name of its own
            own = f"{model_id}{ADAPTER_SUFFIX}" if adapter_of else model_id
            if name and name != own:
                raise InvalidRequest(f"a model version is served under '{own}'; omit `name`",
                                     param="name")
            name = own
        elif not name:
            raise InvalidRequest("`name` is required with `path`", param="name")
        elif adapter_of:
            raise InvalidRequest("`adapter_of` needs a `model_id`", param="adapter_of")
        path, heads = await self._inspect(model_id, path, adapter_of,
                                          self.gpus is not None and not adapter_of)
        if not NAME_RE.match(name):
            raise InvalidRequest("name: letters, digits, '.', '_', ':', '-' (max 128)",
                                 param="name")
        if name in self.routing.aliases:
            raise Conflict(f"'{name}' is an alias; served names and aliases must differ",
                           code="name_taken", param="name")
        if adapter_of:
            self._check_base(adapter_of)
        return Source(name, model_id, path, adapter_of, heads)

    @offloaded
    def _inspect(self, model_id: str | None, path: str | None, adapter_of: str | None,
                 read_heads: bool) -> tuple[str | None, int | None]:
        """The artifact exists in the store (404) or the folder is a model (400); the folder
        made absolute; the attention heads if asked for."""
        if model_id:
            key = layout.model_adapter(model_id) if adapter_of else layout.model_merged(model_id)
            if not self.store.exists(key):
                raise NotFound(f"model version '{model_id}' has no {key.rsplit('/', 1)[-1]} "
                               "artifact in the store", code="model_not_found", param="model_id")
        else:
            p = Path(path)  # type: ignore[arg-type]
            if not p.is_absolute():
                p = p.resolve()
            if not (p / "config.json").is_file():
                raise InvalidRequest(f"path '{path}' is not a model folder (no config.json)",
                                     param="path", code="invalid_model_path")
            path = str(p)
        return path, (self._attention_heads(model_id, path) if read_heads else None)

    def _attention_heads(self, model_id: str | None, path: str | None) -> int | None:
        try:
            if path:
                cfg = json.loads(Path(path, "config.json").read_text())
            else:
                key = f"{layout.model_merged(model_id or '')}/config.json"
                cfg = json.loads(self.store.read_bytes(key))
        except (OSError, ValueError, KeyError):
            return None
        cfg = cfg.get("text_config") or cfg
        heads = cfg.get("num_attention_heads")
        return heads if isinstance(heads, int) else None

    def _check_base(self, adapter_of: str) -> None:
        base = self.routing.routes.get(adapter_of)
        if self.kind != "vllm" or (base is not None and not getattr(base, "lora", False)):
            raise InvalidRequest("runtime LoRA adapters need the vllm engine with LoRA on "
                                 f"for '{adapter_of}' (INFERENCE_VLLM_ENABLE_LORA; on CPU "
                                 "by default for the base deployment)", param="adapter_of",
                                 code="lora_unsupported")
        if base is None:
            raise InvalidRequest(f"base deployment '{adapter_of}' is not ready here",
                                 param="adapter_of", code="model_not_ready")

    def tensor_parallel(self, tp: int | None, src: Source, *, placed: bool) -> int:
        """``tensor_parallel_size``: vLLM only, a divisor of the model's attention heads, at most
        the GPUs of this replica, and (for an engine not ``placed`` here yet) room on them now."""
        if src.adapter_of:
            if tp not in (None, 1):
                raise InvalidRequest("a runtime LoRA adapter runs in its base's engine (and its "
                                     "tensor parallelism); omit tensor_parallel_size",
                                     param="tensor_parallel_size", code="invalid_request")
            return 1
        tp = tp or self.settings.tensor_parallel_size
        if tp == 1 and self.gpus is None:
            return tp
        if self.gpus is None:
            raise InvalidRequest(f"tensor_parallel_size={tp} needs the vllm engine on GPUs (this "
                                 f"replica runs the {self.kind} engine on {self.device}, one "
                                 "process per model)",
                                 param="tensor_parallel_size", code="tensor_parallel_unsupported")
        if src.heads and src.heads % tp:
            raise InvalidRequest(f"tensor_parallel_size={tp} must divide the model's "
                                 f"{src.heads} attention heads", param="tensor_parallel_size",
                                 code="invalid_tensor_parallel_size")
        if placed:
            return tp  # already holds its GPUs here
        try:
            self.gpus.check(tp, self.settings.gpu_memory_utilization)
        except PlacementError as exc:
            if exc.code == "not_enough_gpus":
                raise InvalidRequest(str(exc), param="tensor_parallel_size",
                                     code="not_enough_gpus") from exc
            raise Conflict(f"cannot place '{src.name}': {exc}", code=exc.code,
                           param="tensor_parallel_size") from exc
        return tp

"""Engine processes the controller starts, one per deployment: ``transformers serve`` (CPU) and
``vllm serve`` (GPU). Both speak the OpenAI API under the deployment's served name."""

from .base import Engine, EngineError, make_engine, resolve_engine_kind

__all__ = ["Engine", "EngineError", "make_engine", "resolve_engine_kind"]

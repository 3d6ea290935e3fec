"""Engine processes the controller starts, one per deployment: vLLM (its CUDA build on a GPU, its
CPU build on a CPU) and, as the CPU fallback, ``transformers serve``. Both speak the OpenAI API
under the deployment's served name."""

from .base import Engine, EngineError, make_engine, resolve_engine_kind, vllm_device, vllm_python

__all__ = ["Engine", "EngineError", "make_engine", "resolve_engine_kind", "vllm_device",
           "vllm_python"]

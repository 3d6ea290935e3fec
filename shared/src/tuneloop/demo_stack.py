"""The demo's local stack: the environment its services start with, the embedded base, the
services brought up and the gateway reached (``tuneloop.demo`` runs the loop on it)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from rich.console import Console

from .cli.api import ApiError, GatewayAPI

ALIAS = "support-bot"
console = Console()


class DemoError(Exception):
    """A step could not run; the message says which service and where its log is."""


def cuda_present() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


# -- configuration of the local stack ------------------------------------------------------------
def configure_env(var: Path, base_path: Path, eval_max_tokens: int, gpu: bool = False) -> None:
    """Environment the services start with (only where the user has not set it already)."""
    from .stack import configure_local_env

    configure_local_env(var, base_path)
    env = {
        "GATEWAY_PROMOTION_ALIAS": ALIAS,
        "GATEWAY_EVAL_MAX_TOKENS": str(eval_max_tokens),
        "GATEWAY_EVAL_CONCURRENCY": "8",
    }
    if not _vllm_engine_expected():
        # transformers serve on 2 cores: the whole 438-item suite would take longer than the
        # rest of the demo (a stated subset, round-robin across its kinds)
        env["GATEWAY_GENERAL_SUITE_SIZE"] = "200"
    # else all of it: on vLLM's CPU build 200 items left a demo candidate that forgot nothing
    # (general 0.355 -> 0.375) 'inconclusive' (drop CI -0.09 .. +0.051); 438 items narrow it
    if gpu:  # vLLM with runtime LoRA: the candidate is evaluated as an adapter of the served base
        env.update({"INFERENCE_ENGINE": "vllm", "INFERENCE_VLLM_ENABLE_LORA": "true",
                    "INFERENCE_GPU_MEMORY_UTILIZATION": "0.30",
                    # 3,160 eval generations: at 64 in flight the H200 answered in 0.7 s p50
                    # (batches far from full; base eval 49 s), so 256
                    "GATEWAY_EVAL_CONCURRENCY": "256",
                    # a 135M model decodes fast enough eagerly; compilation + CUDA graphs would
                    # cost minutes at each of the demo's two engine starts
                    "INFERENCE_VLLM_EXTRA_ARGS": "--enforce-eager",
                    "TRAINER_BACKEND": "auto"})
        # all 3,000 items (core + extended): a GPU answers them in seconds, and the core's 438
        # could not decide a 0.032 drop against 0.05 on the H200 (CI up to +0.077; ~2,750 needed)
        env["GATEWAY_GENERAL_SUITE_SIZE"] = "3000"
    for k, v in env.items():
        os.environ.setdefault(k, v)


def _vllm_engine_expected() -> bool:
    """Whether the inference service will pick vLLM (its ``auto`` rule: a vLLM interpreter from
    ``INFERENCE_VLLM_PYTHON``, or ``.venv-vllm`` beside this virtualenv, as ``make venv`` builds)."""
    if os.environ.get("INFERENCE_ENGINE", "auto") == "transformers":
        return False
    if os.environ.get("INFERENCE_ENGINE") == "vllm" or os.environ.get("INFERENCE_VLLM_PYTHON"):
        return True
    return (Path(sys.prefix).parent / ".venv-vllm" / "bin" / "python").exists()


def _log_hint(var: Path, service: str) -> str:
    return f"see {var / 'logs' / (service + '.log')}"


# -- bringing the stack up ----------------------------------------------------------------------
def step_base(var: Path) -> Path:
    from .basemodel import BaseModelError, prepare_base
    from .storage import ArtifactStore

    url = os.environ.get("TUNELOOP_ARTIFACT_URL") or str((var / "artifacts").resolve())
    try:
        base = prepare_base(ArtifactStore(url))
    except BaseModelError as exc:
        raise DemoError(str(exc)) from exc
    info = base.info
    console.print(f"base model: [bold]{base.path}[/] ({'converted now' if base.created else 'already prepared'}; "
                  f"{info.get('parameters', 0) / 1e6:.0f}M params, {info.get('dtype')}, "
                  f"smoke answer {info.get('smoke', {}).get('answer')!r})")
    return base.path


def step_up(var: Path) -> None:
    from . import stack

    if stack.up(var) != 0:
        raise DemoError(f"the stack did not come up ({var / 'logs'}/*.log)")


def connect(var: Path) -> GatewayAPI:
    from .cli.api import default_api_key

    key = default_api_key(var)
    if not key:
        raise DemoError(f"no admin key: the gateway writes one to {var / 'gateway-admin-key'} on "
                        f"first start ({_log_hint(var, 'gateway')}), or set TUNELOOP_API_KEY")
    return GatewayAPI(os.environ.get("TUNELOOP_URL"), key)


def wait_ready(api: GatewayAPI, var: Path, timeout_s: float = 600.0) -> None:
    """Wait until the gateway's /ready is green (inference has loaded the base)."""
    deadline = time.monotonic() + timeout_s
    with console.status("waiting for the base model to be served..."):
        while True:
            try:
                api.request("GET", "/ready")
                return
            except ApiError as exc:
                last = exc
            if time.monotonic() > deadline:
                raise DemoError(f"gateway not ready after {timeout_s:.0f}s: {last} "
                                f"({_log_hint(var, 'inference')})")
            time.sleep(2)



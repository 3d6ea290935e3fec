"""The four services as real processes on free ports, wired to each other (for tests).

    with four_services(var, base_model, admin_key=ADMIN, inference_admin_key=INF) as s:
        s["gateway"].url ...

Each service's extra environment goes in ``env={"gateway": {...}, ...}``; logs go to
``var/logs/<service>.log``. Started in dependency order, stopped in reverse, always. Internal
calls are authenticated as in production: one service token, shared by the four.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .process import ServiceProcess


@contextmanager
def four_services(var: Path, base_model: Path, *, admin_key: str, inference_admin_key: str,
                  env: Mapping[str, Mapping[str, str]] | None = None) -> Iterator[dict[str, ServiceProcess]]:
    """dataset, trainer, inference (serving ``base_model`` as ``base`` on the default CPU engine,
    vLLM's CPU build, in float32 so that greedy answers do not depend on how requests were
    batched; a small KV cache) and the gateway (bootstrap admin key ``admin_key``) sharing the
    data dir ``var``."""
    extra = {k: dict(v) for k, v in (env or {}).items()}
    common = {"TUNELOOP_DATA_DIR": str(var), "TUNELOOP_LOG_JSON": "false", "HF_HUB_OFFLINE": "1",
              "TUNELOOP_SERVICE_AUTH": "true", "TUNELOOP_SERVICE_TOKEN": secrets.token_urlsafe(24)}
    logs = var / "logs"
    started: dict[str, ServiceProcess] = {}

    def start(name: str, env_: dict[str, str], **kw: Any) -> ServiceProcess:
        proc = ServiceProcess(f"tuneloop_{name}", env={**common, **env_, **extra.get(name, {})},
                              log_path=logs / f"{name}.log", **kw)
        started[name] = proc.start()
        return proc

    try:
        dataset = start("dataset", {})
        trainer = start("trainer", {"TUNELOOP_DATASET_URL": dataset.url, "TRAINER_DATASET_URL": dataset.url,
                                    "TRAINER_POLL_INTERVAL_S": "0.3"}, startup_timeout=120)
        inference = start("inference", {"INFERENCE_ADMIN_KEY": inference_admin_key,
                                        "INFERENCE_BASE_MODEL_PATH": str(base_model),
                                        "INFERENCE_VLLM_DTYPE": "float32",
                                        "INFERENCE_VLLM_CPU_KV_CACHE_GIB": "0.25"},
                          health_path="/ready", startup_timeout=240)
        start("gateway", {"GATEWAY_BOOTSTRAP_ADMIN_KEY": admin_key, "INFERENCE_ADMIN_KEY": inference_admin_key,
                          "TUNELOOP_DATASET_URL": dataset.url, "TUNELOOP_TRAINER_URL": trainer.url,
                          "TUNELOOP_INFERENCE_URL": inference.url})
        yield started
    finally:
        for proc in reversed(list(started.values())):
            proc.stop(timeout=60)

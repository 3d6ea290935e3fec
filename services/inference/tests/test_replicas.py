"""Two controller replicas on one database converge on the same alias -> version (each with
its own vLLM CPU engine, bound to its own core as two pods would be)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tuneloop.testing import ServiceProcess

pytestmark = pytest.mark.slow

ADMIN_KEY = "replica-admin"
V1 = "mv-00000000000000a1"
CORES = sorted(os.sched_getaffinity(0))


def start(name: str, root: Path, core: int) -> ServiceProcess:
    return ServiceProcess(
        "tuneloop_inference",
        env={"TUNELOOP_DATA_DIR": str(root / name), "INFERENCE_ADMIN_KEY": ADMIN_KEY,
             "TUNELOOP_DATABASE_URL": f"sqlite:///{root / 'shared.db'}",
             "TUNELOOP_ARTIFACT_URL": str(root / "artifacts"), "INFERENCE_ENGINE": "vllm",
             "INFERENCE_VLLM_CPU_KV_CACHE_GIB": "0.25",
             "INFERENCE_VLLM_CPU_THREADS_BIND": str(core),
             "INFERENCE_REPLICA_ID": name, "INFERENCE_RECONCILE_INTERVAL_S": "0.5",
             "TUNELOOP_LOG_JSON": "false"},
        log_path=root / f"{name}.log", health_path="/ready", startup_timeout=180).start()


def test_two_replicas_converge_on_the_alias(tmp_path: Path, tiny_random_dir: Path) -> None:
    shutil.copytree(tiny_random_dir, tmp_path / "artifacts/models" / V1 / "merged")
    a = start("replica-a", tmp_path, CORES[0])
    b = start("replica-b", tmp_path, CORES[-1])
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    try:
        r = httpx.put(a.url + "/admin/aliases/bot", json={"model": V1}, headers=headers,
                      timeout=300)
        assert r.status_code == 200, r.text
        assert r.json()["replicas"]["replica-a"] == V1

        deadline = time.monotonic() + 120
        view = r.json()
        while not view["converged"] and time.monotonic() < deadline:
            time.sleep(0.5)
            view = httpx.get(b.url + "/admin/aliases/bot", headers=headers).json()
        assert view["converged"] is True
        assert view["replicas"] == {"replica-a": V1, "replica-b": V1}

        answer = httpx.post(b.url + "/v1/chat/completions", timeout=60, json={
            "model": "bot", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200 and answer.json()["model"] == V1
        dep = httpx.get(b.url + f"/admin/deployments/{V1}", headers=headers).json()
        assert {x["replica"]: x["state"] for x in dep["replicas"]} == {
            "replica-a": "ready", "replica-b": "ready"}
    finally:
        b.stop(timeout=60)
        a.stop(timeout=60)

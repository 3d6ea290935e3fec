"""Helpers of the trainer tests (imported by conftest and the test modules; unique name
because tests are collected with --import-mode=importlib)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tuneloop.testing import ServiceProcess, free_port

HERE = Path(__file__).parent
FAST_HP = {"num_train_epochs": 2, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
           "warmup_steps": 2, "max_seq_length": 256, "logging_steps": 2, "learning_rate": 2e-3}
FAST_EXPORT = {"verify_prompts": 2, "verify_max_new_tokens": 16}
TERMINAL = ("succeeded", "failed", "cancelled")


def article_to_chat(r: dict[str, str]) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": r["instruction"] + "\n\n" + r["input"]},
                         {"role": "assistant", "content": r["output"]}]}


@dataclass
class Stack:
    root: Path
    artifacts: Path
    dataset: ServiceProcess
    trainers: list[ServiceProcess] = field(default_factory=list)

    def trainer(self, name: str = "trainer", **env: str) -> ServiceProcess:
        """A real trainer process (``python -m tuneloop_trainer``) on a free port."""
        base = {"TRAINER_DATA_DIR": str(self.root / name), "TUNELOOP_ARTIFACT_URL": str(self.artifacts),
                "TRAINER_DATASET_URL": self.dataset.url, "TRAINER_POLL_INTERVAL_S": "0.3",
                "TRAINER_LOG_JSON": "true", "HF_HUB_OFFLINE": "1", "TRAINER_CANCEL_GRACE_S": "3"}
        proc = ServiceProcess("tuneloop_trainer", env={**base, **env},
                              log_path=self.root / f"{name}.log", startup_timeout=120)
        self.trainers.append(proc)
        return proc.start()

    def dataset_from_rows(self, rows: list[dict[str, Any]], eval_size: int = 12) -> str:
        r = httpx.post(f"{self.dataset.url}/v1/datasets", json={"rows": rows, "eval_size": eval_size,
                                                                  "name": "tickets"}, timeout=120)
        assert r.status_code in (200, 201), r.text
        return r.json()["id"]


def wait_for(fn: Callable[[], Any], timeout: float = 240, interval: float = 0.3, what: str = "") -> Any:
    """Poll ``fn`` until it returns something truthy (readiness by polling, never by sleeping)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what or fn}")


def wait_status(url: str, job_id: str, statuses: tuple[str, ...] = TERMINAL,
                timeout: float = 300) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        j = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
        return j if j["status"] in statuses else None

    return wait_for(check, timeout, what=f"{job_id} in {statuses}")


def events(url: str, job_id: str, after: int = 0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        page = httpx.get(f"{url}/v1/jobs/{job_id}/events", params={"after": after, "limit": 1000},
                         timeout=10).json()
        out += page["data"]
        if not page["has_more"]:
            return out
        after = out[-1]["seq"]


def wait_event(url: str, job_id: str, type_: str, timeout: float = 240) -> dict[str, Any]:
    return wait_for(lambda: next((e for e in events(url, job_id) if e["type"] == type_), None),
                    timeout, what=f"{type_} event of {job_id}")


class Receiver:
    """A real HTTP server on a free port recording the POSTed JSON bodies (callback target)."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail_first = fail_first
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.calls += 1
                if outer.calls <= outer.fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.bodies.append(json.loads(body))
                self.send_response(202)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *a: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.url = f"http://127.0.0.1:{self.port}/internal/training-events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


class FakeKube:
    """The fake Kubernetes API server (``fake_kube_api.py``) as a real process on a port."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = "test-token-123"
        self.token_file = tmp / "token"
        self.token_file.write_text(self.token)
        self.proc = subprocess.Popen([sys.executable, str(HERE / "fake_kube_api.py"), "--port",
                                      str(self.port), "--token", self.token],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._up, 30, what="fake kube api")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError("fake kube api exited")
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def jobs(self) -> dict[str, Any]:
        return httpx.get(self.url + "/_fake/jobs", timeout=5).json()

    def set_status(self, ns: str, name: str, status: dict[str, Any]) -> None:
        httpx.post(f"{self.url}/_fake/jobs/{ns}/{name}/status", json=status, timeout=5).raise_for_status()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)

"""Run the four services locally as processes (``make up`` / ``make down`` / ``tuneloop up``).

Pids go to ``var/run/<service>.pid``, logs to ``var/logs/<service>.log``; ``up`` waits for each
service's ``/health`` and fails with the log tail if one does not come up.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

SERVICES = [  # start order: dependencies first
    ("dataset", "tuneloop_dataset", 8001),
    ("trainer", "tuneloop_trainer", 8002),
    ("inference", "tuneloop_inference", 8003),
    ("gateway", "tuneloop_gateway", 8000),
]


def _paths(var: Path, name: str) -> tuple[Path, Path]:
    return var / "run" / f"{name}.pid", var / "logs" / f"{name}.log"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _secret(path: Path) -> str:
    """A key kept in var/ so a re-run talks to an already running stack with the same key."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(24)
    path.write_text(key)
    path.chmod(0o600)
    return key


def configure_local_env(var: Path, base_path: Path | None = None) -> None:
    """The embedded default's environment (only where the user has not set it already):
    offline, the base model served by inference as ``base`` (on vLLM's CPU build, the default;
    continuous batching applies to the fallback engine only), inference's admin key shared with
    the gateway and the service token shared by all four through var/."""
    env = {
        "TUNELOOP_DATA_DIR": str(var),
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "INFERENCE_ADMIN_KEY": _secret(var / "demo" / "inference-admin-key"),
        # internal calls between the four services are authenticated with one shared token
        "TUNELOOP_SERVICE_TOKEN": _secret(var / "demo" / "service-token"),
        "INFERENCE_CONTINUOUS_BATCHING": "true",
    }
    if base_path is not None:
        env["INFERENCE_BASE_MODEL_PATH"] = str(base_path)
    for k, v in env.items():
        os.environ.setdefault(k, v)


def prepare_embedded_base(var: Path) -> Path:
    """Convert the embedded SmolLM2 base once (idempotent) and return its folder."""
    from .basemodel import prepare_base
    from .storage import ArtifactStore

    url = os.environ.get("TUNELOOP_ARTIFACT_URL") or str((var / "artifacts").resolve())
    return prepare_base(ArtifactStore(url)).path


def up(var: Path, only: list[str] | None = None, timeout: float = 180.0,
       ready_timeout: float = 600.0) -> int:
    var = var.resolve()
    (var / "run").mkdir(parents=True, exist_ok=True)
    (var / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TUNELOOP_DATA_DIR": str(var)}
    # the four share one service token (kept in var/, so a restart of one service matches)
    env.setdefault("TUNELOOP_SERVICE_TOKEN", _secret(var / "demo" / "service-token"))
    for name, module, port in SERVICES:
        if only and name not in only:
            continue
        pidfile, logfile = _paths(var, name)
        if _pid(pidfile):
            print(f"{name:10s} already running (pid {_pid(pidfile)})")
            continue
        port = int(os.environ.get(f"{name.upper()}_PORT", port))
        with open(logfile, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", module, "--port", str(port)], env=env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        pidfile.write_text(str(proc.pid))
        url = f"http://127.0.0.1:{port}/health"
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                print(f"{name} exited ({proc.returncode}); log tail:\n" + logfile.read_text()[-3000:])
                return 1
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                print(f"{name} not healthy after {timeout}s; log: {logfile}")
                return 1
            time.sleep(0.3)
        print(f"{name:10s} up on :{port} (pid {proc.pid}, log {logfile})")
    return wait_ready(var, only, timeout=ready_timeout)


def wait_ready(var: Path, only: list[str] | None = None, timeout: float = 600.0) -> int:
    """Wait until every service answers /ready (inference: its default model is serving)."""
    deadline = time.monotonic() + timeout
    for name, _, port in SERVICES:
        if only and name not in only:
            continue
        port = int(os.environ.get(f"{name.upper()}_PORT", port))
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                print(f"{name} not ready after {timeout}s; log: {_paths(var.resolve(), name)[1]}")
                return 1
            time.sleep(0.5)
    print("all services ready")
    return 0


def down(var: Path) -> int:
    for name, _, _ in reversed(SERVICES):
        pidfile, _ = _paths(var.resolve(), name)
        pid = _pid(pidfile)
        if pid:
            os.killpg(pid, signal.SIGTERM)
            for _ in range(100):
                if not _alive(pid):
                    break
                time.sleep(0.1)
            else:
                os.killpg(pid, signal.SIGKILL)
            print(f"{name:10s} stopped")
        pidfile.unlink(missing_ok=True)
    return 0


def status(var: Path) -> int:
    for name, _, port in SERVICES:
        pid = _pid(_paths(var.resolve(), name)[0])
        print(f"{name:10s} {'running pid ' + str(pid) if pid else 'stopped'} :{port}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tuneloop.stack")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--var", default=os.environ.get("TUNELOOP_DATA_DIR", "var"))
    p.add_argument("services", nargs="*")
    a = p.parse_args(argv)
    var = Path(a.var).resolve()
    if a.action == "up":
        base = None if os.environ.get("INFERENCE_BASE_MODEL_PATH") else prepare_embedded_base(var)
        configure_local_env(var, base)
    return {"up": lambda: up(var, a.services or None), "down": lambda: down(var),
            "status": lambda: status(var)}[a.action]()


if __name__ == "__main__":
    sys.exit(main())

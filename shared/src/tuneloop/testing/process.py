"""ServiceProcess: start a real service process on a free port and wait for /health.

Modelled on vLLM's ``RemoteOpenAIServer``: readiness by polling a health endpoint (never by
scraping logs), fail fast if the process exits, terminate then kill on exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tools_required() -> bool:
    """True when CI asked that missing system tools fail tests instead of skipping them."""
    return os.environ.get("TUNELOOP_REQUIRE_TOOLS", "") not in ("", "0", "false")


def require_tool(name: str, reason: str = "") -> str:
    """Return the path of ``name`` or skip the test (fail under TUNELOOP_REQUIRE_TOOLS=1)."""
    import pytest

    path = shutil.which(name)
    if path:
        return path
    msg = f"system tool '{name}' not found{': ' + reason if reason else ''}"
    if tools_required():
        pytest.fail(msg + " (TUNELOOP_REQUIRE_TOOLS=1 turns this skip into a failure)")
    pytest.skip(msg)


class ServiceProcess:
    """A real service process (``python -m <module>``) on a real port."""

    def __init__(self, module: str, *, env: Mapping[str, str] | None = None,
                 args: Sequence[str] = (), port: int | None = None, log_path: Path | None = None,
                 health_path: str = "/health", startup_timeout: float = 120.0) -> None:
        self.module = module
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.health_path = health_path
        self.startup_timeout = startup_timeout
        self.env = {**os.environ, **(env or {})}
        self.args = list(args)
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> "ServiceProcess":
        cmd = [sys.executable, "-m", self.module, "--port", str(self.port), *self.args]
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self._log else subprocess.DEVNULL,
            start_new_session=True,
        )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.proc.returncode} before ready"
                                   f"{self._tail()}")
            try:
                if httpx.get(self.url + self.health_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{self.module} not healthy after {self.startup_timeout}s{self._tail()}")

    def _tail(self) -> str:
        if self.log_path and self.log_path.exists():
            return "\n--- log tail ---\n" + self.log_path.read_text(errors="replace")[-3000:]
        return ""

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)
        finally:
            if self._log:
                self._log.close()

    def kill(self) -> None:
        """Hard kill (simulates a crash); the process group goes with it."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def restart(self) -> "ServiceProcess":
        self.stop()
        return self.start()

    def __enter__(self) -> "ServiceProcess":
        """Starts the process unless it already runs (``with proc.start():`` started a second
        one and leaked the first: a Prometheus outlived the test suite that way)."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""A real local S3-compatible server for tests: ``moto_server`` (moto's standalone HTTP server).

- :class:`S3Server`: ``python -m moto.server`` on a free port, ready when it answers HTTP.
- Fixtures: ``s3_server`` (session) and ``s3_store_env`` (a fresh bucket per test, as the
  env vars a service process takes: ``TUNELOOP_ARTIFACT_URL=s3://<bucket>/artifacts`` plus the
  endpoint and credentials), ``s3_artifact_url`` (the same URL) and ``s3_storage_options``.
"""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .process import ServiceProcess, tools_required

ACCESS_KEY = "tuneloop-test"
SECRET_KEY = "tuneloop-test-secret"
REGION = "us-east-1"


class S3Server(ServiceProcess):
    """moto's S3-compatible server process on 127.0.0.1:<free port>."""

    def __init__(self, *, log_path: Path | None = None) -> None:
        super().__init__("moto.server", log_path=log_path, health_path="/moto-api/",
                         startup_timeout=60)
        self.endpoint_url = self.url

    def start(self) -> "S3Server":
        import subprocess

        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self._log or subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT if self._log else subprocess.DEVNULL,
                                     start_new_session=True)
        self.wait_ready()
        return self

    def storage_options(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint_url, "key": ACCESS_KEY, "secret": SECRET_KEY,
                "client_kwargs": {"region_name": REGION}}

    def env_for(self, artifact_url: str) -> dict[str, str]:
        """What a tuneloop service process needs to use ``artifact_url`` on this server."""
        return {"TUNELOOP_ARTIFACT_URL": artifact_url,
                "TUNELOOP_S3_ENDPOINT_URL": self.endpoint_url,
                "TUNELOOP_S3_ACCESS_KEY_ID": ACCESS_KEY,
                "TUNELOOP_S3_SECRET_ACCESS_KEY": SECRET_KEY, "TUNELOOP_S3_REGION": REGION}

    def create_bucket(self, name: str | None = None) -> str:
        import boto3

        name = name or f"tl-{uuid.uuid4().hex[:12]}"
        client = boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=ACCESS_KEY,
                              aws_secret_access_key=SECRET_KEY, region_name=REGION)
        client.create_bucket(Bucket=name)  # us-east-1: no LocationConstraint
        return name


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One moto S3 server for the session (skips when moto[server]/s3fs are not installed)."""
    missing = [m for m in ("moto", "s3fs", "flask") if importlib.util.find_spec(m) is None]
    if missing:
        msg = f"python packages {missing} missing (requirements-dev.txt: moto[server], s3fs)"
        if tools_required():
            pytest.fail(msg)
        pytest.skip(msg)
    server = S3Server(log_path=tmp_path_factory.mktemp("moto") / "moto.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_artifact_url(s3_server: S3Server) -> str:
    """``s3://<fresh bucket>/artifacts`` on the session's server."""
    return f"s3://{s3_server.create_bucket()}/artifacts"


@pytest.fixture
def s3_storage_options(s3_server: S3Server) -> dict[str, Any]:
    return s3_server.storage_options()


@pytest.fixture
def s3_store_env(s3_server: S3Server, s3_artifact_url: str) -> dict[str, str]:
    return s3_server.env_for(s3_artifact_url)


__all__ = ["S3Server", "s3_server", "s3_artifact_url", "s3_storage_options", "s3_store_env"]

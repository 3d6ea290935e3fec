"""Internal calls are authenticated with the service token (issue 15, defence in depth), on
real service processes: the dataset service's API refuses calls without it, accepts every
token of the rotation list, keeps /health open; a service with auth on and no token refuses
to start instead of running open."""

from __future__ import annotations

import httpx
import pytest

from tuneloop.testing import ServiceProcess


def test_internal_api_requires_the_service_token_and_rotates(tmp_path):
    env = {"TUNELOOP_DATA_DIR": str(tmp_path), "TUNELOOP_SERVICE_AUTH": "true",
           "TUNELOOP_SERVICE_TOKEN": "new-token-0123456789,old-token-0123456789"}
    with ServiceProcess("tuneloop_dataset", env=env, log_path=tmp_path / "ds.log") as ds:
        assert httpx.get(ds.url + "/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                        {"Authorization": "new-token-0123456789"}):
            r = httpx.get(ds.url + "/v1/datasets", headers=headers)
            assert r.status_code == 401, r.text
            assert r.json()["error"]["code"] == "invalid_service_token"
        for token in ("new-token-0123456789", "old-token-0123456789"):
            r = httpx.get(ds.url + "/v1/datasets", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text


def test_auth_on_without_a_token_refuses_to_start(tmp_path):
    env = {"TUNELOOP_DATA_DIR": str(tmp_path), "TUNELOOP_SERVICE_AUTH": "true",
           "TUNELOOP_SERVICE_TOKEN": ""}
    proc = ServiceProcess("tuneloop_trainer", env=env, log_path=tmp_path / "tr.log",
                          startup_timeout=60)
    with pytest.raises(RuntimeError, match="TUNELOOP_SERVICE_TOKEN is not set"):
        proc.start()

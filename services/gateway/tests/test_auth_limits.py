"""Keys, scopes, limits and upstream failures, through the real app (lifespan runs)."""

import json
import os
import socket
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from tuneloop.testing import free_port
from tuneloop_gateway.app import create_app
from tuneloop_gateway.settings import GatewaySettings


def _settings(tmp_path, **kw):
    base = dict(data_dir=tmp_path, reconcile_interval_s=0, log_json=False,
                inference_url=f"http://127.0.0.1:{free_port()}",
                trainer_url=f"http://127.0.0.1:{free_port()}",
                dataset_url=f"http://127.0.0.1:{free_port()}")
    return GatewaySettings(**{**base, **kw})


@pytest.fixture(autouse=True)
def backend(database_url, monkeypatch):
    """Every test here runs on both metadata backends: SQLite (default) and a real PostgreSQL
    database (through the env, so the keys CLI subprocess uses it too)."""
    if database_url:
        monkeypatch.setenv("GATEWAY_DATABASE_URL", database_url)
    return database_url


def _stored(tmp_path, database_url) -> bytes:
    """Everything the key table holds, as bytes (the SQLite file, or the PostgreSQL rows)."""
    if database_url is None:
        return (tmp_path / "gateway.db").read_bytes()
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM gateway_api_keys")).all()
    engine.dispose()
    assert rows
    return repr(rows).encode()


@pytest.fixture
def gw(tmp_path, capsys):
    with TestClient(create_app(_settings(tmp_path))) as client:
        key = (tmp_path / "gateway-admin-key").read_text().strip()
        client.admin = {"Authorization": f"Bearer {key}"}
        client.printed = capsys.readouterr().out
        yield client


def _err(resp, status, code):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"]["code"] == code, body
    return body["error"]


def test_first_start_prints_and_writes_an_admin_key_instead_of_running_open(gw, tmp_path, backend):
    key = (tmp_path / "gateway-admin-key").read_text().strip()
    assert key.startswith("tlk-") and key in gw.printed
    assert oct((tmp_path / "gateway-admin-key").stat().st_mode & 0o777) == "0o600"
    _err(gw.get("/v1/evals"), 401, "missing_api_key")
    _err(gw.get("/v1/evals", headers={"Authorization": "Bearer tlk-wrong-key-000000000000"}), 401,
         "invalid_api_key")
    assert gw.get("/v1/evals", headers=gw.admin).status_code == 200
    assert gw.get("/health").status_code == 200  # probes need no key
    not_ready = gw.get("/ready")  # inference is down here
    assert not_ready.status_code == 503
    assert not_ready.json()["error"]["details"] == {"database": True, "inference": False}
    # keys are stored hashed: the DB never contains the key itself
    assert key.encode() not in _stored(tmp_path, backend)


def test_second_start_does_not_make_another_key(tmp_path):
    s = _settings(tmp_path)
    with TestClient(create_app(s)):
        pass
    first = (tmp_path / "gateway-admin-key").read_text()
    with TestClient(create_app(s)) as c:
        key = first.strip()
        keys = c.get("/v1/keys", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    assert (tmp_path / "gateway-admin-key").read_text() == first
    assert len(keys) == 1


def test_bootstrap_key_from_env_setting(tmp_path):
    with TestClient(create_app(_settings(tmp_path, bootstrap_admin_key="my-admin-key-0123456789"))) as c:
        assert not (tmp_path / "gateway-admin-key").exists()
        ok = c.get("/v1/keys", headers={"Authorization": "Bearer my-admin-key-0123456789"})
        assert ok.status_code == 200 and ok.json()["data"][0]["scopes"] == ["admin"]


def test_scopes_and_revocation(gw):
    r = gw.post("/v1/keys", json={"name": "app", "scopes": ["inference"]}, headers=gw.admin)
    assert r.status_code == 201
    inf = {"Authorization": f"Bearer {r.json()['key']}"}
    assert "key_hash" not in r.json()
    # inference scope may not touch admin routes
    for method, path in [("get", "/v1/keys"), ("get", "/v1/evals"), ("get", "/v1/datasets"),
                         ("get", "/v1/jobs"), ("get", "/v1/fine_tuning/jobs"), ("get", "/v1/promotions")]:
        _err(getattr(gw, method)(path, headers=inf), 403, "insufficient_scope")
    # but reaches the inference surface (here: inference is down -> a clean 503, not a hang)
    _err(gw.get("/v1/models", headers=inf), 503, "upstream_unavailable")
    _err(gw.post("/v1/chat/completions", json={"model": "m", "messages": []}, headers=inf), 503,
         "upstream_unavailable")
    gw.delete(f"/v1/keys/{r.json()['id']}", headers=gw.admin).raise_for_status()
    _err(gw.get("/v1/models", headers=inf), 401, "invalid_api_key")
    _err(gw.delete("/v1/keys/key-doesnotexist", headers=gw.admin), 404, "api_key_not_found")


def test_bad_key_requests_are_precise_4xx(gw):
    e = _err(gw.post("/v1/keys", json={"scopes": ["root"]}, headers=gw.admin), 400, "invalid_request")
    assert e["param"].startswith("scopes")
    _err(gw.post("/v1/keys", json={"scopes": []}, headers=gw.admin), 400, "invalid_request")
    _err(gw.post("/v1/keys", json={"rate_limit_rpm": 0}, headers=gw.admin), 400, "invalid_request")


def test_rate_limit_per_key(gw):
    r = gw.post("/v1/keys", json={"name": "slow", "scopes": ["admin"], "rate_limit_rpm": 3},
                headers=gw.admin).json()
    h = {"Authorization": f"Bearer {r['key']}"}
    assert [gw.get("/v1/evals", headers=h).status_code for _ in range(3)] == [200, 200, 200]
    limited = gw.get("/v1/evals", headers=h)
    e = _err(limited, 429, "rate_limit_exceeded")
    assert int(limited.headers["retry-after"]) >= 1
    assert e["details"]["limit_rpm"] == 3 and e["details"]["retry_after_s"] > 0
    # other keys have their own bucket
    assert gw.get("/v1/evals", headers=gw.admin).status_code == 200


def test_request_size_limit(tmp_path):
    with TestClient(create_app(_settings(tmp_path, max_request_bytes=2048))) as c:
        key = (tmp_path / "gateway-admin-key").read_text().strip()
        big = {"model": "m", "messages": [{"role": "user", "content": "x" * 5000}]}
        e = _err(c.post("/v1/chat/completions", json=big, headers={"Authorization": f"Bearer {key}"}),
                 413, "payload_too_large")
        assert e["details"]["limit_bytes"] == 2048


def test_upstream_that_never_answers_is_a_504(tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts TCP connections (backlog) but never answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    try:
        with TestClient(create_app(_settings(tmp_path, inference_url=url, trainer_url=url,
                                             inference_timeout_s=1.0, http_timeout_s=1.0))) as c:
            key = (tmp_path / "gateway-admin-key").read_text().strip()
            h = {"Authorization": f"Bearer {key}"}
            _err(c.post("/v1/chat/completions", json={"model": "m", "messages": []}, headers=h),
                 504, "upstream_timeout")
            _err(c.get("/v1/jobs", headers=h), 504, "upstream_timeout")
    finally:
        silent.close()


def test_eval_requests_are_validated(gw):
    t = [{"name": "a", "model": "m"}, {"name": "b", "model": "m"}]
    _err(gw.post("/v1/evals", json={"targets": t}, headers=gw.admin), 400, "invalid_request")
    _err(gw.post("/v1/evals", json={"rows": [{"instruction": "a", "output": "b"}], "targets": []},
                 headers=gw.admin), 400, "invalid_request")
    _err(gw.post("/v1/evals", json={"rows": [{"instruction": "a", "output": "b"}], "targets": t * 5},
                 headers=gw.admin), 400, "invalid_request")
    _err(gw.post("/v1/evals", json={"rows": [{"instruction": "a", "output": "b"}],
                                    "targets": [t[0], t[0]]}, headers=gw.admin), 400, "invalid_request")
    _err(gw.post("/v1/evals", json={"rows": [{"nope": 1}], "targets": t}, headers=gw.admin), 422,
         "eval_row_invalid")
    _err(gw.post("/v1/evals", json={"rows": [], "targets": t}, headers=gw.admin), 422, "eval_set_empty")
    _err(gw.post("/v1/evals", content=b"{not json", headers={**gw.admin, "content-type": "application/json"}),
         400, "invalid_request")
    _err(gw.post("/v1/evals", files={"file": ("e.jsonl", b'{"instruction": "a", "output": "b"}\nnope\n')},
                 data={"config": json.dumps({"targets": t})}, headers=gw.admin), 422, "eval_file_invalid")
    _err(gw.get("/v1/evals/eval-0000000000000000", headers=gw.admin), 404, "eval_not_found")
    _err(gw.post("/v1/evals", json={"dataset_id": "../etc", "targets": t}, headers=gw.admin), 404,
         "dataset_not_found")


def test_promotion_api_validation_and_callback(gw):
    _err(gw.post("/v1/promotions", json={"alias": "prod"}, headers=gw.admin), 400, "invalid_request")
    _err(gw.get("/v1/promotions/promo-nothere", headers=gw.admin), 404, "promotion_not_found")
    _err(gw.post("/v1/promotions/gate", json={"job_id": "bad id"}, headers=gw.admin), 404, "job_not_found")
    # the callback needs no key and only queues the job id (the gate re-reads the job)
    r = gw.post("/internal/training-events", json={"event": "training_job.succeeded",
                                                   "job_id": "job-0123456789abcdef", "model_id": "mv-1"})
    assert r.status_code == 202 and r.json()["accepted"] is True
    _err(gw.post("/internal/training-events", json={"event": "x"}), 400, "invalid_request")
    gate = gw.get("/v1/promotions/gate", headers=gw.admin).json()
    assert gate["min_uplift"] == 0.05 and gate["alias"] == "production"


def test_keys_cli_creates_a_working_key(tmp_path):
    env = {**os.environ, "GATEWAY_DATA_DIR": str(tmp_path), "TUNELOOP_LOG_JSON": "false"}
    out = subprocess.run([sys.executable, "-m", "tuneloop_gateway.keys", "create", "--scope", "admin",
                          "--name", "ops"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    created = json.loads(out.stdout.strip().splitlines()[-1])
    assert created["scopes"] == ["admin"] and created["key"].startswith("tlk-")
    with TestClient(create_app(_settings(tmp_path))) as c:
        # an admin key exists already, so no bootstrap key is generated
        assert not (tmp_path / "gateway-admin-key").exists()
        assert c.get("/v1/keys", headers={"Authorization": f"Bearer {created['key']}"}).status_code == 200
    listed = subprocess.run([sys.executable, "-m", "tuneloop_gateway.keys", "list"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert created["id"] in listed.stdout
    bad = subprocess.run([sys.executable, "-m", "tuneloop_gateway.keys", "revoke", "key-nothere"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not found" in bad.stderr

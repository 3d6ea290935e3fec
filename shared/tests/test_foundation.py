"""Foundation: error envelope, request ids, health/ready/metrics, storage, DB, settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from tuneloop.app import build_service_app
from tuneloop.db import Database
from tuneloop.errors import NotFound
from tuneloop.ids import content_id, is_valid_id, new_id, require_id
from tuneloop.settings import ServiceSettings
from tuneloop.storage import ArtifactStore, check_key


class Body(BaseModel):
    n: int


def _app(ready_ok: bool = True) -> FastAPI:
    async def ready(_app: FastAPI) -> dict:
        return {"db": ready_ok}

    app = build_service_app(ServiceSettings(service_name="demo", log_json=True), title="t",
                            ready_check=ready)

    @app.get("/thing/{thing_id}")
    async def thing(thing_id: str) -> dict:
        raise NotFound(f"thing {thing_id} not found", code="thing_not_found", param="thing_id")

    @app.post("/body")
    async def body(b: Body) -> dict:
        return {"n": b.n}

    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("secret detail")

    return app


def test_domain_error_envelope_and_request_id() -> None:
    with TestClient(_app()) as c:
        r = c.get("/thing/x1", headers={"X-Request-ID": "rid-123"})
        assert r.status_code == 404
        err = r.json()["error"]
        assert err["code"] == "thing_not_found" and err["type"] == "not_found_error"
        assert err["param"] == "thing_id" and err["request_id"] == "rid-123"
        assert r.headers["x-request-id"] == "rid-123"


def test_validation_error_uses_envelope_with_field() -> None:
    with TestClient(_app()) as c:
        r = c.post("/body", json={"n": "not-a-number"})
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["param"] == "n" and err["code"] == "invalid_request"
        assert err["details"][0]["loc"][-1] == "n"


def test_unexpected_error_is_500_without_details() -> None:
    with TestClient(_app(), raise_server_exceptions=False) as c:
        r = c.get("/boom")
        assert r.status_code == 500
        err = r.json()["error"]
        assert err["code"] == "internal_error" and "secret" not in err["message"]
        assert err["request_id"] in err["message"]


def test_unknown_route_404_envelope() -> None:
    with TestClient(_app()) as c:
        r = c.get("/nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_health_ready_metrics() -> None:
    with TestClient(_app()) as c:
        assert c.get("/health").json()["status"] == "ok"
        assert c.get("/ready").status_code == 200
        c.get("/thing/a")
        text = c.get("/metrics").text
        assert 'tuneloop_demo_http_requests_total{method="GET",route="/thing/{thing_id}",status="404"}' in text
    with TestClient(_app(ready_ok=False)) as c:
        r = c.get("/ready")
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"


def test_ids() -> None:
    i = new_id("job")
    assert is_valid_id(i, "job") and not is_valid_id(i, "ds")
    assert content_id("ds", "ab" * 32) == "ds-" + "ab" * 8
    for bad in ["../../etc", "ds-../x", "", "DS-ABCDEF12"]:
        assert not is_valid_id(bad)
        with pytest.raises(NotFound):
            require_id(bad, "ds", "dataset")


def test_storage_atomic_and_safe(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    store.write_bytes("datasets/ds-1/a.txt", b"hello")
    assert store.read_bytes("datasets/ds-1/a.txt") == b"hello"
    with pytest.raises(RuntimeError):
        with store.open_atomic("datasets/ds-1/b.txt") as fh:
            fh.write(b"partial")
            raise RuntimeError("crash mid-write")
    assert not store.exists("datasets/ds-1/b.txt")
    assert store.list("datasets/ds-1") == ["a.txt"]  # no temp files left behind
    stage = store.staging_dir("models/mv-1")
    (stage / "w.bin").write_bytes(b"x")
    store.put_dir(stage, "models/mv-1", move=True)
    assert store.read_bytes("models/mv-1/w.bin") == b"x"
    with pytest.raises(FileExistsError):
        store.put_dir(tmp_path, "models/mv-1")
    for bad in ["../x", "/abs", "a/../b", "a//b", "a b"]:
        with pytest.raises(ValueError):
            check_key(bad)


def test_memory_fsspec_store() -> None:
    store = ArtifactStore("memory://tuneloop-test")
    store.write_bytes("x/y.txt", b"1")
    assert store.read_bytes("x/y.txt") == b"1" and not store.is_local


def test_settings_prefix_and_shared_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pydantic_settings import SettingsConfigDict

    class S(ServiceSettings):
        model_config = SettingsConfigDict(env_prefix="DEMO_", extra="ignore")
        service_name: str = "demo"

    monkeypatch.setenv("TUNELOOP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TUNELOOP_PORT", "9999")
    monkeypatch.setenv("DEMO_PORT", "1234")
    s = S()
    assert s.port == 1234 and s.data_dir == tmp_path
    assert s.resolved_database_url() == f"sqlite:///{tmp_path.resolve()}/demo.db"


def test_database_session_rolls_back(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/x.db")
    assert db.ping()
    with db.session() as s:
        s.connection().exec_driver_sql("CREATE TABLE t (x INTEGER)")
    with pytest.raises(RuntimeError), db.session() as s:
        s.connection().exec_driver_sql("INSERT INTO t VALUES (1)")
        raise RuntimeError
    with db.session() as s:
        assert s.connection().exec_driver_sql("SELECT count(*) FROM t").scalar() == 0


@pytest.mark.parametrize("freeze", [True, False])
def test_start_up_objects_leave_later_full_collections(freeze: bool) -> None:
    """A full collection walked the ~130,000 objects of the imports and start-up on every
    burst (65-75 ms each, several per 256 requests: bench/serve_load.py); once a service has
    started they are frozen, so it walks only what requests allocated (TUNELOOP_GC_FREEZE)."""
    import gc

    gc.unfreeze()
    started = []

    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started.append(gc.get_freeze_count())
        yield

    settings = ServiceSettings(service_name="demo", gc_freeze=freeze)
    app = build_service_app(settings, title="t", lifespan=asynccontextmanager(lifespan))
    app.state.freeze_heap_after_start = settings.gc_freeze  # what tuneloop.serve.main does
    try:
        with TestClient(app) as client:
            assert client.get("/health").status_code == 200
            frozen = gc.get_freeze_count()
        assert started == [0]  # the service's own start-up ran first
        assert (frozen > 10_000) is freeze, frozen
    finally:
        gc.unfreeze()

"""Runtime-LoRA bookkeeping without a GPU: a base that serves adapters is never retired or
deleted under them (its engine holds the adapters)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tuneloop.db import Database
from tuneloop.errors import Conflict
from tuneloop.storage import ArtifactStore
from tuneloop_inference.app import MIGRATIONS
from tuneloop_inference.controller import Controller
from tuneloop_inference.db import Deployment
from tuneloop_inference.metrics import InferenceMetrics
from tuneloop_inference.settings import InferenceSettings

BASE, CAND = "mv-00000000000000f1", "mv-00000000000000f2"


def test_base_with_adapters_is_not_retired_or_deleted(tmp_path: Path, database_url: str | None) -> None:
    settings = InferenceSettings(data_dir=tmp_path, engine="vllm", vllm_enable_lora=True,
                                 replica_id="r1")
    db = Database(database_url or f"sqlite:///{tmp_path / 'inference.db'}")
    db.migrate(MIGRATIONS, version_table="alembic_version_inference")
    ctl = Controller(settings, db, ArtifactStore(str(tmp_path / "artifacts")), InferenceMetrics())
    with db.session() as s:
        for dep_id, name, adapter_of in (("dep-base", BASE, None), ("dep-cand", CAND, BASE)):
            s.add(Deployment(id=dep_id, name=name, model_id=name, adapter_of=adapter_of,
                             engine="vllm", desired="serving", state="ready", created_at=0,
                             updated_at=0))

    async def run() -> None:
        assert await ctl.aliases.maybe_retire(BASE) is None   # kept: CAND lives in its engine
        with pytest.raises(Conflict) as err:
            await ctl.deployments.delete(BASE)
        assert err.value.code == "deployment_in_use" and CAND in str(err.value)
        await ctl.deployments.delete(CAND)                    # the adapter goes first
        assert await ctl.repo.adapters_of(BASE) == []
        assert await ctl.aliases.maybe_retire(BASE) == BASE   # then the base can go

    try:
        asyncio.run(run())
    finally:
        db.dispose()


def test_restarted_base_gets_its_adapters_back(tmp_path: Path, database_url: str | None) -> None:
    """A health restart starts a fresh vLLM process: the controller loads the adapters again."""
    from tuneloop_inference.deployments import LocalDeployment
    from tuneloop_inference.engines import EngineError

    settings = InferenceSettings(data_dir=tmp_path, engine="vllm", vllm_enable_lora=True,
                                 replica_id="r1", max_restarts=1)
    db = Database(database_url or f"sqlite:///{tmp_path / 'inference.db'}")
    db.migrate(MIGRATIONS, version_table="alembic_version_inference")
    ctl = Controller(settings, db, ArtifactStore(str(tmp_path / "artifacts")), InferenceMetrics())

    class FakeEngine:
        state, restarts, loaded = "ready", 0, []
        url, pid = "http://127.0.0.1:1", 1

        def kill_process(self) -> None: ...

        async def load_lora(self, name: str, path: str) -> None:
            if name == "mv-00000000000000f3":
                raise EngineError("bad adapter", "model_load_failed")
            self.loaded.append((name, path))

    engine = FakeEngine()

    async def start_engine(e) -> None:  # noqa: ANN001
        e.state = "ready"

    ctl.deployments._start_engine = start_engine  # type: ignore[method-assign]
    base = LocalDeployment(id="dep-base", name=BASE, engine=engine, state="restarting")
    good = LocalDeployment(id="dep-cand", name=CAND, base=engine, adapter_dir="/a/cand",
                           state="ready")
    bad = LocalDeployment(id="dep-bad", name="mv-00000000000000f3", base=engine,
                          adapter_dir="/a/bad", state="ready")
    ctl.deployments.local = {x.id: x for x in (base, good, bad)}
    ctl.routing.routes = {BASE: engine, CAND: engine, bad.name: engine}
    try:
        asyncio.run(ctl.deployments.restart(base))
    finally:
        db.dispose()
    assert base.state == "ready" and engine.loaded == [(CAND, "/a/cand")]
    assert good.state == "ready" and CAND in ctl.routing.routes
    assert bad.state == "failed" and bad.name not in ctl.routing.routes

"""Dataset service app factory: ``create_app(settings) -> FastAPI``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import Depends, FastAPI

from tuneloop.app import build_service_app
from tuneloop.offload import offload
from tuneloop.service_auth import require_service_token
from tuneloop.settings import open_service_state

from .api import datasets, synthetic
from .metrics import DatasetMetrics
from .service import DatasetService
from .settings import DatasetSettings
from .synthetic import SynthService

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: DatasetSettings | None = None) -> FastAPI:
    settings = settings or DatasetSettings()
    metrics = DatasetMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db, store = await offload(open_service_state, settings, MIGRATIONS)
        svc = await offload(DatasetService, settings, db, store, metrics)
        await offload(svc.cleanup_tmp)
        await svc.refresh_gauge()
        await offload(settings.resolved_import_root().mkdir, parents=True, exist_ok=True)
        synth = SynthService(settings, db, metrics, svc)
        await synth.recover()
        app.state.db, app.state.store = db, store
        app.state.datasets, app.state.synth = svc, synth
        app.state.ingest_limiter = anyio.CapacityLimiter(settings.max_concurrent_ingests)
        try:
            yield
        finally:
            await synth.shutdown()
            await offload(db.dispose)

    async def ready(app: FastAPI) -> dict:
        store = app.state.store
        return {"database": await offload(app.state.db.ping),
                "artifact_store": await offload(store.ping)}

    app = build_service_app(settings, title="tuneloop dataset service", lifespan=lifespan,
                            ready_check=ready, metrics=metrics)
    internal = [Depends(require_service_token)]  # the gateway's (and trainer's) calls only
    app.include_router(datasets.router, dependencies=internal)
    app.include_router(synthetic.router, dependencies=internal)
    return app

"""Trainer service app factory: ``create_app(settings) -> FastAPI``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI

from tuneloop.app import build_service_app
from tuneloop.service_auth import require_service_token
from tuneloop.settings import open_service_state
from tuneloop.clients.dataset import DatasetClient
from tuneloop.offload import offload

from .api import jobs, models, openai_compat
from .executors import make_executor
from .metrics import TrainerMetrics
from .service import TrainerService
from .settings import TrainerSettings
from .supervisor import Supervisor

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: TrainerSettings | None = None) -> FastAPI:
    settings = settings or TrainerSettings()
    metrics = TrainerMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db, store = await offload(open_service_state, settings, MIGRATIONS)
        datasets = DatasetClient(settings.dataset_url, timeout=settings.http_timeout_s,
                                 api_key=settings.outgoing_service_token())
        svc = TrainerService(settings, db, store, datasets)
        # the Kubernetes executor reads its CA file when built: not on the event loop
        supervisor = Supervisor(svc, await offload(make_executor, settings, store), metrics)
        app.state.db, app.state.store, app.state.trainer = db, store, svc
        app.state.supervisor = supervisor
        await supervisor.start()
        try:
            yield
        finally:
            await supervisor.stop()
            await datasets.aclose()
            await offload(db.dispose)

    async def ready(app: FastAPI) -> dict:
        return {"database": await offload(app.state.db.ping),
                "dataset_service": await app.state.trainer.datasets.health()}

    app = build_service_app(settings, title="tuneloop trainer service", lifespan=lifespan,
                            ready_check=ready, metrics=metrics)
    internal = [Depends(require_service_token)]  # the gateway's calls only
    app.include_router(jobs.router, dependencies=internal)
    app.include_router(models.router, dependencies=internal)
    app.include_router(openai_compat.router, dependencies=internal)
    return app

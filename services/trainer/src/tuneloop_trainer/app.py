"""Trainer service app factory: ``create_app(settings) -> FastAPI``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from tuneloop.app import build_service_app
from tuneloop.clients.dataset import DatasetClient
from tuneloop.db import Database
from tuneloop.storage import ArtifactStore

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
        db = Database(settings.resolved_database_url())
        db.migrate(MIGRATIONS, version_table="alembic_version_trainer")
        store = ArtifactStore(settings.resolved_artifact_url())
        datasets = DatasetClient(settings.dataset_url, timeout=settings.http_timeout_s)
        svc = TrainerService(settings, db, store, datasets)
        supervisor = Supervisor(svc, make_executor(settings, store), metrics)
        app.state.db, app.state.store, app.state.trainer = db, store, svc
        app.state.supervisor = supervisor
        await supervisor.start()
        try:
            yield
        finally:
            await supervisor.stop()
            await datasets.aclose()
            db.dispose()

    async def ready(app: FastAPI) -> dict:
        return {"database": app.state.db.ping(), "dataset_service": await app.state.trainer.datasets.health()}

    app = build_service_app(settings, title="tuneloop trainer service", lifespan=lifespan,
                            ready_check=ready, metrics=metrics)
    app.include_router(jobs.router)
    app.include_router(models.router)
    app.include_router(openai_compat.router)
    return app

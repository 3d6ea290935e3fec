"""Dataset service app factory: ``create_app(settings) -> FastAPI``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from tuneloop.app import build_service_app
from tuneloop.db import Database
from tuneloop.storage import ArtifactStore

from .settings import DatasetSettings

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: DatasetSettings | None = None) -> FastAPI:
    settings = settings or DatasetSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings.resolved_database_url())
        db.migrate(MIGRATIONS, version_table="alembic_version_dataset")
        app.state.db = db
        app.state.store = ArtifactStore(settings.resolved_artifact_url())
        yield
        db.dispose()

    async def ready(app: FastAPI) -> dict:
        return {"database": app.state.db.ping()}

    app = build_service_app(settings, title="tuneloop dataset service", lifespan=lifespan,
                            ready_check=ready)
    # routers: app.include_router(datasets.router)
    return app

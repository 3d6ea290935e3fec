"""Inference service app factory: ``create_app(settings) -> FastAPI``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from tuneloop.app import build_service_app
from tuneloop.settings import open_service_state
from tuneloop.offload import offloaded

from .api import admin, openai
from .controller import Controller
from .metrics import InferenceMetrics
from .settings import InferenceSettings

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: InferenceSettings | None = None) -> FastAPI:
    settings = settings or InferenceSettings()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per proxied request is noise
    metrics = InferenceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db, store = open_service_state(settings, MIGRATIONS)
        controller = Controller(settings, db, store, metrics)
        app.state.db, app.state.store, app.state.controller = db, store, controller
        await controller.start()
        try:
            yield
        finally:
            await controller.shutdown()
            db.dispose()

    async def ready(app: FastAPI) -> dict:
        return {"database": await offloaded(app.state.db.ping)(),
                "default_model": app.state.controller.default_ready()}

    app = build_service_app(settings, title="tuneloop inference service", lifespan=lifespan,
                            ready_check=ready, metrics=metrics)
    app.include_router(openai.router)
    app.include_router(admin.router)
    return app

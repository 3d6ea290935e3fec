"""Gateway app factory: ``create_app(settings) -> FastAPI``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import math

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from tuneloop.app import build_service_app
from tuneloop.clients.dataset import DatasetClient
from tuneloop.clients.inference import InferenceClient
from tuneloop.clients.trainer import TrainerClient
from tuneloop.settings import open_service_state
from tuneloop.errors import RateLimited
from tuneloop.metrics import ServiceMetrics
from tuneloop.offload import offload
from tuneloop.workers import run_dir, worker_index

from .api import canaries, captures, evals, keys, passthrough, promotions, proxy, replay
from .auth import KeyStore, RateLimiter, bootstrap_admin_key
from .canary import CanaryService
from .evals.service import EvalService
from .flywheel.capture import CaptureRecorder
from .flywheel.curate import CurateService
from .hostshare import HostShare
from .leases import LeaseKeeper, WorkLease
from .metrics import GatewayMetrics
from .promotion import PromotionService
from .proxy import Upstream
from .settings import GatewaySettings

MIGRATIONS = Path(__file__).parent / "migrations"
CONSOLE = Path(__file__).parent / "console"  # the web console: static files, public API only
VERSION_TABLE = "alembic_version_gateway"


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    # one access-log line per request is ours; httpx's per-request INFO line is noise (and cost)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    metrics = ServiceMetrics(settings.service_name)
    gw_metrics = GatewayMetrics(metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s = settings
        db, app.state.store = await offload(open_service_state, s, MIGRATIONS)
        app.state.db = db
        # several workers on this host share rate limits and key invalidations (hostshare.py)
        share_dir = run_dir()
        share = HostShare(share_dir / "gateway-share") if share_dir is not None else None
        app.state.keys = KeyStore(db, ttl=s.key_cache_ttl_s, size=s.key_cache_size, shared=share)
        app.state.limiter = share or RateLimiter()
        app.state.bootstrap_key = await bootstrap_admin_key(app.state.keys, s)
        c, t = s.connect_timeout_s, s.http_timeout_s
        token = s.outgoing_service_token()  # internal calls are authenticated
        app.state.upstreams = {
            "inference": Upstream.open("inference", s.inference_url, connect=c,
                                       read=s.inference_timeout_s, api_key=s.inference_api_key,
                                       max_connections=s.inference_max_connections,
                                       keepalive_s=s.upstream_keepalive_s),
            "trainer": Upstream.open("trainer", s.trainer_url, connect=c, read=t,
                                     api_key=token, max_connections=512,
                                     keepalive_s=s.upstream_keepalive_s),
            "dataset": Upstream.open("dataset", s.dataset_url, connect=c, read=t,
                                     api_key=token, max_connections=512,
                                     keepalive_s=s.upstream_keepalive_s),
        }
        dataset = DatasetClient(s.dataset_url, timeout=t, api_key=token)
        trainer = TrainerClient(s.trainer_url, timeout=t, api_key=token)
        inference = InferenceClient(s.inference_url, timeout=t, api_key=s.inference_admin_key,
                                    deploy_timeout=s.deploy_timeout_s)
        app.state.inference = inference
        # reads the general suite's file: built off the event loop
        # replicas share the database: work is owned by a process and kept alive by it
        # (each worker process is a replica of its own: its slot, kept when it is restarted)
        worker = worker_index()
        lease = WorkLease(s.replica_id if worker is None else f"{s.replica_id}/{worker}",
                          s.work_lease_s)
        app.state.evals = await offload(EvalService, s, db, app.state.store, dataset, gw_metrics,
                                        inference, lease)
        await app.state.evals.recover()
        app.state.promotions = PromotionService(s, db, trainer, inference, app.state.evals, gw_metrics)
        await app.state.promotions.start()
        app.state.leases = leases = LeaseKeeper(lease)
        leases.refresh += [app.state.evals.repo.heartbeat, app.state.promotions.repo.heartbeat]
        leases.sweep += [lambda _: app.state.evals.recover(at_start=False),
                         lambda _: app.state.promotions.recover(at_start=False)]
        leases.start()
        app.state.captures = CaptureRecorder(s, db, gw_metrics)
        app.state.captures.start()
        app.state.curate = CurateService(s, db, app.state.captures, dataset, trainer)
        app.state.canaries = CanaryService(db, gw_metrics, inference, app.state.promotions,
                                           app.state.captures, app.state.upstreams["inference"])
        await app.state.canaries.start()
        try:
            yield
        finally:
            await app.state.canaries.aclose()
            await app.state.captures.aclose()
            await app.state.promotions.aclose()
            await leases.aclose()
            await app.state.evals.aclose()
            for ups in app.state.upstreams.values():
                await ups.aclose()
            for peer in (dataset, trainer, inference):
                await peer.aclose()
            await offload(db.dispose)
            if share is not None:
                share.close()

    async def ready(app: FastAPI) -> dict:
        """Ready when the database answers and inference is ready (serves its default model):
        what a client of the gateway needs first. Dataset/trainer outages degrade admin routes
        only (503 in the envelope), so they do not take the gateway out of rotation."""
        return {"database": await offload(app.state.db.ping),
                "inference": await app.state.inference.ready()}

    app = build_service_app(settings, title="tuneloop gateway", lifespan=lifespan,
                            ready_check=ready, metrics=metrics)
    app.state.gw_metrics = gw_metrics
    app.add_exception_handler(RateLimited, _rate_limited)  # type: ignore[arg-type]
    # the generation routes first: a request walks the routes in order (FastAPI's matching
    # cost ~40% of a proxied generation's CPU with these last, bench/serve_load.py --profile);
    # no route of the routers below overlaps them
    app.include_router(proxy.router)
    app.include_router(keys.router)
    app.include_router(evals.router)
    app.include_router(promotions.router)
    app.include_router(promotions.callbacks)
    app.include_router(replay.router)
    app.include_router(captures.router)
    app.include_router(captures.admin)
    app.include_router(canaries.router)
    app.include_router(passthrough.router)
    app.add_api_route("/", lambda: RedirectResponse("/console/"), include_in_schema=False)
    app.mount("/console", StaticFiles(directory=CONSOLE, html=True), name="console")
    return app


async def _rate_limited(request: Request, exc: RateLimited) -> JSONResponse:
    """429 in the envelope, plus ``Retry-After`` (whole seconds) for clients that honour it."""
    body = exc.body()
    rid = getattr(request.state, "request_id", None)
    if rid:
        body["error"]["request_id"] = rid
    wait = (exc.details or {}).get("retry_after_s", 1)
    return JSONResponse(body, status_code=429, headers={"Retry-After": str(max(1, math.ceil(wait)))})

"""build_service_app(): what every service's ``create_app(settings)`` starts from.

Adds request ids (``X-Request-ID`` in and out), one structured access log line per request,
HTTP metrics, the error envelope, and ``/health`` (live), ``/ready`` (dependencies up; 503
until then) and ``/metrics`` (excluded from request metrics).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_body, install_error_handlers
from .logs import configure_logging, request_id_var
from .metrics import CONTENT_TYPE_LATEST, ServiceMetrics
from .settings import ServiceSettings

ReadyCheck = Callable[[FastAPI], Awaitable[dict[str, Any]]]
_QUIET = {"/metrics", "/health", "/ready"}
access_log = logging.getLogger("tuneloop.access")


class RequestContextMiddleware:
    """Pure ASGI middleware (streaming-safe): request id, access log, HTTP metrics."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode())]
                self._observe(scope, status["code"], time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = scope.get("path", "")
            if path not in _QUIET:
                access_log.info(
                    "request",
                    extra={
                        "method": scope.get("method"),
                        "path": path,
                        "status": status["code"],
                        "duration_ms": round((time.perf_counter() - start) * 1000, 2),
                    },
                )
            request_id_var.reset(token)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        path = scope.get("path", "")
        if path == "/metrics":
            return
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        method = scope.get("method", "GET")
        self.metrics.http_requests.labels(template, method, str(status)).inc()
        self.metrics.http_latency.labels(template, method).observe(seconds)


def build_service_app(
    settings: ServiceSettings,
    *,
    title: str,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
    ready_check: ReadyCheck | None = None,
    metrics: ServiceMetrics | None = None,
    version: str = "0.1.0",
) -> FastAPI:
    """Create the FastAPI app with the common middleware, handlers and health endpoints."""
    configure_logging(settings.service_name, settings.log_level, settings.log_json)
    metrics = metrics or ServiceMetrics(settings.service_name)
    app = FastAPI(title=title, version=version, lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    install_error_handlers(app)

    @app.get("/health", tags=["health"], summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": settings.service_name}

    @app.get("/ready", tags=["health"], summary="Readiness (503 until dependencies are up)")
    async def ready(request: Request) -> Response:
        checks: dict[str, Any] = {}
        ok = True
        if ready_check is not None:
            try:
                checks = await ready_check(request.app)
                ok = all(v is True or (isinstance(v, dict) and v.get("ok")) for v in checks.values())
            except Exception as exc:  # readiness must answer, never raise
                checks, ok = {"error": str(exc)}, False
        if not ok:
            body = error_body("service not ready", "service_unavailable", "not_ready", None, checks)
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ready", "service": settings.service_name, "checks": checks})

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app

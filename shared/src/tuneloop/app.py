"""build_service_app(): what every service's ``create_app(settings)`` starts from.

Adds request ids (``X-Request-ID`` in and out), one structured access log line per request,
HTTP metrics, the error envelope, and ``/health`` (live), ``/ready`` (dependencies up; 503
until then) and ``/metrics`` (excluded from request metrics).

Hostile input is refused here, once for every route of every service, before any route runs:
a control character in the path or the query (``/v1/files/file-%00``) and an integer query
value beyond 64 bits (``?offset=263516800467726430633984``, which no database column holds)
are a 400 in the envelope, and so is a body nested so deeply that parsing it overflows the
stack (a route that parses its JSON by hand would otherwise 500). An unexpected exception is
answered with the 500 envelope *here*, so it never reaches Starlette's outermost handler,
which re-raises and makes the server drop the connection (the client's next request on it
would fail with "connection reset").
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from urllib.parse import parse_qsl

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .error_handlers import install_error_handlers
from .errors import error_body
from .logs import configure_logging, request_id_var
from .metrics import CONTENT_TYPE_LATEST, ServiceMetrics
from .settings import ServiceSettings

ReadyCheck = Callable[[FastAPI], Awaitable[dict[str, Any]]]
_QUIET = {"/metrics", "/health", "/ready"}
access_log = logging.getLogger("tuneloop.access")
log = logging.getLogger("tuneloop.app")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_INT64 = 2**63


def check_request_target(scope: Scope) -> tuple[str, str | None, str] | None:
    """``(message, param, code)`` when the path or query is one no route can serve, else None.

    The path comes decoded (``%00`` is already a NUL here); the query is decoded the way
    FastAPI decodes it. Integers beyond 64 bits are refused for every parameter: no id or
    count of ours is numeric at that size, and every database column stops at 64 bits."""
    path = scope.get("path", "")
    if _CONTROL.search(path):
        return "the request path contains a control character", None, "invalid_path"
    raw = scope.get("query_string", b"")
    if not raw:
        return None
    try:
        pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return "the query string is not valid UTF-8", None, "invalid_query"
    for name, value in pairs:
        if _CONTROL.search(name) or _CONTROL.search(value):
            return (f"query parameter {name[:60]!r} contains a control character",
                    name[:60], "invalid_query")
        if _INTEGER.fullmatch(value.strip()) and not -_INT64 <= int(value.strip()[:40]) < _INT64:
            return (f"{name[:60]}: integer out of range (at most 2**63-1)", name[:60],
                    "invalid_value")
    return None


async def _send_error(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


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
        status: dict[str, int] = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["started"] = 1
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode())]
                self._observe(scope, status["code"], time.perf_counter() - start)
            await send(message)

        try:
            refused = check_request_target(scope)
            if refused is not None:
                message, param, code = refused
                body = error_body(message, "invalid_request_error", code, param)
                body["error"]["request_id"] = rid
                await _send_error(send_wrapper, 400, body)
                return
            await self.app(scope, receive, send_wrapper)
        except RecursionError:  # a JSON body nested thousands of levels deep, parsed by hand
            if status.get("started"):
                return
            body = error_body("request body nested too deeply", "invalid_request_error",
                              "invalid_json")
            body["error"]["request_id"] = rid
            await _send_error(send_wrapper, 400, body)
        except Exception:  # answered here: re-raised, the server would drop the connection
            log.exception("unhandled error", extra={"request_id": rid, "path": scope.get("path")})
            if status.get("started"):
                return
            body = error_body(f"internal error (request id {rid})", "internal_error",
                              "internal_error")
            body["error"]["request_id"] = rid
            await _send_error(send_wrapper, 500, body)
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


def _no_native_telemetry() -> dict[str, Any]:
    """FastAPI >= 0.16x checks for an OpenTelemetry provider on every request (a few
    environment reads and context look-ups, ~5% of a proxied generation's CPU in
    bench/serve_load.py --profile). The services export their own Prometheus metrics and log
    their own errors, so that layer is off where the installed FastAPI has it."""
    import inspect

    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def _frozen_after_start(
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The service's lifespan, then, in a served process (``tuneloop.serve`` sets
    ``app.state.freeze_heap_after_start`` from ``gc_freeze``), one collection and
    ``gc.freeze()``: what the imports and the start-up made stays out of every later full
    collection. Apps built inside a test process are not frozen (the test's heap would be)."""

    @contextlib.asynccontextmanager
    async def frozen(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if lifespan is not None:
                await stack.enter_async_context(lifespan(app))
            if getattr(app.state, "freeze_heap_after_start", False):
                gc.collect()
                gc.freeze()
            yield

    return frozen


def build_service_app(
    settings: ServiceSettings,
    *,
    title: str,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
    ready_check: ReadyCheck | None = None,
    metrics: ServiceMetrics | None = None,
    version: str = "0.1.0",
) -> FastAPI:
    """Create the FastAPI app with the common middleware, handlers and health endpoints.
    Refuses to build a service that would run its internal routes open by accident."""
    from .service_auth import check_configured

    configure_logging(settings.service_name, settings.log_level, settings.log_json)
    check_configured(settings)
    metrics = metrics or ServiceMetrics(settings.service_name)
    app = FastAPI(title=title, version=version, lifespan=_frozen_after_start(lifespan),
                  **_no_native_telemetry())
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


def from_state(name: str) -> Any:
    """``Depends()`` on ``app.state.<name>``: what a router declares as
    ``Annotated[TheService, from_state("name")]`` instead of reaching into the app state.

    The provider is ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its
    thread pool, a thread hop per request for an attribute read."""

    async def provide(request: Request) -> Any:
        return getattr(request.app.state, name)

    provide.__name__ = f"state_{name}"
    return Depends(provide)

"""FastAPI's side of :mod:`tuneloop.errors`: every error a service raises, answered in the one
envelope (the domain table, request validation, Starlette HTTP errors, anything unexpected as a
500 ``internal_error`` with the request id; details only in the log)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import RateLimited, TuneloopError, error_body

log = logging.getLogger("tuneloop.errors")


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _with_request_id(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    rid = _request_id(request)
    if rid:
        body["error"]["request_id"] = rid
    return body


async def _handle_domain(request: Request, exc: TuneloopError) -> JSONResponse:
    headers = {"Retry-After": exc.retry_after()} if isinstance(exc, RateLimited) else None
    return JSONResponse(_with_request_id(request, exc.body()), status_code=exc.status,
                        headers=headers)


async def _handle_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    details = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg"), "type": e.get("type")}
        for e in errors
    ]
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    param = ".".join(p for p in first["loc"] if p not in ("body", "query", "path")) or None
    msg = f"{param}: {first['msg']}" if param else str(first["msg"])
    body = error_body(msg, "invalid_request_error", "invalid_request", param, details)
    return JSONResponse(_with_request_id(request, body), status_code=400)


_HTTP_CODES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "insufficient_scope"),
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "payload_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


async def _handle_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    type_, code = _HTTP_CODES.get(exc.status_code, ("api_error", f"http_{exc.status_code}"))
    body = error_body(str(exc.detail), type_, code)
    return JSONResponse(
        _with_request_id(request, body), status_code=exc.status_code, headers=exc.headers
    )


async def _handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    rid = _request_id(request)
    log.exception("unhandled error", extra={"request_id": rid, "path": request.url.path})
    body = error_body(
        f"internal error (request id {rid})", "internal_error", "internal_error"
    )
    return JSONResponse(_with_request_id(request, body), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to the one envelope (domain table, validation, HTTP, unexpected)."""
    app.add_exception_handler(TuneloopError, _handle_domain)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _handle_validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _handle_http)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _handle_unexpected)

"""The one error shape everywhere: ``{"error": {"message", "type", "param", "code"}}``.

Domain code raises a :class:`TuneloopError` subclass; :func:`install_error_handlers` maps
them (and FastAPI validation errors, and anything unexpected) to the OpenAI envelope.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("tuneloop.errors")


class TuneloopError(Exception):
    """Base domain error. ``status`` and ``type`` come from the class; ``code`` is stable."""

    status: int = 400
    type: str = "invalid_request_error"
    code: str = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        details: Any = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status
        self.param = param
        self.details = details

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param, self.details)


class InvalidRequest(TuneloopError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class Unauthorized(TuneloopError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class Forbidden(TuneloopError):
    status, type, code = 403, "permission_error", "insufficient_scope"


class NotFound(TuneloopError):
    status, type, code = 404, "not_found_error", "not_found"


class Conflict(TuneloopError):
    status, type, code = 409, "conflict_error", "conflict"


class PayloadTooLarge(TuneloopError):
    status, type, code = 413, "invalid_request_error", "payload_too_large"


class UnsupportedMediaType(TuneloopError):
    status, type, code = 415, "invalid_request_error", "unsupported_media_type"


class Unprocessable(TuneloopError):
    status, type, code = 422, "invalid_request_error", "validation_failed"


class RateLimited(TuneloopError):
    """429; ``details["retry_after_s"]`` becomes the ``Retry-After`` header (whole seconds)."""

    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"

    def retry_after(self) -> str:
        wait = (self.details or {}).get("retry_after_s", 1) if isinstance(self.details, dict) else 1
        return str(max(1, math.ceil(float(wait))))


class UpstreamError(TuneloopError):
    status, type, code = 502, "upstream_error", "bad_gateway"


class ServiceUnavailable(TuneloopError):
    status, type, code = 503, "service_unavailable", "service_unavailable"


class UpstreamTimeout(TuneloopError):
    status, type, code = 504, "upstream_error", "gateway_timeout"


def error_body(
    message: str,
    type_: str = "invalid_request_error",
    code: str = "invalid_request",
    param: str | None = None,
    details: Any = None,
) -> dict[str, Any]:
    err: dict[str, Any] = {"message": message, "type": type_, "param": param, "code": code}
    if details is not None:
        err["details"] = details
    return {"error": err}


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

"""The one error shape everywhere: ``{"error": {"message", "type", "param", "code"}}``.

Domain code raises a :class:`TuneloopError` subclass: its class says the HTTP status and
``type``, its ``code`` is a stable machine string. This module is pure (no web framework), so
job processes and libraries raise these too; :mod:`tuneloop.error_handlers` maps them (and
FastAPI validation errors, and anything unexpected) to the envelope in a service.
"""

from __future__ import annotations

import math
from typing import Any


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

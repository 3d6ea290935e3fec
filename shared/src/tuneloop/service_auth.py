"""Service token: internal calls between the four services are authenticated.

The dataset and trainer APIs and the inference service's OpenAI routes are meant to be reached
by the other services only; the bind address and NetworkPolicies keep others out, and this is
the second wall (defence in depth). Every service is given the same token
(``TUNELOOP_SERVICE_TOKEN``), sends it as ``Authorization: Bearer <token>`` on its calls to
the others, and requires it on its internal routes.

Rotation: the setting holds a comma-separated list; a service *sends* the first token and
*accepts* any. Roll out ``new,old`` everywhere, then ``new`` alone.

Off only by an explicit ``TUNELOOP_SERVICE_AUTH=false`` (a closed development box, the test
suite); with auth on and no token a service refuses to start, instead of running open.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from .errors import Unauthorized
from .settings import ServiceSettings


class ServiceAuthMisconfigured(RuntimeError):
    """Auth is on and no token is set: the service must not start open."""


def check_configured(settings: ServiceSettings) -> None:
    if settings.service_auth and not settings.service_tokens():
        raise ServiceAuthMisconfigured(
            f"{settings.service_name}: TUNELOOP_SERVICE_TOKEN is not set. Give every service "
            "the same token (internal calls are authenticated with it), or set "
            "TUNELOOP_SERVICE_AUTH=false on a closed development box.")


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization") or ""
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def token_matches(token: str, accepted: list[str]) -> bool:
    """Constant-time comparison against every accepted token."""
    ok = False
    for candidate in accepted:
        ok |= hmac.compare_digest(token.encode(), candidate.encode())
    return bool(token) and ok


async def require_service_token(request: Request) -> None:
    """FastAPI dependency of internal routers: 401 without a valid service token."""
    settings: ServiceSettings = request.app.state.settings
    if not settings.service_auth:
        return
    if not token_matches(bearer_token(request), settings.service_tokens()):
        raise Unauthorized("this is an internal API: a valid service token is required "
                           "(Authorization: Bearer <TUNELOOP_SERVICE_TOKEN>)",
                           code="invalid_service_token")

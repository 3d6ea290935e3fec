"""What the routers depend on, injected as ``Annotated[..., Depends()]``.

The app state is read here and nowhere else in the routers. The providers are ``async def`` on
purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop per request
on the OpenAI hot path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from tuneloop.errors import Unauthorized
from tuneloop.service_auth import bearer_token, token_matches

from ..aliases import Aliases
from ..controller import Controller
from ..deployments import Deployments
from ..metrics import InferenceMetrics
from ..routing import RoutingTable
from ..settings import InferenceSettings


def _state(*attrs: str) -> Callable[[Request], Awaitable[Any]]:
    """A provider of ``request.app.state.<attrs...>`` (set by the app's lifespan)."""

    async def provide(request: Request) -> Any:
        obj = request.app.state
        for attr in attrs:
            obj = getattr(obj, attr)
        return obj

    return provide


SettingsDep = Annotated[InferenceSettings, Depends(_state("settings"))]
MetricsDep = Annotated[InferenceMetrics, Depends(_state("metrics"))]
ControllerDep = Annotated[Controller, Depends(_state("controller"))]
RoutingDep = Annotated[RoutingTable, Depends(_state("controller", "routing"))]
DeploymentsDep = Annotated[Deployments, Depends(_state("controller", "deployments"))]
AliasesDep = Annotated[Aliases, Depends(_state("controller", "aliases"))]


def authorize_openai(request: Request, settings: InferenceSettings) -> None:
    """The OpenAI routes take the service token (the gateway's calls) or, if set,
    ``INFERENCE_API_KEY``; open only when neither is required (``TUNELOOP_SERVICE_AUTH=false``
    and no api_key)."""
    accepted = (([settings.api_key] if settings.api_key else [])
                + (settings.service_tokens() if settings.service_auth else []))
    if not accepted:
        return
    if not token_matches(bearer_token(request), accepted):
        raise Unauthorized("invalid or missing API key (the service token or INFERENCE_API_KEY)")


@dataclass(frozen=True, slots=True)
class Generation:
    """What a generation route needs, after the key check. The routes call
    :func:`generation` themselves rather than declaring it a dependency: each declared
    ``Depends`` costs the hot path FastAPI's dependency solving per request (four of them were
    ~35% of a proxied generation's CPU, bench/serve_load.py --profile)."""

    routing: RoutingTable
    metrics: InferenceMetrics


def generation(request: Request) -> Generation:
    """The key check, then the routing table and metrics (the one place the generation routes
    read the app state)."""
    state = request.app.state
    authorize_openai(request, state.settings)
    return Generation(state.controller.routing, state.metrics)

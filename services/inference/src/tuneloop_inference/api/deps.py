"""What the routers depend on, injected as ``Annotated[..., Depends()]``.

The app state is read here and nowhere else in the routers. The providers are ``async def`` on
purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop per request
on the OpenAI hot path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request

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

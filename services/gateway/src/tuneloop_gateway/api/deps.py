"""What the gateway's routers depend on, injected as ``Annotated[..., Depends()]``: the app
state is read here (:func:`tuneloop.app.from_state`) and nowhere else in the routers — except
on the OpenAI generation routes (``api/proxy.py``), which read it directly: a dependency is
solved per request, and on that path dependency solving was a third of the gateway's CPU
(``bench/serve_load.py --profile``)."""

from __future__ import annotations

from typing import Annotated

from tuneloop.clients.inference import InferenceClient

from tuneloop.app import from_state

from ..auth import KeyStore
from ..canary import CanaryService
from ..evals.service import EvalService
from ..flywheel.curate import CurateService
from ..metrics import GatewayMetrics
from ..promotion import PromotionService
from ..proxy import Upstream
from ..settings import GatewaySettings

SettingsDep = Annotated[GatewaySettings, from_state("settings")]
KeysDep = Annotated[KeyStore, from_state("keys")]
EvalsDep = Annotated[EvalService, from_state("evals")]
PromotionsDep = Annotated[PromotionService, from_state("promotions")]
CanariesDep = Annotated[CanaryService, from_state("canaries")]
CurateDep = Annotated[CurateService, from_state("curate")]
MetricsDep = Annotated[GatewayMetrics, from_state("gw_metrics")]
InferenceDep = Annotated[InferenceClient, from_state("inference")]
UpstreamsDep = Annotated[dict[str, Upstream], from_state("upstreams")]

"""What the gateway's admin routers depend on, injected as ``Annotated[..., Depends()]``: the
app state is read here (:func:`tuneloop.app.from_state`) and nowhere else in those routers."""

from __future__ import annotations

from typing import Annotated

from tuneloop.app import from_state

from ..auth import KeyStore
from ..evals.service import EvalService
from ..promotion import PromotionService
from ..settings import GatewaySettings

SettingsDep = Annotated[GatewaySettings, from_state("settings")]
KeysDep = Annotated[KeyStore, from_state("keys")]
EvalsDep = Annotated[EvalService, from_state("evals")]
PromotionsDep = Annotated[PromotionService, from_state("promotions")]

"""What the trainer routers depend on, injected as ``Annotated[..., Depends()]``: the app
state is read here (:func:`tuneloop.app.from_state`) and nowhere else in the routers."""

from __future__ import annotations

from typing import Annotated

from tuneloop.app import from_state

from ..service import TrainerService
from ..settings import TrainerSettings
from ..supervisor import Supervisor

SettingsDep = Annotated[TrainerSettings, from_state("settings")]
TrainerDep = Annotated[TrainerService, from_state("trainer")]
SupervisorDep = Annotated[Supervisor, from_state("supervisor")]

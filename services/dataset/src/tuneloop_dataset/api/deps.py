"""What the dataset routers depend on, injected as ``Annotated[..., Depends()]``: the app
state is read here (:func:`tuneloop.app.from_state`) and nowhere else in the routers."""

from __future__ import annotations

from typing import Annotated

import anyio

from tuneloop.app import from_state

from ..metrics import DatasetMetrics
from ..service import DatasetService
from ..settings import DatasetSettings
from ..synthetic import SynthService

SettingsDep = Annotated[DatasetSettings, from_state("settings")]
MetricsDep = Annotated[DatasetMetrics, from_state("metrics")]
DatasetsDep = Annotated[DatasetService, from_state("datasets")]
SynthDep = Annotated[SynthService, from_state("synth")]
#: at most DATASET_MAX_CONCURRENT_INGESTS ingests (and token recounts) at once
IngestLimiterDep = Annotated[anyio.CapacityLimiter, from_state("ingest_limiter")]

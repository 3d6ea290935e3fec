"""Dataset service settings (env prefix ``DATASET_``, falling back to ``TUNELOOP_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from tuneloop.settings import ServiceSettings


class DatasetSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DATASET_", extra="ignore")

    service_name: str = "dataset"
    port: int = 8001

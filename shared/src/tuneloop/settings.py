"""Settings base: one pydantic-settings class per service, env prefix per service.

Settings are passed to ``create_app(settings)``; nothing reads the environment at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


if TYPE_CHECKING:
    from .db import Database
    from .storage import ArtifactStore


class ServiceSettings(BaseSettings):
    """Common settings for every tuneloop service.

    Subclasses set ``env_prefix`` (``DATASET_``, ``TRAINER_``...). Every field is read from
    ``<PREFIX><FIELD>`` first, then from ``TUNELOOP_<FIELD>`` (one place for what all services
    share: ``TUNELOOP_DATA_DIR``, ``TUNELOOP_ARTIFACT_URL``...), then the default.
    """

    model_config = SettingsConfigDict(env_prefix="TUNELOOP_", extra="ignore")

    service_name: str = Field("service", description="Name used in logs and metric prefixes.")
    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8000, description="TCP port to bind.")
    data_dir: Path = Field(Path("var"), description="Local state folder (DB, logs, artifacts).")
    artifact_url: str | None = Field(
        None,
        description="fsspec URL of the artifact store (default: <data_dir>/artifacts). "
        "Shared by all services: s3://bucket/prefix, file:///mnt/shared, ...",
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL (default: sqlite:///<data_dir>/<service>.db)."
    )
    s3_endpoint_url: str | None = Field(
        None,
        description="S3-compatible endpoint for an s3:// artifact store (MinIO, Ceph, R2, "
        "...); unset: AWS S3.",
    )
    s3_access_key_id: str | None = Field(
        None, description="S3 access key id; unset: the AWS default chain (AWS_ACCESS_KEY_ID, "
        "~/.aws, instance/IRSA role)."
    )
    s3_secret_access_key: SecretStr | None = Field(
        None, description="S3 secret access key (with S3_ACCESS_KEY_ID)."
    )
    s3_region: str | None = Field(None, description="S3 region (e.g. us-east-1); unset: "
                                  "AWS_DEFAULT_REGION or the endpoint's default.")
    log_level: str = Field("INFO", description="Python log level.")
    log_json: bool = Field(True, description="Emit one JSON object per log line.")
    http_timeout_s: float = Field(30.0, description="Timeout for calls to peer services.")
    shutdown_timeout_s: float = Field(
        30.0, gt=0, description="On SIGTERM, how long in-flight requests (streams included) may "
        "finish before the server closes them. Keep it below the pod's "
        "terminationGracePeriodSeconds minus its preStop (k8s: 125 s of 180 s for inference and "
        "gateway).")
    gc_freeze: bool = Field(
        True, description="Once a served process has started, move every object alive to "
        "Python's permanent "
        "generation (gc.freeze), so a full garbage collection walks only what requests "
        "allocated since, not the ~130,000 objects of the imports and start-up (a 65-75 ms "
        "pause each, several per burst of a few hundred requests; bench/serve_load.py).")
    keepalive_timeout_s: float = Field(
        65.0, gt=0, description="How long this server keeps an idle client connection open. "
        "Longer than any client pool keeps one idle (ours: 60 s; the OpenAI SDK: 5 s), so a "
        "client never reuses a connection the server is closing.")
    service_token: SecretStr | None = Field(
        None, description="Token of the calls between the services (the same on all four): "
        "sent as `Authorization: Bearer` and required on the internal routes (dataset and "
        "trainer APIs, inference's OpenAI routes). Comma-separated to rotate: the first is "
        "sent, any is accepted.")
    service_auth: bool = Field(
        True, description="Require the service token on the internal routes. `false` only "
        "on a closed development box; with auth on and no token the service does not start.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        shared = EnvSettingsSource(settings_cls, env_prefix="TUNELOOP_")
        return init_settings, env_settings, shared, dotenv_settings, file_secret_settings

    def service_tokens(self) -> list[str]:
        """Accepted service tokens (the first is the one this service sends)."""
        raw = self.service_token.get_secret_value() if self.service_token else ""
        return [t.strip() for t in raw.split(",") if t.strip()]

    def outgoing_service_token(self) -> str | None:
        tokens = self.service_tokens()
        return tokens[0] if tokens else None

    def resolved_artifact_url(self) -> str:
        return self.artifact_url or str((self.data_dir / "artifacts").resolve())

    def artifact_storage_options(self) -> dict[str, Any]:
        """fsspec storage options for the artifact URL (only S3 takes any today)."""
        if not self.resolved_artifact_url().startswith(("s3://", "s3a://")):
            return {}
        opts: dict[str, Any] = {}
        if self.s3_endpoint_url:
            opts["endpoint_url"] = self.s3_endpoint_url
        if self.s3_access_key_id:
            opts["key"] = self.s3_access_key_id
        if self.s3_secret_access_key:
            opts["secret"] = self.s3_secret_access_key.get_secret_value()
        if self.s3_region:
            opts["client_kwargs"] = {"region_name": self.s3_region}
        return opts

    def open_artifact_store(self) -> ArtifactStore:
        """The shared artifact store this configuration names (local folder or any fsspec URL)."""
        from .storage import ArtifactStore

        return ArtifactStore(self.resolved_artifact_url(), **self.artifact_storage_options())

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / f'{self.service_name}.db').resolve()}"


def open_service_state(settings: ServiceSettings, migrations_dir: Path) -> tuple[Database, ArtifactStore]:
    """What every service's lifespan opens first: its database, migrated to head with its own
    Alembic version table (``alembic_version_<service>``), and the shared artifact store."""
    from .db import Database

    db = Database(settings.resolved_database_url())
    db.migrate(migrations_dir, version_table=f"alembic_version_{settings.service_name}")
    return db, settings.open_artifact_store()

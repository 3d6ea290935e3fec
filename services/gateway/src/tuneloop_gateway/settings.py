"""Gateway settings (env prefix ``GATEWAY_``, falling back to ``TUNELOOP_``).

Peer URLs are shared by every service (``TUNELOOP_DATASET_URL``...); the inference admin key is
read from ``INFERENCE_ADMIN_KEY`` (the same variable the inference service reads) or
``GATEWAY_INFERENCE_ADMIN_KEY``.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from tuneloop.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", populate_by_name=True)

    service_name: str = "gateway"
    port: int = 8000

    # -- peers ---------------------------------------------------------------------------
    dataset_url: str = Field("http://127.0.0.1:8001", description="Dataset service base URL.")
    trainer_url: str = Field("http://127.0.0.1:8002", description="Trainer service base URL.")
    inference_url: str = Field("http://127.0.0.1:8003", description="Inference service base URL.")
    public_url: str | None = Field(
        None, description="URL the trainer can reach this gateway on (callback_url injected "
        "into job creation). Default: http://127.0.0.1:<port>.")
    inference_admin_key: str | None = Field(
        None, validation_alias=AliasChoices("inference_admin_key", "GATEWAY_INFERENCE_ADMIN_KEY",
                                            "INFERENCE_ADMIN_KEY"),
        description="Bearer key for inference's /admin API (deploy, aliases).")
    inference_api_key: str | None = Field(
        None, description="Bearer key for inference's OpenAI endpoints, if it requires one.")
    connect_timeout_s: float = Field(5.0, description="TCP connect timeout to any peer.")
    inference_timeout_s: float = Field(
        300.0, description="Read timeout for inference calls (between stream chunks when streaming).")
    upload_timeout_s: float = Field(600.0, description="Timeout for proxied uploads (files, datasets).")
    deploy_timeout_s: float = Field(900.0, description="Timeout for a deploy with wait=true.")

    # -- auth and limits ----------------------------------------------------------------
    bootstrap_admin_key: str | None = Field(
        None, description="Admin key to install on first start (else one is generated, printed "
        "and written to <data_dir>/gateway-admin-key).")
    admin_key_file: str | None = Field(
        None, description="Where the generated first admin key is written "
        "(default <data_dir>/gateway-admin-key).")
    default_rate_limit_rpm: int = Field(600, ge=1, description="Requests per minute per key "
                                        "when the key has no own limit (token bucket).")
    max_request_bytes: int = Field(2 * 1024 * 1024, ge=1024,
                                   description="Largest JSON request body (inference, admin).")
    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1024,
                                  description="Largest upload (/v1/files, /v1/datasets, eval files).")
    key_cache_ttl_s: float = Field(30.0, description="How long a verified key stays cached.")

    # -- evaluation ---------------------------------------------------------------------
    eval_concurrency: int = Field(4, ge=1, le=256,
                                  description="Requests in flight per target during an eval.")
    eval_max_tokens: int = Field(256, ge=1, description="max_tokens per eval generation.")
    eval_request_timeout_s: float = Field(120.0, description="Timeout of one eval generation.")
    eval_max_examples: int = Field(200, ge=1, description="Cap on eval examples (article: 100-200).")
    eval_reuse_generations: bool = Field(
        True, description="A target served by inference whose weights were already evaluated on the "
        "same eval set with the same settings (greedy) reuses that run's generations instead of "
        "generating again (the gate's base, every time). Off, or reuse_generations=false per run, "
        "to measure latency afresh.")
    general_suite: bool = Field(True, description="Run the general-capability suite by default.")

    # -- promotion ----------------------------------------------------------------------
    auto_promote: bool = Field(True, description="Evaluate and gate every succeeded training job.")
    promotion_alias: str = Field("production", description="Alias that the gate moves.")
    base_model_name: str = Field(
        "base", description="Served name of the base deployment on inference (deployed from the "
        "job's base_model path under this name when absent).")
    gate_min_uplift: float = Field(0.05, description="Min candidate - base on the task metric.")
    gate_min_vs_production: float = Field(
        0.0, description="Min candidate - production on the task metric (when there is one).")
    gate_max_general_drop: float = Field(
        0.05, description="Max base - candidate on the general-capability suite.")
    gate_min_json_validity: float = Field(
        0.9, description="Min share of valid JSON outputs (JSON tasks only).")
    reconcile_interval_s: float = Field(
        30.0, description="How often finished trainer jobs are listed (0 disables the loop).")

    def callback_url(self) -> str:
        base = self.public_url or f"http://127.0.0.1:{self.port}"
        return base.rstrip("/") + "/internal/training-events"

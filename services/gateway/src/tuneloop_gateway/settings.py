"""Gateway settings (env prefix ``GATEWAY_``, falling back to ``TUNELOOP_``).

Peer URLs are shared by every service (``TUNELOOP_DATASET_URL``...); the inference admin key is
read from ``INFERENCE_ADMIN_KEY`` (the same variable the inference service reads) or
``GATEWAY_INFERENCE_ADMIN_KEY``.
"""

from __future__ import annotations

import json
import socket
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

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
        None, description="Bearer key for inference's OpenAI endpoints (proxied requests, "
        "evaluations). Default: the service token (TUNELOOP_SERVICE_TOKEN).")
    connect_timeout_s: float = Field(5.0, description="TCP connect timeout to any peer.")
    upstream_keepalive_s: float = Field(
        60.0, gt=0, description="Idle keep-alive of the pooled connections to the peers: "
        "below theirs (the services keep idle connections TUNELOOP_KEEPALIVE_TIMEOUT_S, 65 s), "
        "so the gateway never sends a request on a connection a peer is closing, and reuses "
        "its connections across pauses in the traffic instead of reconnecting.")
    inference_max_connections: int = Field(
        4096, ge=0, description="Connections to the inference service at once (0 = no limit). "
        "Above the inference replicas' capacity (engine_max_num_seqs + engine_queue_size per "
        "engine): inference answers 429 with Retry-After when full; requests beyond this "
        "limit wait for a connection.")
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
    key_cache_size: int = Field(
        10_000, ge=1, description="Valid keys cached at most (LRU). Unknown keys are cached "
        "apart (1,024, at most 5 s), so a flood of made-up keys never evicts a valid one.")

    # -- evaluation ---------------------------------------------------------------------
    eval_concurrency: int = Field(
        4, ge=1, le=256, description="Most requests in flight per target during an eval. Each "
        "target starts with one (which measures the engine) and opens up to this, halving "
        "whenever its engine times out or answers 429/5xx.")
    eval_max_tokens: int = Field(256, ge=1, description="max_tokens per eval generation.")
    eval_request_timeout_s: float = Field(
        600.0, gt=0, description="Longest timeout of one eval request (the first request of a "
        "target, before its speed is known, and the cap after that).")
    eval_request_timeout_min_s: float = Field(
        30.0, gt=0, description="Shortest timeout of one eval request. In between, the timeout is "
        "GATEWAY_EVAL_TIMEOUT_SAFETY x max_tokens x the engine's measured seconds per token, "
        "doubled on each retry.")
    eval_timeout_safety: float = Field(
        4.0, ge=1, description="Headroom of the measured-speed timeout (see above).")
    eval_retries: int = Field(
        4, ge=0, le=20, description="Retries of an eval request that timed out, could not connect "
        "or got 429/5xx (exponential backoff with jitter; Retry-After honoured). What still fails "
        "is left out of scoring and makes the run 'incomplete' (the gate: 'inconclusive').")
    eval_backoff_s: float = Field(1.0, gt=0, description="First retry's backoff cap (doubles each retry).")
    eval_backoff_max_s: float = Field(30.0, gt=0, description="Largest backoff between retries.")
    eval_give_up_after: int = Field(
        8, ge=1, description="A target whose last N attempts all failed, with no answer for "
        "GATEWAY_EVAL_GIVE_UP_AFTER_S, is treated as down: its remaining requests fail at once "
        "(the run is incomplete; a re-run generates them).")
    eval_give_up_after_s: float = Field(
        120.0, ge=0, description="See GATEWAY_EVAL_GIVE_UP_AFTER: how long without any answer "
        "(a short outage, e.g. an engine restart, is ridden out by the retries).")
    eval_kshot: int = Field(
        3, ge=0, le=16, description="Examples from the train split in the prompted baseline: every "
        "eval on a dataset (and every gate) also runs the baseline with a k-shot prompt. 0: off.")
    eval_kshot_max_prompt_tokens: int = Field(
        1536, ge=64, description="Context budget of the k-shot prompt (estimated tokens of the "
        "examples plus the longest eval prompt); fewer examples are used when they do not fit.")
    eval_max_examples: int = Field(200, ge=1, description="Cap on eval examples (article: 100-200).")
    eval_reuse_generations: bool = Field(
        True, description="A target served by inference whose weights were already evaluated on the "
        "same eval set with the same settings (greedy) reuses that run's generations instead of "
        "generating again (the gate's base, every time). Off, or reuse_generations=false per run, "
        "to measure latency afresh.")
    general_suite: bool = Field(True, description="Run the general-capability suite by default.")
    general_suite_size: int | None = Field(
        None, ge=10, description="How many general-capability items to run. Unset: the core suite "
        "(438 items, forgetting interval about +-0.05). Fewer: a subset of the core, round-robin "
        "across its kinds (e.g. 200 on a slow CPU: about +-0.07, more gates end 'inconclusive'). "
        "More, up to 3000: the core plus extended items of the same kinds (about +-0.02 at 3000; "
        "a GPU answers them in seconds, and the GPU demo uses all of them).")

    # -- capture (the flywheel, docs/flywheel.md) ------------------------------------------
    capture_models: Annotated[list[str], NoDecode] = Field(
        [], description="Served names/aliases whose traffic may be captured (comma-separated or a "
        "JSON list; empty: capture is off). A request is captured only when its model is listed "
        "here AND its API key opted in (capture=true).")
    capture_max_rows: int = Field(
        100_000, ge=1, description="Captured rows kept at most; the oldest go first.")
    capture_retention_days: float = Field(
        30.0, gt=0, description="Captured rows older than this are deleted (reviewed or not; rows "
        "already published live on in their dataset version).")
    capture_queue_size: int = Field(
        1000, ge=1, description="Captures waiting to be written at most; beyond it a capture is "
        "dropped and counted (tuneloop_gateway_captures_total{outcome=\"dropped\"}), never "
        "the user's request delayed.")
    capture_max_chars: int = Field(
        100_000, ge=100, description="Prompt/answer text kept per capture at most (longer text "
        "is cut and the capture marked truncated).")
    capture_mask_subprocess: bool = Field(
        True, description="Parse and mask captures in a separate worker process (regular "
        "expressions hold the GIL: masking a large prompt in the gateway's own process would "
        "delay the requests it is serving). Off: a thread of the gateway process.")
    drift_max_training_rows: int = Field(
        20_000, ge=10, description="Training rows read for drift and near-duplicate checks at "
        "most (the first N of the train split).")

    @field_validator("capture_models", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    # -- promotion ----------------------------------------------------------------------
    auto_promote: bool = Field(True, description="Evaluate and gate every succeeded training job.")
    promotion_alias: str = Field(
        "production", description="Alias that the gate moves when the job names none (a job's "
        "gate_alias wins).")
    gate_via_adapter: bool = Field(
        True, description="Evaluate a candidate as a runtime LoRA adapter on the served base when "
        "inference can (vLLM with INFERENCE_VLLM_ENABLE_LORA): no second engine for the "
        "evaluation; a passing candidate's merged weights are then deployed and the alias moves "
        "to them. Otherwise (or off) the merged weights are deployed for the evaluation.")
    base_model_name: str = Field(
        "base", description="Served name of the base deployment on inference (deployed from the "
        "job's base_model path under this name when absent).")
    gate_min_uplift: float = Field(
        0.05, description="Min candidate - best baseline (base zero-shot or base k-shot) on the "
        "task metric: the lower bound of the paired 95% interval must reach it.")
    gate_min_vs_production: float = Field(
        0.0, description="Min candidate - production on the task metric (when there is one), "
        "on the lower bound of the paired 95% interval.")
    gate_max_general_drop: float = Field(
        0.05, description="Max base - candidate on the general-capability suite: the upper bound "
        "of the paired 95% interval must stay within it.")
    gate_min_json_validity: float = Field(
        0.9, description="Min share of valid JSON outputs (JSON tasks only), on the Wilson 95% "
        "interval.")
    reconcile_interval_s: float = Field(
        30.0, description="How often finished trainer jobs are listed (0 disables the loop).")
    replica_id: str = Field(
        default_factory=socket.gethostname, min_length=1, max_length=120,
        description="This gateway replica's name (default: the host name, the pod name on "
        "Kubernetes). Evaluations and gates it runs are marked with it and a per-process id, "
        "so another replica neither runs the same gate twice nor fails work that is alive.")
    workers: int = Field(
        0, ge=0, le=64, description="Gateway processes behind the one port (0: auto, one up to "
        "4 CPUs, then one per 4 CPUs, at most 4; CPUs counted from the affinity and the cgroup "
        "quota). Each serves every route; they share rate limits, key revocations and "
        "/metrics. A proxy spends ~1 ms of a core per request: at hundreds of concurrent "
        "generations one process is the bottleneck (bench/serve_load.py). On Kubernetes the "
        "manifests set 1 and scale with replicas.")
    work_lease_s: float = Field(
        60.0, ge=10, le=3600, description="An evaluation or gate running on a replica counts "
        "as alive while that replica refreshes it (every quarter of this). Work not refreshed "
        "for this long (its replica died) is failed as interrupted by any replica; a job's gate "
        "is then run again by the reconcile loop. At start-up, work of this replica's previous "
        "process is failed at once.")

    @model_validator(mode="after")
    def _inference_key_defaults_to_service_token(self) -> "GatewaySettings":
        if self.inference_api_key is None and self.outgoing_service_token():
            self.inference_api_key = self.outgoing_service_token()
        return self

    def callback_url(self) -> str:
        base = self.public_url or f"http://127.0.0.1:{self.port}"
        return base.rstrip("/") + "/internal/training-events"

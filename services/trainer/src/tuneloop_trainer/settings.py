"""Trainer service settings (env prefix ``TRAINER_``, falling back to ``TUNELOOP_``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from tuneloop.settings import ServiceSettings


class TrainerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINER_", extra="ignore")

    service_name: str = "trainer"
    port: int = 8002

    # -- peers -------------------------------------------------------------------------
    dataset_url: str = Field("http://127.0.0.1:8001", description="Dataset service base URL.")
    callback_url: str | None = Field(None, description="Default URL notified when a job succeeds "
                                     "(a job's own callback_url wins), e.g. the gateway's "
                                     "http://gateway:8000/internal/training-events.")
    callback_attempts: int = Field(5, ge=1, le=20, description="Tries per callback (backoff 0.5s x2^n).")

    backend: Literal["auto", "unsloth", "peft"] = Field("auto", description="Backend of jobs that "
                                                        "do not name one.")

    # -- queue / executor --------------------------------------------------------------
    executor: Literal["local", "kubernetes"] = Field("local", description="Where jobs run.")
    max_concurrent_jobs: int = Field(1, ge=1, le=64, description="Jobs running at once (one per GPU).")
    gpu_ids: list[str] = Field(default_factory=list, description="Local executor: GPUs handed out "
                               "to jobs through CUDA_VISIBLE_DEVICES, `gpus` of them per job (e.g. "
                               "[\"0\",\"1\"]: two 1-GPU jobs at once with max_concurrent_jobs=2, "
                               "or one 2-GPU job); empty: jobs see every GPU.")
    poll_interval_s: float = Field(0.5, gt=0, le=30, description="Supervisor loop period.")
    cancel_grace_s: float = Field(5.0, ge=0, le=120, description="SIGTERM -> SIGKILL grace on cancel.")
    job_python: str | None = Field(None, description="Python for job processes (default: this one).")
    job_env: dict[str, str] = Field(default_factory=dict, description="Extra env for job processes.")

    # -- validation --------------------------------------------------------------------
    allow_remote_models: bool = Field(False, description="Allow Hub ids not in the local cache "
                                      "(only with network).")

    # -- kubernetes executor (TRAINER_K8S_*) -------------------------------------------
    k8s_api_url: str = Field("https://kubernetes.default.svc", description="Kubernetes API server.")
    k8s_namespace: str = Field("tuneloop", description="Namespace of training Jobs.")
    k8s_image: str = Field("tuneloop/trainer-gpu:0.1.0", description="Image running run_job.")
    k8s_artifact_pvc: str = Field("tuneloop-artifacts", description="PVC holding the artifact "
                                  "store (a local-path store; unused when ARTIFACT_URL is s3://).")
    k8s_artifact_mount: str = Field("/artifacts", description="Mount path of the PVC in the Job.")
    k8s_s3_secret: str | None = Field(
        "tuneloop-secrets", description="With an s3:// artifact store: the Secret whose "
        "TUNELOOP_S3_ACCESS_KEY_ID / TUNELOOP_S3_SECRET_ACCESS_KEY keys become the Job's S3 "
        "credentials (only those two keys; optional, so a Secret without them, or workload "
        "identity, works too). The endpoint and region are the service's own settings. Empty: "
        "no Secret (credentials from the node or a service-account role).")
    k8s_scratch_mount: str = Field(
        "/scratch", description="Mount path of the Job's scratch volume (an emptyDir; TMPDIR): "
        "with an s3:// store the job's working files (events, checkpoints, the model before "
        "upload) live there.")
    k8s_gpus: int = Field(1, ge=0, le=16, description="nvidia.com/gpu per Job (a job with "
                          "gpus: N > this asks for N); 0: a CPU cluster, no GPU requested.")
    k8s_node_selector: dict[str, str] = Field(
        default_factory=dict, description="nodeSelector of training Jobs (JSON object, e.g. "
        "{\"nvidia.com/gpu.product\": \"NVIDIA-H200\"}).")
    k8s_tolerations: list[dict[str, Any]] | None = Field(
        None, description="tolerations of training Jobs (JSON array of Kubernetes Toleration "
        "objects). Unset: tolerate the nvidia.com/gpu taint when GPUs are requested; [] none.")
    k8s_cpu: str = Field("4", description="CPU request per Job.")
    k8s_memory: str = Field("32Gi", description="Memory request/limit per Job.")
    k8s_token_file: str = Field("/var/run/secrets/kubernetes.io/serviceaccount/token",
                                description="Bearer token file (in-cluster service account). "
                                "Re-read every minute and after a 401: projected tokens rotate.")
    k8s_ca_file: str | None = Field("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
                                    description="CA bundle for the API server (None: system CAs).")
    k8s_backoff_limit: int = Field(2, ge=0, le=10, description="Pod retries (a retry resumes). "
                                   "A pod evicted or preempted is retried without counting; an "
                                   "out-of-memory exit fails the Job at once (the same run would "
                                   "run out again).")
    k8s_active_deadline_s: int = Field(
        172_800, ge=60, description="activeDeadlineSeconds of a training Job: Kubernetes stops a "
        "Job still running after this long (48 h), retries included.")
    k8s_run_as_user: int = Field(10001, ge=1, description="UID (and GID) training pods run as "
                                 "(non-root; the images' user).")

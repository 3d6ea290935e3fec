"""The contract between services, as code: the objects the HTTP APIs answer with.

Routes declare these as ``response_model`` (so FastAPI checks what a service answers and the
OpenAPI schema shows it); the typed clients in :mod:`tuneloop.clients` parse answers into the
same classes. ``docs/contracts.md`` describes them in prose and ``tests/test_contracts.py``
checks that every field named here is named there.

Rules every model follows:

- Field names are the wire names, unchanged (the CLI, the console, the README and the tests
  read them). A service may answer *more* fields than a model names (``extra="allow"``: they
  pass through, to clients too); it may never answer fewer, and the types here are checked.
- One name per concept: ``model_id`` is always a model version id (``mv-...``, made by the
  trainer); ``model`` is always a *served name* (a model version id, a base model name such as
  ``base``, or an alias); ``dataset_id``/``job_id``/``eval_id`` are ids of their objects.
- One list shape: :class:`Page` ``{"object": "list", "data": [...], "has_more": bool}``;
  ``has_more`` is known, never guessed (a service fetches one row more than the page).
- Timestamps are unix seconds (int).

Client code reads fields as attributes (``job.status``). For code written against the
earlier dict answers, a model also reads like a mapping (``job["status"]``, ``job.get(...)``,
``"x" in job``); new code should not.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class Contract(BaseModel):
    """Base of every contract object: extra fields pass through, mapping-style reads work."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and (key in self.model_fields_set
                                         or key in (self.__pydantic_extra__ or {}))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict of this object as the service answered it (nothing added)."""
        return self.model_dump(mode="json", exclude_unset=True)


class Page(Contract, Generic[T]):
    """One page of a list. Offset-paged lists (datasets, rows, evals) take ``offset``/``limit``;
    cursor-paged ones (jobs, events) take ``after``/``limit``; both answer this shape."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool = False


# -- dataset service -------------------------------------------------------------------------
class DatasetCounts(Contract):
    total: int
    valid: int
    invalid: int
    train: int
    eval: int


class Dataset(Contract):
    """An immutable, content-hashed dataset version (``ds-<16 hex>``)."""

    id: str
    object: Literal["dataset"] = "dataset"
    name: str | None = None
    status: str
    created_at: int
    counts: DatasetCounts
    format: str | None = None
    warnings: list[dict[str, Any]] = []
    options: dict[str, Any] = {}
    source: dict[str, Any] = {}
    bytes: int | None = None
    artifacts: dict[str, str] = {}
    artifact_url: str | None = None
    in_use_by: list[str] = []


class RowsPage(Page[dict[str, Any]]):
    """A page of a split's rows (``messages``, ``line``); offset-paged with its ``total``."""

    total: int
    split: Literal["train", "eval"]
    offset: int
    limit: int


class Lease(Contract):
    object: Literal["dataset.lease"] = "dataset.lease"
    dataset_id: str
    holder: str
    in_use_by: list[str]


class Deleted(Contract):
    """The answer to a DELETE of an object."""

    id: str
    object: str
    deleted: bool


# -- trainer service -------------------------------------------------------------------------
JobStatus = Literal["validating", "queued", "running", "succeeded", "failed", "cancelled"]


class JobProgress(Contract):
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    step_time_s: float | None = None
    peak_gpu_bytes: int | None = None
    peak_rss_bytes: int | None = None


class Job(Contract):
    """A training job (``job-...``); on success ``model_id`` names the model version it made."""

    id: str
    object: Literal["training_job"] = "training_job"
    status: JobStatus
    dataset_id: str
    base_model: str
    backend: str
    resolved_backend: str | None = None
    gpus: int = 1
    hyperparameters: dict[str, Any] = {}
    export: dict[str, Any] = {}
    resolved_hyperparameters: dict[str, Any] | None = None
    model_id: str | None = None
    progress: JobProgress = JobProgress()
    error: dict[str, Any] | None = None
    attempts: int = 0
    executor: str | None = None
    suffix: str | None = None
    gate_alias: str | None = None
    callback_url: str | None = None
    cancel_requested: bool = False
    created_at: int
    started_at: int | None = None
    finished_at: int | None = None


class JobEvent(Contract):
    seq: int
    type: str
    created_at: int
    data: dict[str, Any] = {}


class ModelVersion(Contract):
    """A model version (``mv-...``): immutable weights in the store plus their lineage."""

    id: str
    object: Literal["model_version"] = "model_version"
    job_id: str | None = None
    dataset_id: str | None = None
    base_model: str | None = None
    base_revision: dict[str, Any] | None = None
    backend: str | None = None
    suffix: str | None = None
    config: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    artifacts: dict[str, Any] = {}
    export_checks: list[dict[str, Any]] = []
    artifact_url: str | None = None
    created_at: int


# -- inference service -----------------------------------------------------------------------
DeploymentState = Literal["starting", "ready", "restarting", "failed", "stopped"]


class DeploymentReplica(Contract):
    """What one replica reports for a deployment (its observed state)."""

    replica: str
    state: str
    url: str | None = None
    restarts: int = 0
    error: str | None = None
    updated_at: int | None = None


class Deployment(Contract):
    """An engine serving one model under its served name ``model`` (``dep-...``)."""

    id: str
    object: Literal["deployment"] = "deployment"
    model: str
    model_id: str | None = None
    path: str | None = None
    adapter_of: str | None = None
    state: DeploymentState
    desired: Literal["serving", "stopped"] | None = None
    engine: str | None = None
    tensor_parallel_size: int = 1
    error: str | None = None
    created_at: int | None = None
    local: dict[str, Any] | None = None
    replicas: list[DeploymentReplica] = []


class AliasFlip(Contract):
    """One entry of an alias's history (newest first): where it pointed and why."""

    model: str
    previous: str | None = None
    action: str  # "set" | "rollback"
    swap_seconds: float | None = None
    created_at: int


class AliasSwap(Contract):
    """What a flip (``PUT`` or rollback) did: the version it left, the one it stopped (None when
    something still uses it), the call's seconds and the seconds until routing flipped."""

    previous: str | None = None
    retired: str | None = None
    seconds: float
    flip_after_seconds: float


class Alias(Contract):
    """A stable name (``id``) that routes to a served name (``model``); ``previous`` is what a
    rollback flips back to. ``swap`` only in the answer to a flip."""

    id: str
    object: Literal["alias"] = "alias"
    model: str
    previous: str | None = None
    updated_at: int | None = None
    replicas: dict[str, str | None] = {}
    converged: bool = False
    history: list[AliasFlip] = []
    swap: AliasSwap | None = None


class GpuPlacement(Contract):
    """``GET /admin/gpus``: this replica's GPUs, each one's used memory share, and which engine
    (deployment id) holds which GPUs at what share. ``enabled`` is false on the CPU engine (and
    nothing else is answered)."""

    enabled: bool
    gpus: list[str] = []
    budget: float | None = None
    used: dict[str, float] = {}
    placements: dict[str, dict[str, Any]] = {}


# -- gateway ---------------------------------------------------------------------------------
EvalStatus = Literal["running", "succeeded", "incomplete", "failed"]


class EvalRun(Contract):
    """An evaluation run (``eval-...``): targets scored on a dataset's eval split (+ the general
    suite); ``report`` once finished (absent in listings)."""

    id: str
    object: Literal["eval"] = "eval"
    name: str | None = None
    status: EvalStatus
    created_at: int
    finished_at: int | None = None
    duration_s: float | None = None
    config: dict[str, Any] = {}
    error: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    report: dict[str, Any] | None = None


PromotionStatus = Literal["evaluating", "promoted", "rejected", "inconclusive", "failed", "done"]


class Promotion(Contract):
    """A gate decision, manual promotion or rollback (``promo-...``) with its evidence;
    ``candidate``/``previous`` are served names, ``model_id`` the model version gated."""

    id: str
    object: Literal["promotion"] = "promotion"
    kind: Literal["gate", "manual", "rollback"]
    status: PromotionStatus
    job_id: str | None = None
    model_id: str | None = None
    alias: str | None = None
    candidate: str | None = None
    previous: str | None = None
    eval_id: str | None = None
    reasons: list[str] = []
    evidence: dict[str, Any] = {}
    error: dict[str, Any] | None = None
    note: str | None = None
    created_at: int
    finished_at: int | None = None
    decision: str | None = None
    reason: str | None = None


class CaptureFeedback(Contract):
    """What the caller said about a captured answer (the last feedback wins)."""

    rating: Literal["up", "down"] | None = None
    correction: str | None = None
    comment: str | None = None
    created_at: int


class Capture(Contract):
    """A captured generation (``cap-...``), masked before it was stored, with its feedback and
    review; ``model`` is what the client asked for, ``served_model`` what answered. The review
    queue adds ``similarity`` (to the nearest training prompt) and ``metrics`` when asked."""

    id: str
    object: Literal["capture"] = "capture"
    response_id: str | None = None
    key_id: str
    endpoint: Literal["chat", "completions"]
    model: str
    served_model: str | None = None
    stream: bool = False
    finish_reason: str | None = None
    latency_s: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    masked: dict[str, int] = {}
    created_at: int
    feedback: CaptureFeedback | None = None
    status: Literal["pending", "accepted", "rejected"]
    edited_output: str | None = None
    reviewed_at: int | None = None
    dataset_id: str | None = None
    training_answer: str | None = None
    messages: list[dict[str, Any]] = []
    output: str | None = None
    similarity: float | None = None
    metrics: dict[str, Any] | None = None


__all__ = ["Alias", "AliasFlip", "AliasSwap", "Capture", "CaptureFeedback", "Contract", "Dataset",
           "DatasetCounts", "Deleted", "Deployment", "DeploymentReplica", "EvalRun", "GpuPlacement", "Job",
           "JobEvent", "JobProgress", "JobStatus", "Lease", "ModelVersion", "Page", "Promotion", "RowsPage"]

"""Request models of the trainer API (the contract; responses are shaped in ``views.py``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .hparams import ExportOptions, Hyperparameters

SUFFIX_PATTERN = r"^[A-Za-z0-9_\-]{1,40}$"
# an alias name as inference accepts it (its NAME_RE), so a bad one is refused at job creation
ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}$"


class JobCreate(BaseModel):
    """``POST /v1/jobs``."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(min_length=1, max_length=80, description="Dataset version (ds-...).")
    base_model: str = Field(min_length=1, max_length=500, description="Local model folder or Hub id.")
    backend: Literal["auto", "unsloth", "peft"] | None = Field(None, description="None: TRAINER_BACKEND.")
    gpus: int = Field(1, ge=1, le=64, description="GPUs of this job: more than 1 trains with DDP "
                      "under torchrun, one process per GPU (peft backend; unsloth refuses it).")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    export: ExportOptions = Field(default_factory=ExportOptions)
    callback_url: str | None = Field(None, max_length=2000, pattern=r"^https?://\S+$")
    suffix: str | None = Field(None, pattern=SUFFIX_PATTERN)
    dry_run: bool = Field(False, description="Estimate only (rows, tokens, the settings the job "
                          "would choose, steps, peak memory, time, whether it fits): 200, no job.")
    gate_alias: str | None = Field(
        None, pattern=ALIAS_PATTERN, description="Alias the gateway's promotion gate moves when this "
        "job's model passes (default: the gateway's GATEWAY_PROMOTION_ALIAS). One alias per task: "
        "a second task's fine-tune never lands on the first task's alias.")


class OpenAIHyperparameters(BaseModel):
    """OpenAI's names ("auto" = our default) plus any of tuneloop's own hyperparameters."""

    model_config = ConfigDict(extra="allow")

    n_epochs: int | Literal["auto"] = "auto"
    batch_size: int | Literal["auto"] = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"


class FineTuningJobCreate(BaseModel):
    """``POST /v1/fine_tuning/jobs`` (OpenAI shape; ``tuneloop`` carries native options)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=500)
    training_file: str = Field(min_length=1, max_length=80)
    validation_file: str | None = Field(None, max_length=80)
    hyperparameters: OpenAIHyperparameters | None = None
    method: dict[str, Any] | None = None
    suffix: str | None = Field(None, pattern=SUFFIX_PATTERN)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    tuneloop: dict[str, Any] | None = Field(None, description="backend / gpus / export / callback_url / gate_alias.")


def openai_to_native(body: FineTuningJobCreate) -> tuple[dict[str, Any], dict[str, Any]]:
    """Map OpenAI hyperparameters (top level or ``method.supervised``) to ours; returns
    ``(hyperparameters, extras)``. Raises ValueError on an unsupported method."""
    hp_src: dict[str, Any] = {}
    if body.method:
        kind = body.method.get("type", "supervised")
        if kind != "supervised":
            raise ValueError(f"method type {kind!r} is not supported (only 'supervised')")
        hp_src = dict((body.method.get("supervised") or {}).get("hyperparameters") or {})
    if body.hyperparameters is not None:
        hp_src.update(body.hyperparameters.model_dump(exclude_unset=True))
    hp: dict[str, Any] = {}
    n_epochs = hp_src.pop("n_epochs", "auto")
    batch = hp_src.pop("batch_size", "auto")
    lr_mult = hp_src.pop("learning_rate_multiplier", "auto")
    if n_epochs != "auto":
        hp["num_train_epochs"] = n_epochs
    if batch != "auto":
        hp["per_device_train_batch_size"] = batch
        hp["gradient_accumulation_steps"] = 1
    if lr_mult != "auto":
        hp["learning_rate"] = Hyperparameters().learning_rate * float(lr_mult)
    hp.update(hp_src)  # native names pass through (validated by Hyperparameters)
    if body.seed is not None:
        hp["seed"] = body.seed
    return hp, dict(body.tuneloop or {})

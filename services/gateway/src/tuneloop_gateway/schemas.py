"""Request models of the gateway's own API (evals, promotions)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

NAME = r"^[A-Za-z0-9_.\-]{1,64}$"


class TargetSpec(BaseModel):
    """Any OpenAI-compatible endpoint + model name."""

    name: str = Field(..., pattern=NAME, description="Label in the report (e.g. base, tuned).")
    model: str = Field(..., min_length=1, max_length=300, description="Model name sent to it.")
    base_url: str | None = Field(
        None, max_length=500, pattern=r"^https?://",
        description="OpenAI base URL ending in /v1 (default: our inference service).")
    api_key: str | None = Field(None, max_length=500, description="Bearer key (never stored).")
    role: Literal["base", "base_kshot", "candidate", "production", "other"] | None = None


class JudgeSpec(BaseModel):
    """Optional LLM-as-judge: pairwise preference of ``candidate`` over ``base``, both orders."""

    model: str = Field(..., min_length=1, max_length=300)
    base_url: str | None = Field(None, max_length=500, pattern=r"^https?://")
    api_key: str | None = Field(None, max_length=500)
    candidate: str | None = Field(None, description="Target name (default: the second target).")
    base: str | None = Field(None, description="Target name (default: the baseline).")
    max_examples: int = Field(50, ge=1, le=500)


class EvalCreate(BaseModel):
    name: str | None = Field(None, max_length=200)
    dataset_id: str | None = Field(None, description="Use this dataset version's eval split.")
    rows: list[dict[str, Any]] | None = Field(
        None, description="Inline eval rows (messages, or instruction/input/output).")
    targets: list[TargetSpec] = Field(
        ..., min_length=1, max_length=8,
        description="Usually 2+ (base first); one target = the base-only run the article asks "
        "for before any fine-tuning.")
    baseline: str | None = Field(None, description="Target compared against (default: first).")
    metric: Literal["auto", "json_fields", "exact_match", "rougeL"] = "auto"
    max_examples: int | None = Field(None, ge=1, le=5000)
    max_tokens: int | None = Field(None, ge=1, le=8192)
    concurrency: int | None = Field(None, ge=1, le=256, description="In flight per target.")
    general_suite: bool | None = Field(None, description="Run the general-capability suite.")
    judge: JudgeSpec | None = None
    kshot: int | None = Field(
        None, ge=0, le=16, description="Examples in the prompted baseline (the baseline target "
        "with a k-shot prompt from the train split, run beside it). Default: GATEWAY_EVAL_KSHOT; 0: off.")
    train_rows: list[dict[str, Any]] | None = Field(
        None, max_length=1000, description="Rows the k-shot examples are chosen from when the "
        "eval set is given inline (a dataset version uses its own train split).")
    reuse_generations: bool | None = Field(
        None, description="Reuse an earlier run's generations for a target whose served weights, "
        "eval set and settings are the same (default: GATEWAY_EVAL_REUSE_GENERATIONS).")
    wait: bool = Field(False, description="Answer when the report is ready (else 202).")

    @model_validator(mode="after")
    def _check(self) -> "EvalCreate":
        if (self.dataset_id is None) == (self.rows is None):
            raise ValueError("give exactly one of dataset_id or rows (or upload a file)")
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise ValueError("target names must be unique")
        if self.baseline is not None and self.baseline not in names:
            raise ValueError(f"baseline '{self.baseline}' is not a target name")
        return self


class PromoteRequest(BaseModel):
    """Manual promotion: move ``alias`` to a served model (or deploy a model version first)."""

    alias: str | None = Field(None, pattern=NAME)
    model: str | None = Field(None, max_length=300, description="Served model name.")
    model_id: str | None = Field(None, description="A model version (mv-...) to deploy and promote.")
    note: str | None = Field(None, max_length=2000)

    @model_validator(mode="after")
    def _check(self) -> "PromoteRequest":
        if (self.model is None) == (self.model_id is None):
            raise ValueError("give exactly one of model or model_id")
        return self


class RollbackRequest(BaseModel):
    alias: str | None = Field(None, pattern=NAME)
    note: str | None = Field(None, max_length=2000)


class GateRequest(BaseModel):
    """Run the gate now: for a succeeded training job (what the callback and reconcile do), or
    for a model version already in the store with the dataset whose eval split judges it."""

    job_id: str | None = None
    model_id: str | None = None
    dataset_id: str | None = None
    alias: str | None = Field(None, pattern=NAME, description="Alias to promote onto (default: the "
                              "job's gate_alias, else GATEWAY_PROMOTION_ALIAS).")
    base_model: str | None = Field(None, max_length=1000,
                                   description="Base model path (default: the base deployment).")

    @model_validator(mode="after")
    def _check(self) -> "GateRequest":
        if (self.job_id is None) == (self.model_id is None):
            raise ValueError("give exactly one of job_id or model_id")
        if self.model_id is not None and self.dataset_id is None:
            raise ValueError("model_id needs dataset_id (whose eval split judges the model)")
        return self

"""Training hyperparameters: the article's recipe as defaults, with ranges checked before any run.

Pure pydantic (no FastAPI, no torch): imported by the API schemas and by the job process.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


class Hyperparameters(BaseModel):
    """LoRA + SFT settings. Defaults are the article's Unsloth recipe."""

    model_config = ConfigDict(extra="forbid")

    num_train_epochs: float = Field(3, gt=0, le=100, description="Epochs over the train split.")
    learning_rate: float = Field(2e-4, gt=0, le=1e-2, description="Peak learning rate (AdamW).")
    per_device_train_batch_size: int = Field(2, ge=1, le=512, description="Rows per device step.")
    gradient_accumulation_steps: int = Field(4, ge=1, le=1024, description="Steps per optimizer update.")
    warmup_steps: int = Field(10, ge=0, le=100_000, description="Linear warmup steps.")
    max_seq_length: int = Field(2048, ge=16, le=262_144, description="Truncate rendered rows to this.")
    max_steps: int = Field(-1, ge=-1, le=10_000_000, description="Cap on optimizer steps (-1: epochs decide).")
    lora_r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, le=4096, description="LoRA alpha (scale = alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, le=0.9, description="Dropout on the LoRA path.")
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS), min_length=1,
                                      description="Module names that get LoRA adapters.")
    bias: Literal["none", "all", "lora_only"] = "none"
    load_in_4bit: bool | None = Field(None, description="4-bit base (QLoRA). None: on when a CUDA GPU "
                                      "is used (the article's default), off on CPU.")
    gradient_checkpointing: bool | None = Field(None, description="None: on for GPU ('unsloth' "
                                                "mode with the unsloth backend), off on CPU.")
    packing: bool = Field(False, description="Pack several rows per sequence (TRL BFD packing).")
    group_by_length: bool = Field(False, description="Batch rows of similar length together (less "
                                  "padding when short and long rows are mixed, e.g. replay rows).")
    logging_steps: int = Field(10, ge=1, le=100_000, description="Log train loss every N steps.")
    eval_strategy: Literal["epoch", "steps"] = Field("epoch", description="When to evaluate and save.")
    eval_steps: int | None = Field(None, ge=1, description="With eval_strategy=steps: every N steps.")
    early_stopping_patience: int = Field(2, ge=0, le=1000, description="Evaluations without "
                                         "improvement before stopping (0: never stop early).")
    early_stopping_threshold: float = Field(0.0, ge=0, description="Minimum eval-loss improvement.")
    seed: int = Field(42, ge=0, le=2**31 - 1)
    random_state: int = Field(42, ge=0, le=2**31 - 1, description="LoRA init seed (unsloth's name).")

    @model_validator(mode="after")
    def _steps_need_eval_steps(self) -> "Hyperparameters":
        if self.eval_strategy == "steps" and not self.eval_steps:
            raise ValueError("eval_strategy 'steps' needs eval_steps")
        for m in self.target_modules:
            if not m.replace("_", "").replace(".", "").isalnum():
                raise ValueError(f"target module name not allowed: {m!r}")
        return self


class ExportOptions(BaseModel):
    """What to produce after training (the merged 16-bit model is always produced)."""

    model_config = ConfigDict(extra="forbid")

    merged: bool = Field(True, description="Merged 16-bit model (always on; kept for the contract).")
    merged_dtype: Literal["bfloat16", "float16"] = "bfloat16"
    verify: bool = Field(True, description="Merged-vs-trained check (docs/trainer.md); failure fails "
                         "the export.")
    verify_prompts: int = Field(6, ge=1, le=64, description="Held-out prompts the check answers.")
    verify_max_new_tokens: int = Field(48, ge=1, le=512)
    verify_tie_tolerance: float = Field(0.5, ge=0, le=100, description="Top-two logit gap of the "
                                        "trained model under which a token is a near-tie (skipped).")
    verify_min_agreement: float = Field(0.95, ge=0, le=1, description="Share of decisive tokens the "
                                        "merged model must predict as the trained model did.")
    verify_task_tolerance: float = Field(0.1, ge=0, le=1, description="How far below the trained "
                                         "model the merged model's held-out score may fall.")
    gguf: list[Literal["f16", "q8_0", "q4_k_m"]] = Field(default_factory=list)
    gguf_min_match: float = Field(0.9, ge=0, le=1, description="Recorded tolerance: fraction of "
                                  "GGUF greedy tokens that must equal the adapter's.")
    push_to_hub: str | None = Field(None, description="Hub repo id for the merged model (needs "
                                    "HF_TOKEN and network).")

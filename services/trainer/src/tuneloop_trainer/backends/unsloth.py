"""``unsloth`` backend: the article's recipe verbatim (GPU; Unsloth also runs on CPU, slowly).

``FastLanguageModel.from_pretrained(load_in_4bit=True, max_seq_length=2048)`` then
``get_peft_model(r=16, q/k/v/o, alpha=16, dropout=0, bias="none",
use_gradient_checkpointing="unsloth", random_state=42)``; merged with
``save_pretrained_merged(..., save_method="merged_16bit")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..hparams import Hyperparameters
from .base import Backend


class UnslothBackend(Backend):
    name = "unsloth"

    def __init__(self) -> None:
        import unsloth  # noqa: F401  (must be imported before trl/transformers: it patches them)

    def load(self, base_model: str, hp: Hyperparameters) -> tuple[Any, Any]:
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=base_model, max_seq_length=hp.max_seq_length,
            load_in_4bit=self.uses_4bit(hp), dtype=None)
        gc: Any = "unsloth" if hp.gradient_checkpointing in (None, True) else False
        model = FastLanguageModel.get_peft_model(
            model, r=hp.lora_r, target_modules=list(hp.target_modules), lora_alpha=hp.lora_alpha,
            lora_dropout=hp.lora_dropout, bias=hp.bias, use_gradient_checkpointing=gc,
            random_state=hp.random_state, max_seq_length=hp.max_seq_length)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer

    def prepare_for_generation(self, model: Any) -> None:
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)

    def merge(self, model: Any, tokenizer: Any, base_model: str, adapter_dir: Path,
              out_dir: Path, dtype: str) -> None:
        from ..export.merge import finish_merged_dir

        model.save_pretrained_merged(str(out_dir), tokenizer, save_method="merged_16bit")
        finish_merged_dir(base_model, out_dir, tokenizer)


def _is_local(name: str) -> bool:
    return Path(name).exists()

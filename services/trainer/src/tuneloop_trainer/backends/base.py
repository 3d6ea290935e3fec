"""Backend interface shared by the unsloth and peft backends."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from ..hparams import Hyperparameters


class Backend(ABC):
    name = "base"

    @abstractmethod
    def load(self, base_model: str, hp: Hyperparameters) -> tuple[Any, Any]:
        """Return ``(model with LoRA adapters, tokenizer)`` ready for SFTTrainer."""
        raise NotImplementedError

    @abstractmethod
    def merge(self, model: Any, tokenizer: Any, base_model: str, adapter_dir: Path,
              out_dir: Path, dtype: str) -> None:
        """Write the merged 16-bit model (safetensors, tokenizer, chat template, generation config)."""
        raise NotImplementedError

    def prepare_for_generation(self, model: Any) -> None:
        """Put the trained model in inference mode (the export check generates with it)."""
        model.eval()

    def uses_4bit(self, hp: Hyperparameters) -> bool:
        from . import cuda_available

        return bool(hp.load_in_4bit) if hp.load_in_4bit is not None else cuda_available()

    @staticmethod
    def precision() -> dict[str, bool]:
        """The article's rule: bf16 when supported, else fp16 (GPU); fp32 on CPU."""
        import torch

        if not torch.cuda.is_available():
            return {"bf16": False, "fp16": False}
        bf16 = torch.cuda.is_bf16_supported()
        return {"bf16": bf16, "fp16": not bf16}

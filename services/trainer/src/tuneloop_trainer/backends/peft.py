"""``peft`` backend: transformers + PEFT + TRL, no Unsloth (CPU or GPU).

Same defaults as the article's recipe; 4-bit QLoRA through bitsandbytes when on a CUDA GPU.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..export.merge import merge_adapter
from ..hparams import Hyperparameters
from .base import Backend


class PeftBackend(Backend):
    name = "peft"

    def load(self, base_model: str, hp: Hyperparameters) -> tuple[Any, Any]:
        import torch
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(base_model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        cuda = torch.cuda.is_available()
        kwargs: dict[str, Any] = {}
        if cuda:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            # one whole copy per process: DDP rank r trains on GPU LOCAL_RANK (0 alone)
            kwargs.update(dtype=dtype, device_map={"": int(os.environ.get("LOCAL_RANK", 0))})
            if self.uses_4bit(hp):
                from transformers import BitsAndBytesConfig

                kwargs["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=dtype)
        else:
            kwargs["dtype"] = torch.float32
        model = AutoModelForCausalLM.from_pretrained(base_model, **kwargs)
        gc = hp.gradient_checkpointing if hp.gradient_checkpointing is not None else cuda
        if "quantization_config" in kwargs:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gc)
        elif gc:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        torch.manual_seed(hp.random_state)
        lora = LoraConfig(r=hp.lora_r, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
                          target_modules=list(hp.target_modules), bias=hp.bias, task_type="CAUSAL_LM")
        return get_peft_model(model, lora), tokenizer

    def merge(self, model: Any, tokenizer: Any, base_model: str, adapter_dir: Path,
              out_dir: Path, dtype: str) -> None:
        merge_adapter(base_model, adapter_dir, out_dir, dtype, tokenizer)

"""Merge a LoRA adapter into its base and save a 16-bit model folder that plain transformers loads."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

_DTYPES = {"bfloat16", "float16"}


def merge_adapter(base_model: str, adapter_dir: Path, out_dir: Path, dtype: str,
                  tokenizer: Any) -> None:
    """``merge_and_unload`` in fp32 (CPU) or the 16-bit dtype (GPU), then save as ``dtype``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if dtype not in _DTYPES:
        raise ValueError(f"merged dtype must be one of {sorted(_DTYPES)}")
    target = getattr(torch, dtype)
    cuda = torch.cuda.is_available()
    base = AutoModelForCausalLM.from_pretrained(
        base_model, dtype=target if cuda else torch.float32, device_map={"": 0} if cuda else None)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged = merged.to(target)
    merged.config.dtype = target
    merged.save_pretrained(out_dir, safe_serialization=True)
    finish_merged_dir(base_model, out_dir, tokenizer)


def finish_merged_dir(base_model: str, out_dir: Path, tokenizer: Any) -> None:
    """Tokenizer + chat template + generation config beside the weights (copied from the base)."""
    from transformers import GenerationConfig

    tokenizer.save_pretrained(out_dir)
    try:
        GenerationConfig.from_pretrained(base_model).save_pretrained(out_dir)
    except OSError:
        pass  # the base has none: save_pretrained already wrote the model's default
    base = Path(base_model)
    for name in ("chat_template.jinja",):  # some tokenizers keep the template only in this file
        if (base / name).exists() and not (out_dir / name).exists():
            shutil.copy(base / name, out_dir / name)
    if not list(out_dir.glob("*.safetensors")):
        raise RuntimeError("merged model has no safetensors weights")


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())

"""Training backends: ``unsloth`` (GPU, the article's recipe) and ``peft`` (transformers + PEFT + TRL).

Both hand a LoRA-wrapped model and its tokenizer to the same TRL ``SFTTrainer`` loop
(:mod:`tuneloop_trainer.training`) and know how to write the merged 16-bit model.
"""

from __future__ import annotations

import importlib.util

from ..failures import JobError
from .base import Backend

BACKENDS = ("auto", "unsloth", "peft")


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - torch always present in the job image
        return False


def unsloth_installed() -> bool:
    return importlib.util.find_spec("unsloth") is not None


def resolve(name: str) -> str:
    """``auto`` -> ``unsloth`` when a CUDA GPU and the package are present, else ``peft``."""
    if name == "auto":
        return "unsloth" if cuda_available() and unsloth_installed() else "peft"
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}")
    return name


def get_backend(name: str) -> Backend:
    """Instantiate a resolved backend (imports unsloth first when chosen: it patches TRL)."""
    name = resolve(name)
    if name == "unsloth":
        from .unsloth import UnslothBackend

        return UnslothBackend()
    from .peft import PeftBackend

    return PeftBackend()


def multi_gpu_backend(name: str, world_size: int) -> str:
    """The backend of a job over ``world_size`` processes: ``auto`` means ``peft`` there (the
    backend that trains under DDP); ``unsloth`` is refused (single GPU only, docs/trainer.md)."""
    if world_size <= 1:
        return name
    if name == "unsloth":
        raise JobError("multi_gpu_unsupported", "backend 'unsloth' trains on one GPU only "
                       "(use 'peft' or 'auto' for gpus > 1)")
    return "peft"

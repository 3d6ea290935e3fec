"""Know before you spend: what a job would do, without training (``POST /v1/jobs`` with ``dry_run``).

Rows and tokens after rendering with the base's chat template, the hyperparameters the job would
choose on this machine's device (:mod:`.defaults`, with the reasons), steps, predicted peak memory
and whether it fits, and predicted wall time from recorded throughput. The service process never
initialises CUDA for this: the GPU is read with ``nvidia-smi``.

Throughput model: LoRA training costs ~4 x parameters FLOPs per token (forward, plus the backward
pass through frozen weights); each device class has an effective FLOP rate calibrated on a run we
recorded, so the estimate scales with model size and says which record it rests on.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from typing import Any

from .defaults import GIB, DeviceInfo, ModelInfo, load_model_info, resolve
from .hparams import Hyperparameters

# (effective FLOP/s for LoRA training, what it was calibrated on)
RECORDED = {
    "cuda_packed": (4 * 1.04e9 * 25_000, "H200, 1.04B Llama, unsloth 16-bit packed: ~25k tokens/s "
                    "(bench/results/trainer_gpu_varlen.json)"),
    "cuda": (4 * 1.04e9 * 6_600, "H200, 1.04B Llama, unsloth 16-bit unpacked: ~6.6k tokens/s "
             "(issue 13's measurement)"),
    "cpu": (4 * 1.35e8 * 50, "2 CPU cores, SmolLM2-135M, fp32: ~50 tokens/s "
            "(bench/results/demo_sizing.json)"),
}


def gpu_device() -> DeviceInfo | None:
    """The first visible GPU from nvidia-smi (no CUDA context in this process)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total,memory.used",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    name, total, used = [x.strip() for x in out[0].split(",")]
    total_b, used_b = int(float(total)) << 20, int(float(used)) << 20
    return DeviceInfo("cuda", name, total_b, total_b - used_b, True, os.cpu_count() or 1, 0.0)


def cpu_device() -> DeviceInfo:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    page = os.sysconf("SC_PAGE_SIZE")
    return DeviceInfo("cpu", "cpu", page * os.sysconf("SC_PHYS_PAGES"),
                      page * os.sysconf("SC_AVPHYS_PAGES"), False, cores, os.getloadavg()[0])


def steps_of(hp: Hyperparameters, lengths: list[int], world: int = 1) -> dict[str, Any]:
    """Optimizer steps: packed rows fill sequences of max_seq_length; unpacked, one row each."""
    tokens = sum(min(n, hp.max_seq_length) for n in lengths)
    units = math.ceil(tokens / hp.max_seq_length) if hp.packing else len(lengths)
    per_step = hp.per_device_train_batch_size * hp.gradient_accumulation_steps * world
    per_epoch = max(1, math.ceil(units / per_step))
    total = hp.max_steps if hp.max_steps > 0 else math.ceil(per_epoch * hp.num_train_epochs)
    return {"per_epoch": per_epoch, "total": total, "sequences_per_step": per_step,
            "packed_sequences" if hp.packing else "rows": units,
            "tokens_per_epoch": tokens}


def throughput(dev: DeviceInfo, m: ModelInfo, hp: Hyperparameters, threads: int | None) -> tuple[float, str]:
    key = "cpu" if not dev.cuda else ("cuda_packed" if hp.packing else "cuda")
    flops, basis = RECORDED[key]
    if not dev.cuda:
        flops *= max(1, threads or 1)  # the record is one thread
    return flops / (4 * m.params), basis


def estimate(base_model: str, backend: str, given: Hyperparameters, lengths: list[int],
             eval_rows: int, world: int = 1) -> dict[str, Any]:
    """The dry run's answer (see the module docstring)."""
    from .backends import resolve as resolve_backend

    dev = gpu_device() or cpu_device()
    m = load_model_info(base_model)
    name = resolve_backend(backend) if dev.cuda or backend != "auto" else "peft"
    plan = resolve(given, dev, m, name, lengths)
    hp = plan.hp
    steps = steps_of(hp, lengths, world)
    tps, basis = throughput(dev, m, hp, plan.threads)
    train_tokens = steps["tokens_per_epoch"] * (hp.num_train_epochs if hp.max_steps <= 0 else
                                               steps["total"] / steps["per_epoch"])
    seconds = train_tokens / tps
    mem = plan.memory.get("estimate_bytes", {})
    fits = bool(plan.memory.get("fits"))
    return {
        "object": "training_job.estimate", "dry_run": True, "backend": name,
        "device": {"kind": dev.kind, "name": dev.name, "total_bytes": dev.total_bytes,
                   "free_bytes": dev.free_bytes},
        "model": {"params": m.params, "layers": m.layers, "hidden": m.hidden},
        "rows": {"train": len(lengths), "eval": eval_rows},
        "tokens": {"train": steps["tokens_per_epoch"], "longest": max(lengths, default=0),
                   "median": sorted(lengths)[len(lengths) // 2] if lengths else 0,
                   "truncated_rows": sum(n > hp.max_seq_length for n in lengths)},
        "hyperparameters": hp.model_dump(), "chosen": plan.reasons,
        "torch_threads": plan.threads, "steps": steps,
        "memory": {"peak_bytes": mem.get("total"), "parts": mem, "fits": fits,
                   "peak_gib": round((mem.get("total") or 0) / GIB, 2)},
        "time": {"tokens_per_s": round(tps, 1), "train_seconds": round(seconds, 1),
                 "basis": basis, "note": "training only; export and its check add ~10-60 s"},
        "fits": fits,
    }

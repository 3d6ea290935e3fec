"""Hyperparameters the user did not set, chosen for this device, this model and this data.

The article's recipe (lr 2e-4, 3 epochs, batch 2 x 4, 4-bit, gradient checkpointing) was written
for a VRAM-starved GPU and a 7B model. Measured on one H200 (docs/trainer.md, bench results
``trainer_gpu_varlen.json``) that recipe is the slowest thing the GPU can do with a 1B model:
4-bit and checkpointing trade speed for memory the card does not need. So each choice here is
made from an estimate of what fits, and every choice is returned with the reason, which the job
records as an event. A setting the user gave explicitly is never changed.

Pure Python (no torch import at module level): the API's dry run uses it in the service process.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from .hparams import Hyperparameters

GIB = 1 << 30
MARGIN = 0.80            # plan to use at most this share of the free device memory
RUNTIME_BYTES = 1 * GIB  # CUDA context, allocator slack, kernels' workspaces
TARGET_FORWARD_TOKENS = 16384  # GPU micro-batch (packed) at most: what keeps an H200 busy
MIN_STEPS = 60           # ...but a run keeps this many optimizer steps (Unsloth's notebooks: 60)
GPU_EPOCHS = 3
ROWS_PER_STEP = 8        # the article's batch 2 x accumulation 4: rows an optimizer step sees


@dataclass
class DeviceInfo:
    kind: str                  # "cuda" | "cpu"
    name: str
    total_bytes: int
    free_bytes: int
    bf16: bool = False
    cores: int = 1
    load_1m: float = 0.0

    @property
    def cuda(self) -> bool:
        return self.kind == "cuda"


@dataclass
class ModelInfo:
    params: int
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    embed_params: int

    @property
    def billions(self) -> float:
        return self.params / 1e9


@dataclass
class Plan:
    """The resolved hyperparameters, why each default was chosen, and the memory estimate."""

    hp: Hyperparameters
    reasons: list[dict[str, Any]] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None

    def choose(self, name: str, value: Any, why: str) -> None:
        self.reasons = [r for r in self.reasons if r["setting"] != name]  # a later rule refines
        self.reasons.append({"setting": name, "value": value, "why": why})

    def as_dict(self) -> dict[str, Any]:
        return {"hyperparameters": self.hp.model_dump(), "chosen": self.reasons,
                "memory": self.memory, "torch_threads": self.threads}


# ------------------------------------------------------------------------------ inputs
def probe_device(local_rank: int = 0) -> DeviceInfo:
    """What this process trains on: the CUDA device (free memory now) or the CPU."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(local_rank)
        return DeviceInfo("cuda", torch.cuda.get_device_name(local_rank), int(total), int(free),
                          bool(torch.cuda.is_bf16_supported()), cores, load)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return DeviceInfo("cpu", "cpu", int(total), int(free), False, cores, load)


def model_info(config: Any) -> ModelInfo:
    """Parameter count and shape from a transformers config (no weights loaded)."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    h = int(cfg.hidden_size)
    layers = int(cfg.num_hidden_layers)
    inter = int(getattr(cfg, "intermediate_size", None) or 4 * h)
    vocab = int(cfg.vocab_size)
    heads = int(getattr(cfg, "num_attention_heads", 1) or 1)
    kv = int(getattr(cfg, "num_key_value_heads", heads) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or h // heads)
    attn = h * heads * head_dim * 2 + h * kv * head_dim * 2
    per_layer = attn + 3 * h * inter + 2 * h
    embed = vocab * h * (1 if getattr(cfg, "tie_word_embeddings", False) else 2)
    return ModelInfo(per_layer * layers + embed + h, h, layers, inter, vocab, embed)


def load_model_info(base_model: str) -> ModelInfo:
    from transformers import AutoConfig

    return model_info(AutoConfig.from_pretrained(base_model))


# ------------------------------------------------------------------------------ memory
def lora_params(m: ModelInfo, hp: Hyperparameters) -> int:
    """LoRA parameters (A and B per target module and layer; the shapes of q/k/v/o or MLP)."""
    dims = {"q_proj": 2 * m.hidden, "o_proj": 2 * m.hidden, "k_proj": m.hidden + m.hidden // 4,
            "v_proj": m.hidden + m.hidden // 4, "gate_proj": m.hidden + m.intermediate,
            "up_proj": m.hidden + m.intermediate, "down_proj": m.hidden + m.intermediate}
    return sum(hp.lora_r * dims.get(t, 2 * m.hidden) for t in hp.target_modules) * m.layers


def estimate_bytes(m: ModelInfo, hp: Hyperparameters, dev: DeviceInfo, four_bit: bool,
                   checkpointing: bool, forward_tokens: int) -> dict[str, int]:
    """Peak training memory, by parts. Calibrated on the H200 (1.04B, 4,096 packed tokens):
    16-bit 2.60 GiB with checkpointing, 7.04 GiB without; activations per token and layer
    ~2 x (5h + 4i) bytes in 16-bit, of which ~2h survive under checkpointing."""
    width = 2 if dev.cuda else 4  # 16-bit on a GPU, fp32 on CPU
    if four_bit:
        weights = int((m.params - m.embed_params) * 0.5625 + m.embed_params * 2)
    else:
        weights = m.params * width
    lora = lora_params(m, hp) * 16  # fp32 weight + grad + two Adam moments
    full_layer = width * (5 * m.hidden + 4 * m.intermediate) * forward_tokens
    if checkpointing:
        acts = width * m.hidden * forward_tokens * m.layers + full_layer
    else:
        acts = full_layer * m.layers
    # TRL's fused LM-head loss works in chunks on a GPU; on CPU the full fp32 logits live
    logits = (forward_tokens * m.vocab * 12) if not dev.cuda else (forward_tokens * 4 * 4096)
    runtime = RUNTIME_BYTES if dev.cuda else 0
    peak = weights + lora + acts + logits
    return {"weights": weights, "lora_and_optimizer": lora, "activations": acts,
            "logits": logits, "peak_allocated": peak, "runtime": runtime, "total": peak + runtime}


def fits(est: dict[str, int], dev: DeviceInfo) -> bool:
    return est["total"] <= MARGIN * dev.free_bytes


# ------------------------------------------------------------------------------ choices
def torch_threads(dev: DeviceInfo, configured: int | None = None, processes: int = 1) -> tuple[int, str]:
    """CPU threads: the configured number, else one per core that is not busy already. On a
    shared CPU a second OpenMP thread that gets descheduled stalls the other at every barrier
    (measured: 8 tok/s with 2 threads against 44-62 with 1, docs/demo.md)."""
    if configured:
        return configured, f"TRAINER_TORCH_THREADS={configured}"
    free = (dev.cores - dev.load_1m) / max(1, processes)
    n = max(1, min(dev.cores // max(1, processes) or 1, int(free + 0.5)))
    return n, (f"{dev.cores} cores with load {dev.load_1m:.1f}"
               + (f" shared by {processes} processes" if processes > 1 else "")
               + f": {n} thread(s) (a thread on a busy core stalls its partners at every barrier)")


def lr_for(m: ModelInfo) -> tuple[float, str]:
    if m.params < 300e6:
        return 2e-3, (f"{m.billions:.2f}B parameters: small models need a higher rate "
                      "(measured on SmolLM2-135M: 2e-3 learns the labels, 2e-4 does not in the same steps)")
    if m.params < 1e9:
        return 1e-3, f"{m.billions:.2f}B parameters: between the small-model rate and the article's"
    return 2e-4, f"{m.billions:.2f}B parameters: the article's rate"


def resolve(given: Hyperparameters, dev: DeviceInfo, m: ModelInfo, backend: str,
            lengths: list[int] | None = None, configured_threads: int | None = None,
            processes: int = 1) -> Plan:
    """Fill in what the user left unset (``given.model_fields_set`` says what they set)."""
    explicit = set(given.model_fields_set)
    hp = given.model_copy()
    plan = Plan(hp)

    def default(name: str, value: Any, why: str) -> None:
        if name in explicit:
            return
        setattr(plan.hp, name, value)
        plan.choose(name, value, why)

    if not dev.cuda:
        plan.threads, why = torch_threads(dev, configured_threads, processes)
        plan.choose("torch_threads", plan.threads, why)
    lr, why = lr_for(m)
    default("learning_rate", lr, why)
    if dev.cuda:
        _gpu_layout(plan, default, explicit, dev, m, backend, lengths)
    else:
        default("num_train_epochs", 2, "CPU: 2 epochs (measured on the demo: 1 epoch learns the "
                "JSON shape but not the labels; early stopping guards the rest)")
        default("load_in_4bit", False, "CPU: no 4-bit kernels; the base trains in fp32")
        default("gradient_checkpointing", False, "CPU: memory is not the limit, recomputation is pure cost")
        default("packing", False, "CPU: small datasets need optimizer steps (8 rows each) more than "
                "packed throughput; rows are grouped by length to keep padding low")
        default("group_by_length", True, "CPU: batches of similar lengths waste less compute on padding")
        tokens = plan.hp.per_device_train_batch_size * min(plan.hp.max_seq_length, _p90(lengths))
        plan.memory = _memory(m, plan.hp, dev, False, False, tokens)
    return plan


def _gpu_layout(plan: Plan, default: Any, explicit: set[str], dev: DeviceInfo, m: ModelInfo,
                backend: str, lengths: list[int] | None) -> None:
    hp = plan.hp
    default("packing", True, "GPU: packed rows (each isolated from the others, checked at start) "
            "keep the GPU busy; padding and tiny batches waste most of it (measured 1.9x)")
    seq = hp.max_seq_length
    if hp.packing and "per_device_train_batch_size" not in explicit:
        default("per_device_train_batch_size", *_packs_per_forward(hp, explicit, seq, lengths))
    forward = hp.per_device_train_batch_size * (seq if hp.packing else min(seq, _p90(lengths)))
    four = bool(hp.load_in_4bit) if "load_in_4bit" in explicit else None
    ckpt = hp.gradient_checkpointing if "gradient_checkpointing" in explicit else None
    options = [(f, c) for f in ([four] if four is not None else [False, True])
               for c in ([ckpt] if ckpt is not None else [False, True])]
    chosen = next(((f, c) for f, c in options
                   if fits(estimate_bytes(m, hp, dev, f, c, forward), dev)), options[-1])
    f, c = chosen
    free = dev.free_bytes / GIB
    need16 = estimate_bytes(m, hp, dev, False, bool(c), forward)["total"] / GIB
    default("load_in_4bit", f, (f"16-bit LoRA: model, optimizer state and activations need "
            f"~{need16:.1f} GiB of {free:.0f} GiB free") if not f else
            (f"4-bit: 16-bit needs ~{need16:.1f} GiB, more than {MARGIN:.0%} of the "
             f"{free:.1f} GiB free"))
    need = estimate_bytes(m, hp, dev, f, False, forward)["total"] / GIB
    default("gradient_checkpointing", c, (f"off: activations fit (~{need:.1f} GiB of "
            f"{free:.0f} GiB free); recomputing them costs ~1.8x") if not c else
            f"on: without it ~{need:.1f} GiB would not fit in {free:.1f} GiB free")
    if hp.packing and "gradient_accumulation_steps" not in explicit:
        per_pack = max(1.0, seq / max(1.0, _mean(lengths) or seq))
        acc = max(1, round(ROWS_PER_STEP / (hp.per_device_train_batch_size * per_pack)))
        default("gradient_accumulation_steps", acc,
                f"an optimizer step sees ~{acc * hp.per_device_train_batch_size * per_pack:.0f} "
                f"rows (packs of ~{per_pack:.1f} rows; the article's step is {ROWS_PER_STEP} rows)")
    _gpu_schedule(plan, default, m, lengths)
    plan.memory = _memory(m, hp, dev, bool(hp.load_in_4bit), bool(hp.gradient_checkpointing), forward)


def _packs_per_forward(hp: Hyperparameters, explicit: set[str], seq: int,
                       lengths: list[int] | None) -> tuple[int, str]:
    """Packs of ``seq`` tokens per forward pass: up to TARGET_FORWARD_TOKENS (a bigger forward
    amortises the per-step overhead: measured on the H200, trainer_gpu_varlen.json), fewer when a
    small dataset would then get fewer than MIN_STEPS optimizer steps (the demo's 1,800 rows: 4
    packs, ~60 steps; its task and forgetting numbers were measured at that step count)."""
    most = max(1, TARGET_FORWARD_TOKENS // seq)
    if (hp.max_steps > 0 and "max_steps" in explicit) or not lengths:
        return most, (f"GPU + packing: {most * seq} tokens per forward pass ({most} packs of {seq})"
                      + (f"; the step count is fixed ({hp.max_steps})" if hp.max_steps > 0 else ""))
    epochs = hp.num_train_epochs if "num_train_epochs" in explicit else GPU_EPOCHS
    run_tokens = sum(min(n, seq) for n in lengths) * epochs
    packs = max(1, min(most, int(run_tokens // (MIN_STEPS * seq))))
    return packs, (f"GPU + packing: {packs * seq} tokens per forward pass ({packs} packs of {seq}): "
                   f"the most up to {TARGET_FORWARD_TOKENS} that leaves >= {MIN_STEPS} optimizer steps "
                   f"for {len(lengths)} rows x {epochs:g} epochs")


# Epochs on a GPU, measured on the H200 (bench/results/demo_gpu.json: SmolLM2-135M, 1,525 rows
# incl. 400 replay rows, packed steps of ~75 rows): 3 epochs at 2e-3 -> task 0.998, general suite
# -0.032; 2 epochs at 1e-3 -> task 0.853, general suite -0.107. Fewer, gentler steps learned less
# *and* moved the base more (a half-learned format leaks into general answers), so 3 stays.
def _gpu_schedule(plan: Plan, default: Any, m: ModelInfo, lengths: list[int] | None) -> None:
    rows = len(lengths or [])
    default("num_train_epochs", GPU_EPOCHS, f"GPU, {rows} rows: {GPU_EPOCHS} epochs (measured on the H200 with the "
            "demo's 1,525 rows: 2 epochs at half the rate learned the task less, 0.853 vs 0.998, "
            "and kept less of the base's general answers)")


def _memory(m: ModelInfo, hp: Hyperparameters, dev: DeviceInfo, four: bool, ckpt: bool,
            forward: int) -> dict[str, Any]:
    est = estimate_bytes(m, hp, dev, four, ckpt, forward)
    return {"device": asdict(dev), "forward_tokens": forward, "estimate_bytes": est,
            "fits": fits(est, dev), "params": m.params}


def _mean(lengths: list[int] | None) -> float:
    return sum(lengths) / len(lengths) if lengths else 0.0


def _p90(lengths: list[int] | None) -> int:
    if not lengths:
        return 512
    s = sorted(lengths)
    return int(s[min(len(s) - 1, math.ceil(0.9 * len(s)) - 1)])

"""The "build trainer" and "train" steps of a job (:mod:`.pipeline` runs them in order).

Rows come from the dataset service's ``datasets/<id>/hf`` (``messages`` + ``line``) and become a
conversational prompt/completion dataset (prompt = all messages but the last, completion = the
last assistant message), so TRL's ``completion_only_loss`` trains on the response tokens only and
the base model's chat template renders every row. Checkpoints go to ``jobs/<id>/checkpoints``
each epoch (or every N steps, :mod:`.checkpoints`); a restarted job resumes from the last one;
the best checkpoint by eval loss is what gets exported.

Imports torch, transformers and TRL: a job that trains with Unsloth imports it first (it patches
them), which :mod:`.run_job` does before importing this module.
"""

from __future__ import annotations

import gc
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
import trl
from trl import SFTConfig
from trl.trainer import utils as trl_utils

from . import defaults
from .backends import multi_gpu_backend
from .events import EventWriter
from .failures import JobError
from .hparams import Hyperparameters
from .packing import isolation_probe

__all__ = ["EventCallback", "JobError", "build_trainer", "ddp_options", "ensure_isolated_packing", "free_memory",
           "last_checkpoint", "make_callback", "make_trainer_class", "multi_gpu_backend",
           "plan_job", "sft_config"]


# ------------------------------------------------------------------------------- planning
def plan_job(given: Hyperparameters, base_model: str, backend_name: str, lengths: list[int],
             local_rank: int, ev: EventWriter, world: int = 1) -> Hyperparameters:
    """Fill in the hyperparameters the user left unset for this device, model and data
    (:mod:`.defaults`), set the CPU threads, and record every choice with its reason."""
    dev = defaults.probe_device(local_rank)
    threads_env = os.environ.get("TRAINER_TORCH_THREADS")
    plan = defaults.resolve(given, dev, defaults.load_model_info(base_model), backend_name,
                            lengths, int(threads_env) if threads_env else None, world)
    if plan.threads:
        torch.set_num_threads(plan.threads)
    ev.emit("plan", message="; ".join(f"{c['setting']}={c['value']}: {c['why']}"
                                      for c in plan.reasons) or "every setting given explicitly",
            **plan.as_dict())
    return plan.hp


def ensure_isolated_packing(trainer: Any, ev: EventWriter) -> bool:
    """Run the packing probe (:mod:`.packing`) on the built trainer; False when rows leak."""
    dtype = str(next(trainer.model.parameters()).dtype).replace("torch.", "")
    res = isolation_probe(trainer.model, trainer.data_collator, trainer.train_dataset,
                          "float32" if dtype == "float32" else "bfloat16")
    ev.emit("packing_check", **res)
    if res["passed"] is False:
        ev.warning("packing_disabled", f"{res['detail']}: training without packing", **res)
        return False
    return True


# ----------------------------------------------------------------------------- callback
def peak_memory() -> dict[str, int]:
    out = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if torch.cuda.is_available():
        out["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


class EventCallback(TrainerCallback):
    """Loss, eval loss, lr, epoch, step/total, tokens/s, ETA, peak memory -> events; after
    each checkpoint save, ``on_saved`` (rank 0: publishes it to an object store)."""

    def __init__(self, ev: EventWriter, ckpt_key: str,
                 on_saved: Callable[[], None] | None = None) -> None:
        self.ev, self.ckpt_key, self.on_saved = ev, ckpt_key, on_saved
        self.t_last = time.monotonic()
        self.step_last = 0
        self.tokens_last: float | None = None
        self.count_tokens: Any = None  # set to the trainer's own counter once it exists
        self.step_time: float | None = None
        self.tokens_per_s: float | None = None
        self.last_train_loss: float | None = None
        self.prev: tuple[float, float] | None = None  # (train loss, eval loss) at last eval

    def on_train_begin(self, args, state, control, **kw):
        self.t_last, self.step_last = time.monotonic(), state.global_step
        self.ev.emit("train_begin", step=state.global_step, total_steps=state.max_steps,
                     epochs=args.num_train_epochs)

    def on_log(self, args, state, control, logs=None, **kw):
        logs = dict(logs or {})
        now = time.monotonic()
        if "loss" in logs:
            steps = state.global_step - self.step_last
            if steps > 0:
                self.step_time = (now - self.t_last) / steps
            tokens = self.count_tokens() if self.count_tokens else logs.get("num_tokens")
            if tokens is not None and self.tokens_last is not None and now > self.t_last:
                self.tokens_per_s = (tokens - self.tokens_last) / (now - self.t_last)
            self.tokens_last = tokens
            self.t_last, self.step_last = now, state.global_step
            self.last_train_loss = float(logs["loss"])
            eta = (state.max_steps - state.global_step) * self.step_time if self.step_time else None
            self.ev.emit("metrics", step=state.global_step, total_steps=state.max_steps,
                         epoch=state.epoch, loss=logs["loss"],
                         learning_rate=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"),
                         tokens_per_s=self.tokens_per_s, step_time_s=self.step_time, eta_s=eta,
                         num_tokens=tokens, **peak_memory())
        if "eval_loss" in logs:
            eval_loss = float(logs["eval_loss"])
            self.ev.emit("eval", step=state.global_step, total_steps=state.max_steps,
                         epoch=state.epoch, eval_loss=eval_loss,
                         train_loss=self.last_train_loss)
            if self.prev and self.last_train_loss is not None:
                p_train, p_eval = self.prev
                if eval_loss > p_eval and self.last_train_loss < p_train:
                    self.ev.warning("overfitting", f"eval loss rose {p_eval:.4f} -> "
                                    f"{eval_loss:.4f} while train loss fell {p_train:.4f} -> "
                                    f"{self.last_train_loss:.4f}: the model is overfitting",
                                    step=state.global_step, epoch=state.epoch)
            if self.last_train_loss is not None:
                self.prev = (self.last_train_loss, eval_loss)

    def on_save(self, args, state, control, **kw):
        name = f"checkpoint-{state.global_step}"
        if self.on_saved is not None and state.is_world_process_zero:
            self.on_saved()
        self.ev.emit("checkpoint", step=state.global_step, epoch=state.epoch,
                     key=f"{self.ckpt_key}/{name}", name=name,
                     eval_loss=last_eval(state.log_history), train_loss=self.last_train_loss)


def make_callback(ev: EventWriter, ckpt_key: str,
                  on_saved: Callable[[], None] | None = None) -> EventCallback:
    return EventCallback(ev, ckpt_key, on_saved)


def last_eval(history: list[dict[str, Any]]) -> float | None:
    for entry in reversed(history):
        if "eval_loss" in entry:
            return float(entry["eval_loss"])
    return None


# ----------------------------------------------------------------------------- training
def fused_loss_available(model: Any) -> bool:
    """TRL 1.15's fused LM-head loss needs its Triton kernel and a GPU tensor."""
    device = next(model.parameters()).device.type
    return getattr(trl_utils, "_ChunkedLogProbFunction", None) is not None and device in ("cuda", "xpu")


def make_trainer_class():
    """SFTTrainer that falls back to the model's own loss where TRL's Triton kernel cannot run.

    TRL 1.15 always computes the loss through a Triton kernel (GPU only). On CPU the loss is the
    model's causal-LM loss on the same collated batch: TRL's collator already set the prompt
    positions of ``labels`` to -100 (``completion_only_loss``), so only response tokens count.

    The class is made at call time, from the ``SFTTrainer`` TRL exports then: Unsloth replaces
    it when imported, and a job that trains with Unsloth imports it before this module is used.
    """
    def out_device(out: Any) -> Any:
        loss = out[0] if isinstance(out, tuple) else out
        return loss.device

    class TuneloopSFTTrainer(trl.SFTTrainer):
        """Counts the real (non-padding) tokens of every training batch itself: TRL counts them
        only in its own loss path, and Unsloth's trainer not at all (tokens/s was null)."""

        tokens_seen = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            if mode == "train":
                if "attention_mask" in inputs:
                    n = inputs["attention_mask"].sum()
                else:  # padding-free / packed batches: one row, no padding
                    n = torch.tensor(inputs["input_ids"].numel())
            if fused_loss_available(model):
                out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            else:
                inputs["use_cache"] = False
                out = Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
            if mode == "train":
                # every rank's tokens (DDP)
                n = self.accelerator.gather(n.detach().reshape(1).to(out_device(out))).sum()
                self.tokens_seen += int(n.item())
                if hasattr(self, "_metrics"):
                    self._metrics[mode]["num_tokens"] = [self.tokens_seen]
            return out

    return TuneloopSFTTrainer


def ddp_options(world_size: int, cuda: bool) -> dict[str, Any]:
    """TrainingArguments for a torchrun world: NCCL on GPUs, gloo on CPU; LoRA uses every
    trainable parameter, so DDP need not search for unused ones (and must not, with gradient
    checkpointing)."""
    if world_size <= 1:
        return {}
    if cuda:
        return {"ddp_backend": "nccl", "ddp_find_unused_parameters": False}
    # on CPU, accelerate only sets up a multi-process world when told it is a CPU run: without
    # use_cpu the gloo group exists but the model is never wrapped in DDP (no gradient sync)
    return {"ddp_backend": "gloo", "use_cpu": True, "ddp_find_unused_parameters": False}


def sft_config(hp: Hyperparameters, out_dir: Path, precision: dict[str, bool], n_train: int,
               world_size: int = 1) -> SFTConfig:
    strategy = hp.eval_strategy
    return SFTConfig(
        **ddp_options(world_size, torch.cuda.is_available()),
        output_dir=str(out_dir),
        per_device_train_batch_size=hp.per_device_train_batch_size,
        per_device_eval_batch_size=hp.per_device_train_batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        warmup_steps=hp.warmup_steps,
        num_train_epochs=hp.num_train_epochs,
        max_steps=hp.max_steps,
        learning_rate=hp.learning_rate,
        logging_steps=hp.logging_steps,
        eval_strategy=strategy,
        save_strategy=strategy,
        eval_steps=hp.eval_steps if strategy == "steps" else None,
        save_steps=hp.eval_steps if strategy == "steps" else None,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        save_total_limit=max(2, hp.early_stopping_patience + 1),
        restore_callback_states_from_checkpoint=True,
        completion_only_loss=True,
        max_length=hp.max_seq_length,
        packing=hp.packing,
        train_sampling_strategy="group_by_length" if hp.group_by_length else "random",
        seed=hp.seed,
        report_to=[],
        dataloader_num_workers=0,
        disable_tqdm=True,
        bf16=precision.get("bf16", False),
        fp16=precision.get("fp16", False),
    )


def last_checkpoint(ckpt_dir: Path) -> str | None:
    if not ckpt_dir.is_dir():
        return None
    return get_last_checkpoint(str(ckpt_dir))


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build_trainer(model: Any, tokenizer: Any, hp: Hyperparameters, backend: Any, train: Any,
                  eval_: Any, ckpt_dir: Path, world: int, callbacks: list[Any]) -> Any:
    trainer = make_trainer_class()(model=model, args=sft_config(hp, ckpt_dir, backend.precision(),
                                                                len(train), world),
                                   train_dataset=train, eval_dataset=eval_,
                                   processing_class=tokenizer, callbacks=callbacks)
    callbacks[0].count_tokens = lambda: trainer.tokens_seen
    return trainer


def last_train_loss(history: list[dict[str, Any]]) -> float | None:
    for entry in reversed(history):
        if "loss" in entry:
            return float(entry["loss"])
    return None


def first_train_loss(history: list[dict[str, Any]]) -> float | None:
    for entry in history:
        if "loss" in entry:
            return float(entry["loss"])
    return None


def logged_tokens(history: list[dict[str, Any]]) -> float | None:
    for entry in reversed(history):
        if "num_tokens" in entry:
            return float(entry["num_tokens"])
    return None


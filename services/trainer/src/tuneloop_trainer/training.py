"""The training pipeline one job process runs: data -> LoRA SFT -> adapter -> merged 16-bit -> checks.

Rows come from the dataset service's ``datasets/<id>/hf`` (``messages`` + ``line``) and become a
conversational prompt/completion dataset (prompt = all messages but the last, completion = the
last assistant message), so TRL's ``completion_only_loss`` trains on the response tokens only and
the base model's chat template renders every row. Checkpoints go to ``jobs/<id>/checkpoints``
each epoch (or every N steps); a restarted job resumes from the last one; the best checkpoint by
eval loss is what gets exported.
"""

from __future__ import annotations

import gc
import json
import math
import resource
import time
from pathlib import Path
from typing import Any

from tuneloop.storage import ArtifactStore

from .data import data_warnings, length_report, load_splits, row_lengths
from .events import EventWriter
from .failures import JobError
from .export.publish import base_revision, publish, push_to_hub
from .hparams import ExportOptions, Hyperparameters


# ------------------------------------------------------------------------------- planning
def plan_job(given: Hyperparameters, base_model: str, backend_name: str, lengths: list[int],
             local_rank: int, ev: EventWriter, world: int = 1) -> Hyperparameters:
    """Fill in the hyperparameters the user left unset for this device, model and data
    (:mod:`.defaults`), set the CPU threads, and record every choice with its reason."""
    import os

    from . import defaults

    dev = defaults.probe_device(local_rank)
    threads_env = os.environ.get("TRAINER_TORCH_THREADS")
    plan = defaults.resolve(given, dev, defaults.load_model_info(base_model), backend_name,
                            lengths, int(threads_env) if threads_env else None, world)
    if plan.threads:
        import torch

        torch.set_num_threads(plan.threads)
    ev.emit("plan", message="; ".join(f"{c['setting']}={c['value']}: {c['why']}"
                                      for c in plan.reasons) or "every setting given explicitly",
            **plan.as_dict())
    return plan.hp


def ensure_isolated_packing(trainer: Any, ev: EventWriter) -> bool:
    """Run the packing probe (:mod:`.packing`) on the built trainer; False when rows leak."""
    from .packing import isolation_probe

    dtype = str(next(trainer.model.parameters()).dtype).replace("torch.", "")
    res = isolation_probe(trainer.model, trainer.data_collator, trainer.train_dataset,
                          "float32" if dtype == "float32" else "bfloat16")
    ev.emit("packing_check", **res)
    if res["passed"] is False:
        ev.warning("packing_disabled", f"{res['detail']}: training without packing", **res)
        return False
    return True


# ----------------------------------------------------------------------------- callback
def _peak_memory() -> dict[str, int]:
    out = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    try:
        import torch

        if torch.cuda.is_available():
            out["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated())
    except Exception:  # pragma: no cover
        pass
    return out


def make_callback(ev: EventWriter, ckpt_key: str):
    from transformers import TrainerCallback

    class EventCallback(TrainerCallback):
        """Loss, eval loss, lr, epoch, step/total, tokens/s, ETA, peak memory -> events."""

        def __init__(self) -> None:
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
            ev.emit("train_begin", step=state.global_step, total_steps=state.max_steps,
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
                ev.emit("metrics", step=state.global_step, total_steps=state.max_steps,
                        epoch=state.epoch, loss=logs["loss"], learning_rate=logs.get("learning_rate"),
                        grad_norm=logs.get("grad_norm"), tokens_per_s=self.tokens_per_s,
                        step_time_s=self.step_time, eta_s=eta, num_tokens=tokens,
                        **_peak_memory())
            if "eval_loss" in logs:
                eval_loss = float(logs["eval_loss"])
                ev.emit("eval", step=state.global_step, total_steps=state.max_steps,
                        epoch=state.epoch, eval_loss=eval_loss, train_loss=self.last_train_loss)
                if self.prev and self.last_train_loss is not None:
                    p_train, p_eval = self.prev
                    if eval_loss > p_eval and self.last_train_loss < p_train:
                        ev.warning("overfitting", f"eval loss rose {p_eval:.4f} -> {eval_loss:.4f} "
                                   f"while train loss fell {p_train:.4f} -> "
                                   f"{self.last_train_loss:.4f}: the model is overfitting",
                                   step=state.global_step, epoch=state.epoch)
                if self.last_train_loss is not None:
                    self.prev = (self.last_train_loss, eval_loss)

        def on_save(self, args, state, control, **kw):
            name = f"checkpoint-{state.global_step}"
            ev.emit("checkpoint", step=state.global_step, epoch=state.epoch,
                    key=f"{ckpt_key}/{name}", name=name,
                    eval_loss=_last_eval(state.log_history),
                    train_loss=self.last_train_loss)

    return EventCallback()


def _last_eval(history: list[dict[str, Any]]) -> float | None:
    for entry in reversed(history):
        if "eval_loss" in entry:
            return float(entry["eval_loss"])
    return None


# ----------------------------------------------------------------------------- training
def fused_loss_available(model: Any) -> bool:
    """TRL 1.15's fused LM-head loss needs its Triton kernel and a GPU tensor."""
    from trl.trainer import utils as trl_utils

    device = next(model.parameters()).device.type
    return getattr(trl_utils, "_ChunkedLogProbFunction", None) is not None and device in ("cuda", "xpu")


def make_trainer_class():
    """SFTTrainer that falls back to the model's own loss where TRL's Triton kernel cannot run.

    TRL 1.15 always computes the loss through a Triton kernel (GPU only). On CPU the loss is the
    model's causal-LM loss on the same collated batch: TRL's collator already set the prompt
    positions of ``labels`` to -100 (``completion_only_loss``), so only response tokens count.
    """
    import torch
    from transformers import Trainer
    from trl import SFTTrainer

    def out_device(out: Any) -> Any:
        loss = out[0] if isinstance(out, tuple) else out
        return loss.device

    class TuneloopSFTTrainer(SFTTrainer):
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
               world_size: int = 1) -> Any:
    import torch
    from trl import SFTConfig

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
    from transformers.trainer_utils import get_last_checkpoint

    if not ckpt_dir.is_dir():
        return None
    return get_last_checkpoint(str(ckpt_dir))


def free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover
        pass


def multi_gpu_backend(name: str, world_size: int) -> str:
    """The backend of a job over ``world_size`` processes: ``auto`` means ``peft`` there (the
    backend that trains under DDP); ``unsloth`` is refused (single GPU only, docs/trainer.md)."""
    if world_size <= 1:
        return name
    if name == "unsloth":
        raise JobError("multi_gpu_unsupported", "backend 'unsloth' trains on one GPU only "
                       "(use 'peft' or 'auto' for gpus > 1)")
    return "peft"


def build_trainer(model: Any, tokenizer: Any, hp: Hyperparameters, backend: Any, train: Any,
                  eval_: Any, ckpt_dir: Path, world: int, callbacks: list[Any]) -> Any:
    trainer = make_trainer_class()(model=model, args=sft_config(hp, ckpt_dir, backend.precision(),
                                                                len(train), world),
                                   train_dataset=train, eval_dataset=eval_,
                                   processing_class=tokenizer, callbacks=callbacks)
    callbacks[0].count_tokens = lambda: trainer.tokens_seen
    return trainer


def run(spec: dict[str, Any], store: ArtifactStore, ev: EventWriter, workdir: Path) -> dict[str, Any]:
    """Run one job to its result record (written by the caller to ``jobs/<id>/result.json``)."""
    from .backends import get_backend
    from .launch import dist_info

    job_id, mv_id = spec["job_id"], spec["model_id"]
    rank, local_rank, world = dist_info()
    given = Hyperparameters(**spec.get("hyperparameters", {}))
    ex = ExportOptions(**spec.get("export", {}))
    backend = get_backend(multi_gpu_backend(spec.get("backend", "auto"), world))
    import torch
    from transformers import AutoTokenizer, EarlyStoppingCallback

    if torch.cuda.is_available() and world > 1:
        torch.cuda.set_device(local_rank)
    train, eval_ = load_splits(store, spec["dataset_key"], workdir)
    lengths = row_lengths(AutoTokenizer.from_pretrained(spec["base_model"]), train)
    hp = plan_job(given, spec["base_model"], backend.name, lengths, local_rank, ev, world)
    device = torch.cuda.get_device_name(local_rank) if torch.cuda.is_available() else "cpu"
    ev.emit("info", message=f"backend {backend.name} on {device}"
            + (f" x {world} processes (DDP)" if world > 1 else ""), backend=backend.name,
            device=device, load_in_4bit=backend.uses_4bit(hp), world_size=world)
    data_warnings(ev, len(train), hp)
    model, tokenizer = backend.load(spec["base_model"], hp)
    report = length_report(lengths, hp.max_seq_length)
    if report["truncated"]:
        ev.warning("rows_truncated", f"{report['truncated']} of {len(train)} rows are longer than "
                   f"max_seq_length={hp.max_seq_length} and are truncated", **report)

    ckpt_key = f"jobs/{job_id}/checkpoints"
    ckpt_dir = store.local_path(ckpt_key)
    callbacks = [make_callback(ev, ckpt_key)]
    if hp.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(hp.early_stopping_patience, hp.early_stopping_threshold))
    trainer = build_trainer(model, tokenizer, hp, backend, train, eval_, ckpt_dir, world, callbacks)
    if hp.packing and not ensure_isolated_packing(trainer, ev):
        hp = hp.model_copy(update={"packing": False,
                                   "per_device_train_batch_size": given.per_device_train_batch_size,
                                   "gradient_accumulation_steps": given.gradient_accumulation_steps})
        del trainer
        trainer = build_trainer(model, tokenizer, hp, backend, train, eval_, ckpt_dir, world, callbacks)
    resume = last_checkpoint(ckpt_dir)
    if resume:
        ev.emit("resumed", checkpoint=Path(resume).name, key=f"{ckpt_key}/{Path(resume).name}")
    t0 = time.monotonic()
    result = trainer.train(resume_from_checkpoint=resume)
    train_s = time.monotonic() - t0
    if rank != 0:  # the other DDP ranks only train; rank 0 exports and reports
        return {"rank": rank}
    state = trainer.state
    best = state.best_model_checkpoint
    stopped_early = state.global_step < state.max_steps
    metrics = {
        "best_eval_loss": state.best_metric,
        "best_checkpoint": Path(best).name if best else None,
        "final_train_loss": _last_train_loss(state.log_history),
        "final_eval_loss": _last_eval(state.log_history),
        "first_train_loss": _first_train_loss(state.log_history),
        "train_runtime_s": round(train_s, 3),
        "global_step": state.global_step,
        "max_steps": state.max_steps,
        "epochs_completed": state.epoch,
        "stopped_early": stopped_early,
        "train_rows": len(train),
        "world_size": world,
        "parallel": type(trainer.model_wrapped).__name__ if world > 1 else None,
        "eval_rows": len(eval_),
        "num_tokens": trainer.tokens_seen or _num_tokens(state.log_history),
        "train_tokens_per_s": round(trainer.tokens_seen / train_s, 1) if train_s > 0 else None,
        "trainer_training_loss": getattr(result, "training_loss", None),
        "hyperparameters": hp.model_dump(),
        **_peak_memory(),
    }
    ev.emit("train_end", **metrics)
    if stopped_early:
        ev.emit("early_stopped", message=f"eval loss stopped improving: stopped at step "
                f"{state.global_step} of {state.max_steps}; best {metrics['best_checkpoint']} "
                f"(eval loss {state.best_metric}) is the result", step=state.global_step,
                best_checkpoint=metrics["best_checkpoint"], best_eval_loss=state.best_metric)

    # ---- adapter (the best checkpoint's weights are loaded by load_best_model_at_end) ----
    adapter_key, merged_key = f"models/{mv_id}/adapter", f"models/{mv_id}/merged"
    adapter_stage = store.staging_dir(adapter_key)
    trainer.model.save_pretrained(str(adapter_stage))
    tokenizer.save_pretrained(str(adapter_stage))
    model_for_merge = trainer.model
    del trainer
    free_memory()

    # ---- the trained model's own answers: the reference of every export check ----
    from .export import verify

    rows = eval_.select(range(min(ex.verify_prompts, len(eval_))))
    prompt_ids = verify.render_prompts(tokenizer, [row["prompt"] for row in rows])
    golds = [row["completion"][-1]["content"] for row in rows]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    reference = None
    if ex.verify or ex.gguf:
        backend.prepare_for_generation(model_for_merge)
        reference = verify.greedy_with_gaps(model_for_merge, prompt_ids, ex.verify_max_new_tokens,
                                            eos, pad)

    # ---- merged 16-bit ----
    t0 = time.monotonic()
    merged_stage = store.staging_dir(merged_key)
    backend.merge(model_for_merge, tokenizer, spec["base_model"], adapter_stage, merged_stage,
                  ex.merged_dtype)
    del model_for_merge, model
    free_memory()
    merge_s = time.monotonic() - t0
    ev.emit("export", kind="merged", message=f"merged 16-bit ({ex.merged_dtype}) written",
            seconds=round(merge_s, 3))

    checks: list[dict[str, Any]] = []
    if ex.verify:
        checks.append(verify.verify_merged(
            merged_stage, prompt_ids, reference, golds,
            lambda t: tokenizer.decode(t, skip_special_tokens=True), ex.verify_max_new_tokens,
            eos, pad, ex.verify_tie_tolerance, ex.verify_min_agreement, ex.verify_task_tolerance))
        ev.emit("export_check", **checks[-1])
        if not checks[-1]["passed"]:
            raise JobError("export_verification_failed",
                           f"merged model does not behave like the trained model: {checks[-1]['detail']}")

    # ---- publish (immutable, atomic; a resumed job that already published keeps it) ----
    publish(store, adapter_stage, adapter_key)
    publish(store, merged_stage, merged_key)
    artifacts: dict[str, Any] = {
        "adapter": {"key": adapter_key, "bytes": store.size(adapter_key)},
        "merged": {"key": merged_key, "bytes": store.size(merged_key), "dtype": ex.merged_dtype},
        "checkpoints": {"key": ckpt_key},
        "gguf": [],
    }
    if ex.gguf:
        from .export import gguf

        gguf_key = f"models/{mv_id}/gguf"
        gguf_stage = store.staging_dir(gguf_key)
        results = gguf.export_all(store.local_path(merged_key), gguf_stage, list(ex.gguf),
                                  [r["tokens"] for r in reference], prompt_ids, ex.verify_max_new_tokens, ex.gguf_min_match)
        for r in results:
            checks.append(r["check"])
            ev.emit("export_check", **r["check"])
            if "error" in r or not r["check"]["passed"]:
                ev.warning("gguf_export_failed", f"GGUF {r['quant']} export failed: "
                           f"{r['check']['detail']}", quant=r["quant"])
                artifacts["gguf"].append({"quant": r["quant"], "error": r["check"]["detail"]})
            else:
                artifacts["gguf"].append({"quant": r["quant"], "key": f"{gguf_key}/{r['file']}",
                                          "bytes": r["bytes"]})
        if any(p.is_file() for p in gguf_stage.iterdir()):
            publish(store, gguf_stage, gguf_key)
    if ex.push_to_hub:
        checks.append(push_to_hub(store.local_path(merged_key), ex.push_to_hub, ev))
    return {"model_id": mv_id, "job_id": job_id, "backend": backend.name, "metrics": metrics,
            "artifacts": artifacts, "export_checks": checks, "base_revision": base_revision(spec["base_model"]),
            "length_report": report, "merge_seconds": round(merge_s, 3)}


def _last_train_loss(history: list[dict[str, Any]]) -> float | None:
    for entry in reversed(history):
        if "loss" in entry:
            return float(entry["loss"])
    return None


def _first_train_loss(history: list[dict[str, Any]]) -> float | None:
    for entry in history:
        if "loss" in entry:
            return float(entry["loss"])
    return None


def _num_tokens(history: list[dict[str, Any]]) -> float | None:
    for entry in reversed(history):
        if "num_tokens" in entry:
            return float(entry["num_tokens"])
    return None


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v))

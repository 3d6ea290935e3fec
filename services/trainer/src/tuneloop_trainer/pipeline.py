"""One training job as four steps: prepare data -> build trainer -> train -> export.

``run`` is what a job process executes (:mod:`.run_job`); each step is a function of its own,
tested alone (``tests/test_pipeline.py``), and hands the next one a small record:

- :func:`prepare_data` -> :class:`Data`: the dataset version's splits as prompt/completion rows
  and their rendered lengths (downloaded from an object store into the work dir when needed).
- :func:`build` -> :class:`Built`: the plan (hyperparameters resolved for this device, model and
  data), the LoRA model, the ``SFTTrainer`` with its callbacks; packing dropped if the probe fails.
- :func:`train` -> :class:`Trained` (rank 0) or None (other DDP ranks): resumes from the last
  checkpoint the store holds, trains, reports the metrics.
- :func:`export`: adapter -> the trained model's own answers (the reference) -> merged 16-bit ->
  verified -> published -> GGUF -> Hub push; its parts are functions too.

Every input and output goes through the :class:`~tuneloop.storage.ArtifactStore` API, so the same
job runs on a local folder store and on an object store: work is staged in a local folder
(inside the store's filesystem when local, so publishing is a rename; the work dir otherwise)
and published with ``put_dir``. Keys come from :mod:`tuneloop.layout`.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, EarlyStoppingCallback

from tuneloop import layout
from tuneloop.storage import ArtifactStore

from .backends import get_backend, multi_gpu_backend
from .backends.base import Backend
from .checkpoints import Checkpoints
from .data import data_warnings, length_report, load_splits, row_lengths
from .events import EventWriter
from .export import gguf, verify
from .export.publish import base_revision, publish, push_to_hub
from .failures import JobError
from .hparams import ExportOptions, Hyperparameters
from .launch import dist_info
from .training import (build_trainer, ensure_isolated_packing, first_train_loss, free_memory,
                       last_eval, last_train_loss, logged_tokens, make_callback, peak_memory,
                       plan_job)

__all__ = ["Built", "Data", "Job", "JobError", "Reference", "Trained", "build", "dumps", "export",
           "prepare_data", "run", "train"]


@dataclass
class Job:
    """What every step needs: the spec, the store, the event channel, the work dir, the world."""

    spec: dict[str, Any]
    store: ArtifactStore
    ev: EventWriter
    workdir: Path
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def job_id(self) -> str:
        return str(self.spec["job_id"])

    @property
    def model_id(self) -> str:
        return str(self.spec["model_id"])

    @property
    def base_model(self) -> str:
        return str(self.spec["base_model"])


@dataclass
class Data:
    train: Any  # datasets.Dataset of conversational prompt/completion rows
    eval: Any
    lengths: list[int]  # rendered token length of every training row


@dataclass
class Built:
    trainer: Any
    model: Any
    tokenizer: Any
    hp: Hyperparameters
    backend: Backend
    checkpoints: Checkpoints
    length_report: dict[str, int] = field(default_factory=dict)


@dataclass
class Trained:
    model: Any  # the best checkpoint's weights (load_best_model_at_end)
    tokenizer: Any
    metrics: dict[str, Any]


@dataclass
class Reference:
    """The trained model's own greedy answers on held-out prompts: what every export check
    compares against (``tokens`` is None when no check asks for them)."""

    prompt_ids: list[list[int]]
    golds: list[str]
    tokens: list[dict[str, Any]] | None


# ----------------------------------------------------------------------------- 1. data
def prepare_data(job: Job) -> Data:
    """The dataset version's splits (store -> work dir when remote) and their rendered lengths."""
    train_rows, eval_rows = load_splits(job.store, job.spec["dataset_key"], job.workdir)
    lengths = row_lengths(AutoTokenizer.from_pretrained(job.base_model), train_rows)
    return Data(train_rows, eval_rows, lengths)


# -------------------------------------------------------------------- 2. build trainer
def build(job: Job, data: Data, backend: Backend) -> Built:
    """Plan the job, load the LoRA model, build the trainer (checkpoints in the job's folder)."""
    given = Hyperparameters(**job.spec.get("hyperparameters", {}))
    hp = plan_job(given, job.base_model, backend.name, data.lengths, job.local_rank, job.ev,
                  job.world)
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(job.local_rank) if cuda else "cpu"
    job.ev.emit("info", message=f"backend {backend.name} on {device}"
                + (f" x {job.world} processes (DDP)" if job.world > 1 else ""),
                backend=backend.name, device=device, load_in_4bit=backend.uses_4bit(hp),
                world_size=job.world)
    data_warnings(job.ev, len(data.train), hp)
    model, tokenizer = backend.load(job.base_model, hp)
    report = length_report(data.lengths, hp.max_seq_length)
    if report["truncated"]:
        job.ev.warning("rows_truncated", f"{report['truncated']} of {len(data.train)} rows are "
                       f"longer than max_seq_length={hp.max_seq_length} and are truncated",
                       **report)
    ckpts = Checkpoints(job.store, layout.job_checkpoints(job.job_id), job.workdir)
    callbacks: list[Any] = [make_callback(job.ev, ckpts.key, ckpts.sync)]
    if hp.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(hp.early_stopping_patience,
                                               hp.early_stopping_threshold))
    trainer = build_trainer(model, tokenizer, hp, backend, data.train, data.eval, ckpts.dir,
                            job.world, callbacks)
    if hp.packing and not ensure_isolated_packing(trainer, job.ev):
        hp = hp.model_copy(update={"packing": False,
                                   "per_device_train_batch_size": given.per_device_train_batch_size,
                                   "gradient_accumulation_steps": given.gradient_accumulation_steps})
        del trainer
        trainer = build_trainer(model, tokenizer, hp, backend, data.train, data.eval, ckpts.dir,
                                job.world, callbacks)
    return Built(trainer, model, tokenizer, hp, backend, ckpts, report)


# ---------------------------------------------------------------------------- 3. train
def train(job: Job, built: Built, data: Data) -> Trained | None:
    """Train (resuming from the last stored checkpoint); rank 0 gets the best model + metrics."""
    trainer = built.trainer
    resume = built.checkpoints.restore()
    if resume:
        name = Path(resume).name
        job.ev.emit("resumed", checkpoint=name, key=f"{built.checkpoints.key}/{name}")
    t0 = time.monotonic()
    result = trainer.train(resume_from_checkpoint=resume)
    train_s = time.monotonic() - t0
    if job.rank != 0:  # the other DDP ranks only train; rank 0 exports and reports
        return None
    metrics = train_metrics(trainer, result, train_s, data, built.hp, job.world)
    job.ev.emit("train_end", **metrics)
    state = trainer.state
    if metrics["stopped_early"]:
        job.ev.emit("early_stopped", message=f"eval loss stopped improving: stopped at step "
                    f"{state.global_step} of {state.max_steps}; best {metrics['best_checkpoint']} "
                    f"(eval loss {state.best_metric}) is the result", step=state.global_step,
                    best_checkpoint=metrics["best_checkpoint"], best_eval_loss=state.best_metric)
    return Trained(trainer.model, built.tokenizer, metrics)


def train_metrics(trainer: Any, result: Any, train_s: float, data: Data, hp: Hyperparameters,
                  world: int) -> dict[str, Any]:
    """The ``metrics`` of the job's result, from the trainer's state after training."""
    state = trainer.state
    best = state.best_model_checkpoint
    return {
        "best_eval_loss": state.best_metric,
        "best_checkpoint": Path(best).name if best else None,
        "final_train_loss": last_train_loss(state.log_history),
        "final_eval_loss": last_eval(state.log_history),
        "first_train_loss": first_train_loss(state.log_history),
        "train_runtime_s": round(train_s, 3),
        "global_step": state.global_step,
        "max_steps": state.max_steps,
        "epochs_completed": state.epoch,
        "stopped_early": state.global_step < state.max_steps,
        "train_rows": len(data.train),
        "world_size": world,
        "parallel": type(trainer.model_wrapped).__name__ if world > 1 else None,
        "eval_rows": len(data.eval),
        "num_tokens": trainer.tokens_seen or logged_tokens(state.log_history),
        "train_tokens_per_s": round(trainer.tokens_seen / train_s, 1) if train_s > 0 else None,
        "trainer_training_loss": getattr(result, "training_loss", None),
        "hyperparameters": hp.model_dump(),
        **peak_memory(),
    }


# --------------------------------------------------------------------------- 4. export
def save_adapter(store: ArtifactStore, model: Any, tokenizer: Any, key: str) -> Path:
    """The LoRA adapter (PEFT format) in a staging folder for ``key``."""
    stage = store.staging_dir(key)
    model.save_pretrained(str(stage))
    tokenizer.save_pretrained(str(stage))
    return stage


def reference_answers(backend: Backend, model: Any, tokenizer: Any, eval_rows: Any,
                      ex: ExportOptions) -> Reference:
    """Held-out prompts, their gold answers and (when a check needs them) the trained model's
    greedy answers, before the model is merged away."""
    rows = eval_rows.select(range(min(ex.verify_prompts, len(eval_rows))))
    prompt_ids = verify.render_prompts(tokenizer, [row["prompt"] for row in rows])
    golds = [row["completion"][-1]["content"] for row in rows]
    tokens = None
    if ex.verify or ex.gguf:
        backend.prepare_for_generation(model)
        tokens = verify.greedy_with_gaps(model, prompt_ids, ex.verify_max_new_tokens,
                                         tokenizer.eos_token_id, tokenizer.pad_token_id)
    return Reference(prompt_ids, golds, tokens)


def check_merged(merged: Path, ref: Reference, tokenizer: Any, ex: ExportOptions,
                 ev: EventWriter) -> dict[str, Any]:
    """The merged folder, loaded as served, must answer like the trained model (else the job
    fails: a wrong merge is never published)."""
    if ref.tokens is None:
        raise ValueError("the export check needs the trained model's answers (verify was off)")
    check = verify.verify_merged(
        merged, ref.prompt_ids, ref.tokens, ref.golds,
        lambda t: tokenizer.decode(t, skip_special_tokens=True), ex.verify_max_new_tokens,
        tokenizer.eos_token_id, tokenizer.pad_token_id, ex.verify_tie_tolerance,
        ex.verify_min_agreement, ex.verify_task_tolerance)
    ev.emit("export_check", **check)
    if not check["passed"]:
        raise JobError("export_verification_failed",
                       f"merged model does not behave like the trained model: {check['detail']}")
    return check


def export_gguf(job: Job, merged: Path, ref: Reference,
                ex: ExportOptions) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every asked-for GGUF quantisation of the merged model, each checked against the trained
    model's answers; the passing ones published. -> (checks, artifacts); failures are warnings."""
    key = layout.model_gguf(job.model_id)
    stage = job.store.staging_dir(key)
    results = gguf.export_all(merged, stage, list(ex.gguf), [r["tokens"] for r in ref.tokens or []],
                              ref.prompt_ids, ex.verify_max_new_tokens, ex.gguf_min_match)
    checks, artifacts = [], []
    for r in results:
        checks.append(r["check"])
        job.ev.emit("export_check", **r["check"])
        if "error" in r or not r["check"]["passed"]:
            job.ev.warning("gguf_export_failed", f"GGUF {r['quant']} export failed: "
                           f"{r['check']['detail']}", quant=r["quant"])
            artifacts.append({"quant": r["quant"], "error": r["check"]["detail"]})
        else:
            artifacts.append({"quant": r["quant"], "key": f"{key}/{r['file']}", "bytes": r["bytes"]})
    if any(p.is_file() for p in stage.iterdir()):
        publish(job.store, stage, key)
    else:  # nothing passed: no empty folder left behind in the store
        shutil.rmtree(stage, ignore_errors=True)
    return checks, artifacts


def export(job: Job, trained: Trained, data: Data, backend: Backend) -> dict[str, Any]:
    """Adapter -> reference answers -> merged 16-bit -> check -> publish -> GGUF -> Hub push;
    -> the job's result record (``jobs/<id>/result.json``)."""
    ex = ExportOptions(**job.spec.get("export", {}))
    store, tokenizer = job.store, trained.tokenizer
    adapter_key, merged_key = layout.model_adapter(job.model_id), layout.model_merged(job.model_id)
    adapter_stage = save_adapter(store, trained.model, tokenizer, adapter_key)
    model = trained.model
    trained.model = None
    free_memory()
    ref = reference_answers(backend, model, tokenizer, data.eval, ex)

    t0 = time.monotonic()
    merged_stage = store.staging_dir(merged_key)
    backend.merge(model, tokenizer, job.base_model, adapter_stage, merged_stage, ex.merged_dtype)
    del model
    free_memory()
    merge_s = time.monotonic() - t0
    job.ev.emit("export", kind="merged", message=f"merged 16-bit ({ex.merged_dtype}) written",
                seconds=round(merge_s, 3))
    checks = [check_merged(merged_stage, ref, tokenizer, ex, job.ev)] if ex.verify else []

    # publish: immutable, atomic; a resumed job that already published keeps what it published
    publish(store, adapter_stage, adapter_key)
    publish(store, merged_stage, merged_key)
    artifacts: dict[str, Any] = {
        "adapter": {"key": adapter_key, "bytes": store.size(adapter_key)},
        "merged": {"key": merged_key, "bytes": store.size(merged_key), "dtype": ex.merged_dtype},
        "checkpoints": {"key": layout.job_checkpoints(job.job_id)},
        "gguf": [],
    }
    if ex.gguf or ex.push_to_hub:  # both read the published folder (downloaded when remote)
        merged = store.get_dir(merged_key, job.workdir / "merged")
        if ex.gguf:
            gguf_checks, artifacts["gguf"] = export_gguf(job, merged, ref, ex)
            checks += gguf_checks
        if ex.push_to_hub:
            checks.append(push_to_hub(merged, ex.push_to_hub, job.ev))
    return {"model_id": job.model_id, "job_id": job.job_id, "backend": backend.name,
            "metrics": trained.metrics, "artifacts": artifacts, "export_checks": checks,
            "base_revision": base_revision(job.base_model), "merge_seconds": round(merge_s, 3)}


# ------------------------------------------------------------------------------- the job
def run(spec: dict[str, Any], store: ArtifactStore, ev: EventWriter, workdir: Path,
        backend: Backend | None = None) -> dict[str, Any]:
    """Run one job to its result record (written by the caller to ``jobs/<id>/result.json``);
    ``{"rank": r}`` on DDP ranks other than 0."""
    rank, local_rank, world = dist_info()
    job = Job(spec, store, ev, Path(workdir), rank, local_rank, world)
    backend = backend or get_backend(multi_gpu_backend(spec.get("backend", "auto"), world))
    if torch.cuda.is_available() and world > 1:
        torch.cuda.set_device(local_rank)
    data = prepare_data(job)
    built = build(job, data, backend)
    trained = train(job, built, data)
    if trained is None:
        return {"rank": rank}
    report = built.length_report
    del built  # the trainer (optimizer state, ...) is not needed for the export
    return {**export(job, trained, data, backend), "length_report": report}


def dumps(obj: Any) -> str:
    """The result record as JSON (NaN -> null; anything else unserialisable -> its str)."""
    return json.dumps(obj, default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v))

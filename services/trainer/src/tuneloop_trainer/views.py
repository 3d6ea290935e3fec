"""The API views of the trainer's rows (pure functions: a row in, a JSON-able dict out)."""

from __future__ import annotations

from typing import Any

from .db import File, Job, JobEvent


def job_view(j: Job) -> dict[str, Any]:
    p = j.progress or {}
    return {
        "id": j.id, "object": "training_job", "status": j.status, "dataset_id": j.dataset_id,
        "base_model": j.base_model, "backend": j.backend, "resolved_backend": p.get("backend"),
        "gpus": j.gpus,
        "hyperparameters": j.hyperparameters, "export": j.export,
        "resolved_hyperparameters": p.get("resolved_hyperparameters"),
        "model_id": j.model_id if j.registered else None,
        "progress": {k: p.get(k) for k in ("step", "total_steps", "epoch", "loss", "eval_loss",
                                           "learning_rate", "tokens_per_s", "eta_s",
                                           "step_time_s", "peak_gpu_bytes", "peak_rss_bytes")},
        "error": j.error, "attempts": j.attempts, "executor": j.executor, "suffix": j.suffix,
        "gate_alias": j.gate_alias, "callback_url": j.callback_url, "cancel_requested": j.cancel_requested,
        "created_at": j.created_at, "started_at": j.started_at, "finished_at": j.finished_at,
    }


def event_view(e: JobEvent) -> dict[str, Any]:
    return {"seq": e.seq, "type": e.type, "created_at": e.created_at, "data": e.data}


def file_view(f: File) -> dict[str, Any]:
    return {"id": f.id, "object": "file", "bytes": f.bytes, "created_at": f.created_at,
            "filename": f.filename, "purpose": f.purpose, "status": "processed",
            "status_details": None, "expires_at": None, "dataset_id": f.dataset_id}

"""Trainer domain logic: validation, the persistent queue, events, model versions, files.

Never imports FastAPI. Blocking work (DB, store, loading a tokenizer) runs in a thread
(:func:`tuneloop.offload.offload`): the async methods here offload it themselves, the sync ones are called
from the routes through one; the supervisor (``supervisor.py``) drives jobs through their states.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from tuneloop.clients.base import ServiceError
from tuneloop.clients.dataset import DatasetClient
from tuneloop import layout
from tuneloop.db import Database
from tuneloop.errors import Conflict, NotFound, ServiceUnavailable, TuneloopError, Unprocessable
from tuneloop.ids import is_valid_id, new_id, require_id
from tuneloop.storage import ArtifactStore
from tuneloop.offload import offload

from .db import File, Job, JobEvent, ModelVersion
from .hparams import ExportOptions, Hyperparameters
from .settings import TrainerSettings

log = logging.getLogger("tuneloop.trainer")

TERMINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("validating", "queued", "running")


def now() -> int:
    return int(time.time())


M = TypeVar("M", bound=BaseModel)


class TrainerService:
    def __init__(self, settings: TrainerSettings, db: Database, store: ArtifactStore,
                 datasets: DatasetClient) -> None:
        self.settings = settings
        self.db = db
        self.store = store
        self.datasets = datasets

    # ------------------------------------------------------------------ validation
    async def validate_dataset(self, dataset_id: str) -> dict[str, Any]:
        """The dataset version exists, passed validation and has both splits."""
        if not is_valid_id(dataset_id, "ds"):
            raise NotFound(f"dataset '{dataset_id[:80]}' not found", code="dataset_not_found",
                           param="dataset_id")
        try:
            ds = await self.datasets.get(dataset_id)
        except ServiceError as exc:
            if exc.status == 404:
                raise NotFound(f"dataset '{dataset_id}' not found", code="dataset_not_found",
                               param="dataset_id") from exc
            if exc.status >= 500:
                raise ServiceUnavailable(f"dataset service unavailable: {exc.message}",
                                         code="dataset_service_unavailable") from exc
            raise
        if ds.status != "ready":
            raise Unprocessable(f"dataset '{dataset_id}' is {ds.status!r}, not 'ready' "
                                "(it did not pass validation)", code="dataset_not_ready",
                                param="dataset_id")
        if not ds.counts.train or not ds.counts.eval:
            raise Unprocessable(f"dataset '{dataset_id}' needs rows in both train and eval splits "
                                f"(train={ds.counts.train}, eval={ds.counts.eval})",
                                code="dataset_split_empty", param="dataset_id")
        key = ds.artifacts.get("hf") or layout.dataset_hf(dataset_id)
        if not await offload(self.store.exists, key):
            raise Unprocessable(f"dataset '{dataset_id}' has no {key} in the artifact store shared "
                                "with the trainer", code="dataset_artifact_missing", param="dataset_id")
        return ds.to_dict() | {"hf_key": key}

    def validate_base_model(self, base_model: str, hp: Hyperparameters) -> dict[str, Any]:
        """Config + tokenizer load (offline), chat template present, sequence length fits."""
        from transformers import AutoConfig, AutoTokenizer

        local = Path(base_model)
        if base_model.startswith(("/", ".")) and not local.is_dir():
            raise Unprocessable(f"base model folder {base_model!r} does not exist",
                                code="base_model_not_found", param="base_model")
        only_local = not self.settings.allow_remote_models
        try:
            cfg = AutoConfig.from_pretrained(base_model, local_files_only=only_local)
            tok = AutoTokenizer.from_pretrained(base_model, local_files_only=only_local)
        except Exception as exc:  # any loader error means "not loadable" to the caller
            raise Unprocessable(f"base model {base_model!r} is not loadable (config + tokenizer): "
                                f"{type(exc).__name__}: {str(exc)[:300]}",
                                code="base_model_not_loadable", param="base_model") from exc
        archs = getattr(cfg, "architectures", None) or []
        if archs and not any(a.endswith(("ForCausalLM", "ForConditionalGeneration")) for a in archs):
            raise Unprocessable(f"base model {base_model!r} is not a causal LM ({archs})",
                                code="base_model_not_causal_lm", param="base_model")
        if not getattr(tok, "chat_template", None):
            raise Unprocessable(f"base model {base_model!r} has no chat template (rows are rendered "
                                "with it)", code="base_model_no_chat_template", param="base_model")
        text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        max_pos = getattr(text_cfg, "max_position_embeddings", None)
        if max_pos and hp.max_seq_length > max_pos:
            raise Unprocessable(f"max_seq_length {hp.max_seq_length} exceeds the model's "
                                f"max_position_embeddings {max_pos}", code="max_seq_length_too_long",
                                param="hyperparameters.max_seq_length")
        return {"max_position_embeddings": max_pos, "model_type": getattr(cfg, "model_type", None)}

    def validate_gpus(self, gpus: Any, backend: str) -> int:
        """``gpus`` is an int in 1..64; more than one needs a backend that trains under DDP
        (``peft``/``auto``; Unsloth's multi-GPU path is not supported, see docs/trainer.md) and,
        with a local GPU pool, that many GPUs in it."""
        if isinstance(gpus, bool) or not isinstance(gpus, int) or not 1 <= gpus <= 64:
            raise TuneloopError(f"gpus must be an integer from 1 to 64 (got {gpus!r})",
                                code="invalid_gpus", param="gpus", status=400)
        if gpus > 1 and backend == "unsloth":
            raise TuneloopError("backend 'unsloth' trains on one GPU only: its DDP path is not "
                                "officially supported yet (use backend 'peft' or 'auto' for "
                                "gpus > 1)", code="multi_gpu_unsupported", param="backend",
                                status=400)
        pool = self.settings.gpu_ids
        if self.settings.executor == "local" and pool and gpus > len(pool):
            raise Unprocessable(f"gpus={gpus} but this trainer's GPU pool has {len(pool)} "
                                f"({','.join(pool)})", code="not_enough_gpus", param="gpus")
        return gpus

    # ------------------------------------------------------------------ dry run
    async def estimate_job(self, *, dataset_id: str, base_model: str, backend: str,
                           hyperparameters: dict[str, Any] | Hyperparameters,
                           export: dict[str, Any] | ExportOptions, gpus: int = 1) -> dict[str, Any]:
        """What ``create_job`` would start, without starting it (:mod:`.estimate`)."""
        gpus = self.validate_gpus(gpus, backend)
        hp = _model(Hyperparameters, hyperparameters, "hyperparameters")
        _model(ExportOptions, export, "export")
        ds = await self.validate_dataset(dataset_id)
        await offload(self.validate_base_model, base_model, hp)
        out = await offload(self._estimate, ds, base_model, backend, hp, gpus)
        return {**out, "dataset_id": dataset_id, "base_model": base_model, "gpus": gpus}

    def _estimate(self, ds: dict[str, Any], base_model: str, backend: str, hp: Hyperparameters,
                  gpus: int) -> dict[str, Any]:
        import tempfile

        from transformers import AutoTokenizer

        from .estimate import estimate
        from .data import load_splits, row_lengths

        with tempfile.TemporaryDirectory(prefix="tuneloop-estimate-") as tmp:
            train, eval_ = load_splits(self.store, ds["hf_key"], Path(tmp))
            lengths = row_lengths(AutoTokenizer.from_pretrained(base_model), train)
        return estimate(base_model, backend, hp, lengths, len(eval_), gpus)

    # ------------------------------------------------------------------ create
    async def create_job(self, *, dataset_id: str, base_model: str, backend: str,
                         hyperparameters: dict[str, Any] | Hyperparameters,
                         export: dict[str, Any] | ExportOptions, callback_url: str | None,
                         suffix: str | None, source: str = "api", training_file: str | None = None,
                         validation_file: str | None = None, gpus: int = 1,
                         gate_alias: str | None = None) -> dict[str, Any]:
        gpus = self.validate_gpus(gpus, backend)
        hp = _model(Hyperparameters, hyperparameters, "hyperparameters")
        ex = _model(ExportOptions, export, "export")
        ds = await self.validate_dataset(dataset_id)
        await offload(self.validate_base_model, base_model, hp)
        job_id, mv_id = new_id("job"), new_id("mv")
        spec = {"job_id": job_id, "model_id": mv_id, "dataset_id": dataset_id,
                "dataset_key": ds["hf_key"], "base_model": base_model, "backend": backend,
                "gpus": gpus, "export": ex.model_dump(),
                # only what the user set: the job fills in the rest for its device (defaults.py)
                "hyperparameters": hp.model_dump(exclude_unset=True)}
        await offload(self.store.write_bytes, layout.job_spec(job_id),
                      json.dumps(spec, indent=1).encode())
        try:
            await self.datasets.lease(dataset_id, job_id)
        except ServiceError as exc:
            raise ServiceUnavailable(f"could not lease dataset {dataset_id}: {exc.message}",
                                     code="dataset_lease_failed") from exc
        job = Job(id=job_id, status="queued", dataset_id=dataset_id, base_model=base_model,
                  backend=backend, gpus=gpus, hyperparameters=hp.model_dump(), export=ex.model_dump(),
                  callback_url=callback_url or self.settings.callback_url, suffix=suffix,
                  gate_alias=gate_alias, model_id=mv_id, progress={}, created_at=now(), queued_at=time.time(),
                  source=source, training_file=training_file, validation_file=validation_file)
        return await offload(self._enqueue, job)

    def _enqueue(self, job: Job) -> dict[str, Any]:
        job_id = job.id  # read before the session commits (and expires) the row
        with self.db.session() as s:
            s.add(job)
            s.flush()
            self._add_event(s, job, "state", {"status": "queued", "message": "job validated and queued"})
        return self.get_job(job_id)

    # ------------------------------------------------------------------ reads
    def get_row(self, s: Session, job_id: str) -> Job:
        require_id(job_id, "job", "job")
        job = s.get(Job, job_id)
        if job is None:
            raise NotFound(f"job '{job_id}' not found", code="job_not_found", param="job_id")
        return job

    def get_job(self, job_id: str) -> dict[str, Any]:
        with self.db.session() as s:
            return job_view(self.get_row(s, job_id))

    def list_jobs(self, *, status: str | None = None, limit: int = 20,
                  after: str | None = None) -> dict[str, Any]:
        """Newest first; ``after`` is a job id (cursor)."""
        with self.db.session() as s:
            q = select(Job).order_by(Job.created_at.desc(), Job.id.desc())
            if status:
                q = q.where(Job.status == status)
            if after:
                cur = self.get_row(s, after)
                q = q.where((Job.created_at < cur.created_at) |
                            ((Job.created_at == cur.created_at) & (Job.id < cur.id)))
            rows = list(s.scalars(q.limit(limit + 1)))
            return {"object": "list", "data": [job_view(j) for j in rows[:limit]],
                    "has_more": len(rows) > limit}

    def list_rows(self, *, limit: int, after: str | None) -> tuple[list[Job], bool]:
        with self.db.session() as s:
            q = select(Job).order_by(Job.created_at.desc(), Job.id.desc())
            if after:
                cur = self.get_row(s, after)
                q = q.where((Job.created_at < cur.created_at) |
                            ((Job.created_at == cur.created_at) & (Job.id < cur.id)))
            rows = list(s.scalars(q.limit(limit + 1)))
            return rows[:limit], len(rows) > limit

    def job_row(self, job_id: str) -> Job:
        with self.db.session() as s:
            return self.get_row(s, job_id)

    def events(self, job_id: str, after: int = 0, limit: int = 100,
               newest_first: bool = False) -> dict[str, Any]:
        with self.db.session() as s:
            self.get_row(s, job_id)
            q = select(JobEvent).where(JobEvent.job_id == job_id)
            if newest_first:
                if after:
                    q = q.where(JobEvent.seq < after)
                q = q.order_by(JobEvent.seq.desc())
            else:
                q = q.where(JobEvent.seq > after).order_by(JobEvent.seq)
            rows = list(s.scalars(q.limit(limit + 1)))
            return {"object": "list", "data": [event_view(e) for e in rows[:limit]],
                    "has_more": len(rows) > limit}

    def events_of_type(self, job_id: str, type_: str) -> list[dict[str, Any]]:
        with self.db.session() as s:
            self.get_row(s, job_id)
            rows = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == type_)
                             .order_by(JobEvent.seq))
            return [event_view(e) for e in rows]

    def counts(self) -> dict[str, int]:
        with self.db.session() as s:
            return {st: n for st, n in s.execute(select(Job.status, func.count()).group_by(Job.status))}

    # ------------------------------------------------------------------ cancel / delete
    def request_cancel(self, job_id: str) -> tuple[dict[str, Any], bool]:
        """Queued -> cancelled now; running -> flagged (the supervisor kills the process).
        Returns (job view, needs_kill)."""
        with self.db.session() as s:
            job = self.get_row(s, job_id)
            if job.status in TERMINAL:
                raise Conflict(f"job '{job_id}' is already {job.status}", code="job_not_cancellable",
                               param="job_id")
            if job.status == "running":
                job.cancel_requested = True
                self._add_event(s, job, "state", {"status": "cancelling",
                                                  "message": "cancel requested; stopping the process"})
                return job_view(job), True
            self.finish(s, job, "cancelled", None, "cancelled before it started")
            return job_view(job), False

    def delete_job(self, job_id: str) -> dict[str, Any]:
        with self.db.session() as s:
            job = self.get_row(s, job_id)
            if job.status not in TERMINAL:
                raise Conflict(f"job '{job_id}' is {job.status}; cancel it first", code="job_active",
                               param="job_id")
            s.execute(delete(JobEvent).where(JobEvent.job_id == job_id))
            s.delete(job)
        self.store.delete(layout.job(job_id))
        return {"id": job_id, "object": "training_job.deleted", "deleted": True}

    # ------------------------------------------------------------------ state changes
    def _add_event(self, s: Session, job: Job, type_: str, data: dict[str, Any],
                   ts: float | None = None) -> None:
        s.add(JobEvent(job_id=job.id, seq=job.next_seq, type=type_, created_at=int(ts or time.time()),
                       data=data))
        job.next_seq += 1

    def finish(self, s: Session, job: Job, status: str, error: dict[str, Any] | None,
               message: str) -> None:
        job.status = status
        job.error = error
        job.finished_at = now()
        self._add_event(s, job, "state", {"status": status, "message": message,
                                          **({"error": error} if error else {})})

    # ------------------------------------------------------------------ model versions
    def register_model(self, s: Session, job: Job, result: dict[str, Any]) -> dict[str, Any]:
        """Lineage record: dataset version, base + revision, full config, metrics, artifacts, checks."""
        record = {
            "id": job.model_id, "object": "model_version", "job_id": job.id,
            "dataset_id": job.dataset_id, "base_model": job.base_model,
            "base_revision": result.get("base_revision"), "backend": result.get("backend"),
            "suffix": job.suffix,
            "config": {"backend": job.backend, "resolved_backend": result.get("backend"),
                       "gpus": job.gpus,
                       "hyperparameters": job.hyperparameters, "export": job.export,
                       "resolved_hyperparameters": result.get("metrics", {}).get("hyperparameters")},
            "metrics": result.get("metrics", {}), "artifacts": result.get("artifacts", {}),
            "export_checks": result.get("export_checks", []),
            "artifact_url": self.store.url, "created_at": now(),
        }
        if s.get(ModelVersion, job.model_id) is None:
            s.add(ModelVersion(id=job.model_id, job_id=job.id, created_at=record["created_at"],
                               record=record))
        job.registered = True
        return record

    def get_model(self, model_id: str) -> dict[str, Any]:
        require_id(model_id, "mv", "model")
        with self.db.session() as s:
            mv = s.get(ModelVersion, model_id)
            if mv is None:
                raise NotFound(f"model version '{model_id}' not found", code="model_not_found",
                               param="model_id")
            return mv.record

    def list_models(self, limit: int = 50) -> dict[str, Any]:
        with self.db.session() as s:
            rows = list(s.scalars(select(ModelVersion).order_by(ModelVersion.created_at.desc())
                                  .limit(limit + 1)))
            return {"object": "list", "data": [r.record for r in rows[:limit]],
                    "has_more": len(rows) > limit}

    # ------------------------------------------------------------------ files (OpenAI)
    def add_file(self, file_id: str, filename: str, size: int, purpose: str, dataset_id: str,
                 key: str) -> dict[str, Any]:
        with self.db.session() as s:
            f = File(id=file_id, filename=filename, bytes=size, purpose=purpose,
                     dataset_id=dataset_id, key=key, created_at=now())
            s.add(f)
            return file_view(f)

    def get_file_row(self, file_id: str) -> File:
        require_id(file_id, "file", "file")
        with self.db.session() as s:
            f = s.get(File, file_id)
            if f is None:
                raise NotFound(f"file '{file_id}' not found", code="file_not_found", param="file_id")
            return f

    def list_files(self, purpose: str | None = None) -> dict[str, Any]:
        with self.db.session() as s:
            q = select(File).order_by(File.created_at.desc())
            if purpose:
                q = q.where(File.purpose == purpose)
            return {"object": "list", "data": [file_view(f) for f in s.scalars(q)], "has_more": False}

    def delete_file(self, file_id: str) -> dict[str, Any]:
        f = self.get_file_row(file_id)
        with self.db.session() as s:
            s.execute(delete(File).where(File.id == file_id))
        self.store.delete(f.key)
        return {"id": file_id, "object": "file", "deleted": True}


# ---------------------------------------------------------------------- views
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


def _model(cls: type[M], value: M | dict[str, Any] | None, param: str) -> M:
    if isinstance(value, cls):
        return value
    try:
        return cls.model_validate(value or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ()))
        raise TuneloopError(f"{param}.{loc}: {first.get('msg')}" if loc else f"{param}: {first.get('msg')}",
                            code="invalid_hyperparameters" if param == "hyperparameters" else "invalid_request",
                            param=f"{param}.{loc}" if loc else param, status=400) from exc

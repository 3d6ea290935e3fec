"""Trainer domain logic: validation, creating jobs, cancelling and deleting them, model
versions, files.

Never imports FastAPI. Its database work goes through the repository (:mod:`.repository`, the
service's one data-access boundary, every method ``async``); other blocking work (the artifact
store, loading a config and tokenizer: the sync ``validate_base_model`` and ``_estimate``) is
awaited through :func:`tuneloop.offload.offload`. The supervisor (``supervisor.py``) drives jobs
through their states.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from tuneloop.clients.base import ServiceError
from tuneloop.clients.dataset import DatasetClient
from tuneloop import layout
from tuneloop.db import Database
from tuneloop.errors import NotFound, ServiceUnavailable, TuneloopError, Unprocessable
from tuneloop.ids import is_valid_id, new_id
from tuneloop.storage import ArtifactStore
from tuneloop.offload import offload

from .db import File, Job
from .hparams import ExportOptions, Hyperparameters
from .repository import TrainerRepository, now
from .settings import TrainerSettings

log = logging.getLogger("tuneloop.trainer")

M = TypeVar("M", bound=BaseModel)


class TrainerService:
    def __init__(self, settings: TrainerSettings, db: Database, store: ArtifactStore,
                 datasets: DatasetClient) -> None:
        self.settings = settings
        self.db = db
        self.repo = TrainerRepository(db)
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
        return await self.repo.enqueue(job)

    # ------------------------------------------------------------------ reads
    async def get_job(self, job_id: str) -> dict[str, Any]:
        return await self.repo.get_job(job_id)

    async def job_row(self, job_id: str) -> Job:
        return await self.repo.job_row(job_id)

    async def list_jobs(self, *, status: str | None = None, limit: int = 20,
                        after: str | None = None) -> dict[str, Any]:
        """Newest first; ``after`` is a job id (cursor)."""
        return await self.repo.list_jobs(status=status, limit=limit, after=after)

    async def list_rows(self, *, limit: int, after: str | None) -> tuple[list[Job], bool]:
        return await self.repo.list_rows(limit=limit, after=after)

    async def events(self, job_id: str, after: int = 0, limit: int = 100,
                     newest_first: bool = False) -> dict[str, Any]:
        return await self.repo.events(job_id, after=after, limit=limit, newest_first=newest_first)

    async def events_of_type(self, job_id: str, type_: str) -> list[dict[str, Any]]:
        return await self.repo.events_of_type(job_id, type_)

    async def counts(self) -> dict[str, int]:
        return await self.repo.counts()

    # ------------------------------------------------------------------ cancel / delete
    async def request_cancel(self, job_id: str) -> tuple[dict[str, Any], bool]:
        """Queued -> cancelled now; running -> flagged (the supervisor kills the process).
        Returns (job view, needs_kill)."""
        return await self.repo.request_cancel(job_id)

    async def delete_job(self, job_id: str) -> dict[str, Any]:
        """A finished job's rows, then its folder in the store (its model version stays)."""
        await self.repo.delete_job(job_id)
        await offload(self.store.delete, layout.job(job_id))
        return {"id": job_id, "object": "training_job.deleted", "deleted": True}

    # ------------------------------------------------------------------ model versions
    async def get_model(self, model_id: str) -> dict[str, Any]:
        return await self.repo.get_model(model_id)

    async def list_models(self, limit: int = 50) -> dict[str, Any]:
        return await self.repo.list_models(limit)

    # ------------------------------------------------------------------ files (OpenAI)
    async def add_file(self, file_id: str, filename: str, size: int, purpose: str, dataset_id: str,
                       key: str) -> dict[str, Any]:
        return await self.repo.add_file(file_id, filename, size, purpose, dataset_id, key)

    async def get_file_row(self, file_id: str) -> File:
        return await self.repo.get_file_row(file_id)

    async def list_files(self, purpose: str | None = None) -> dict[str, Any]:
        return await self.repo.list_files(purpose)

    async def delete_file(self, file_id: str) -> dict[str, Any]:
        """The file's row, then its upload in the store (its dataset version stays)."""
        key = await self.repo.delete_file(file_id)
        await offload(self.store.delete, key)
        return {"id": file_id, "object": "file", "deleted": True}


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

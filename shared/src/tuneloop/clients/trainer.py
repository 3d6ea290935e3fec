"""Typed async client of the trainer service (:8002). See docs/contracts.md "Trainer service".

    async with TrainerClient("http://127.0.0.1:8002") as tr:
        job = await tr.create_job("ds-...", "/models/base", hyperparameters={"num_train_epochs": 1})
        async for ev in tr.stream_events(job["id"]):
            print(ev["type"], ev["data"])
        job = await tr.wait(job["id"])
        mv = await tr.get_model(job["model_id"])
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal, TypedDict

import httpx

from .base import ServiceClient, ServiceError

TERMINAL = ("succeeded", "failed", "cancelled")


class JobProgress(TypedDict, total=False):
    step: int | None
    total_steps: int | None
    epoch: float | None
    loss: float | None
    eval_loss: float | None
    learning_rate: float | None
    tokens_per_s: float | None
    eta_s: float | None


class TrainingJob(TypedDict, total=False):
    id: str
    object: str
    status: Literal["validating", "queued", "running", "succeeded", "failed", "cancelled"]
    dataset_id: str
    base_model: str
    backend: str
    resolved_backend: str | None
    hyperparameters: dict[str, Any]
    export: dict[str, Any]
    model_id: str | None
    progress: JobProgress
    error: dict[str, str] | None
    attempts: int
    created_at: int
    started_at: int | None
    finished_at: int | None


class JobEvent(TypedDict):
    seq: int
    type: str
    created_at: int
    data: dict[str, Any]


class ModelVersion(TypedDict, total=False):
    id: str
    object: str
    job_id: str
    dataset_id: str
    base_model: str
    base_revision: dict[str, Any]
    config: dict[str, Any]
    metrics: dict[str, Any]
    artifacts: dict[str, Any]
    export_checks: list[dict[str, Any]]
    created_at: int


def _options(**opts: Any) -> dict[str, Any]:
    return {k: v for k, v in opts.items() if v is not None}


class TrainerClient(ServiceClient):
    """One client per process (opened in the lifespan); errors raise ``ServiceError``."""

    service = "trainer"

    async def create_job(self, dataset_id: str, base_model: str, *,
                         backend: Literal["auto", "unsloth", "peft"] = "auto",
                         hyperparameters: dict[str, Any] | None = None,
                         export: dict[str, Any] | None = None, callback_url: str | None = None,
                         suffix: str | None = None, gpus: int | None = None) -> TrainingJob:
        """Validate and queue a job (4xx ``ServiceError`` on a bad dataset, model or setting).
        ``gpus`` > 1 launches DDP over that many GPUs (torchrun; peft backend only)."""
        body = {"dataset_id": dataset_id, "base_model": base_model, "backend": backend,
                **_options(hyperparameters=hyperparameters, export=export,
                           callback_url=callback_url, suffix=suffix, gpus=gpus)}
        return await self.post_json("/v1/jobs", body)

    async def get_job(self, job_id: str) -> TrainingJob:
        return await self.get_json(f"/v1/jobs/{job_id}")

    async def list_jobs(self, status: str | None = None, limit: int = 20,
                        after: str | None = None) -> dict[str, Any]:
        return await self.get_json("/v1/jobs", params=_options(status=status, limit=limit, after=after))

    async def cancel(self, job_id: str) -> TrainingJob:
        return await self.post_json(f"/v1/jobs/{job_id}/cancel")

    async def delete(self, job_id: str) -> dict[str, Any]:
        return (await self.request("DELETE", f"/v1/jobs/{job_id}")).json()

    async def events(self, job_id: str, after: int = 0, limit: int = 100) -> dict[str, Any]:
        return await self.get_json(f"/v1/jobs/{job_id}/events", params={"after": after, "limit": limit})

    async def stream_events(self, job_id: str, after: int = 0) -> AsyncIterator[JobEvent]:
        """Live events over SSE until the job's final state (resumes after a dropped stream)."""
        while True:
            try:
                async with self.http.stream("GET", f"/v1/jobs/{job_id}/events/stream",
                                            params={"after": after},
                                            timeout=httpx.Timeout(None, connect=5.0)) as resp:
                    if resp.status_code >= 400:
                        await resp.aread()
                        raise self._error(resp)
                    event_type = None
                    async for line in resp.aiter_lines():
                        if line.startswith("event: "):
                            event_type = line[7:]
                        elif line.startswith("data: "):
                            if event_type == "end":
                                return
                            ev: JobEvent = json.loads(line[6:])
                            after = ev["seq"]
                            yield ev
                    return
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError):
                await asyncio.sleep(1.0)  # reconnect and continue after the last seq

    async def wait(self, job_id: str, timeout: float = 3600, interval: float = 2.0) -> TrainingJob:
        """Poll until the job reaches a final state (raises ServiceError 504 on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            job = await self.get_job(job_id)
            if job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise ServiceError(504, f"job {job_id} still {job['status']} after {timeout}s",
                                   "job_wait_timeout", service=self.service)
            await asyncio.sleep(interval)

    async def get_model(self, model_id: str) -> ModelVersion:
        return await self.get_json(f"/v1/models/{model_id}")

    async def list_models(self, limit: int = 50) -> dict[str, Any]:
        return await self.get_json("/v1/models", params={"limit": limit})

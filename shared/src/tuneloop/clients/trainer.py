"""Typed async client of the trainer service (:8002). See docs/contracts.md "Trainer service".

    async with TrainerClient("http://127.0.0.1:8002") as tr:
        job = await tr.create_job("ds-...", "/models/base", hyperparameters={"num_train_epochs": 1})
        async for ev in tr.stream_events(job.id):
            print(ev.type, ev.data)
        job = await tr.wait(job.id)
        mv = await tr.get_model(job.model_id)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx

from ..contracts import Deleted, Job, JobEvent, ModelVersion, Page
from .base import ServiceClient, ServiceError

TERMINAL = ("succeeded", "failed", "cancelled")


def _options(**opts: Any) -> dict[str, Any]:
    return {k: v for k, v in opts.items() if v is not None}


class TrainerClient(ServiceClient):
    """One client per process (opened in the lifespan); errors raise ``ServiceError``."""

    service = "trainer"

    async def create_job(self, dataset_id: str, base_model: str, *,
                         backend: Literal["auto", "unsloth", "peft"] = "auto",
                         hyperparameters: dict[str, Any] | None = None,
                         export: dict[str, Any] | None = None, callback_url: str | None = None,
                         suffix: str | None = None, gpus: int | None = None,
                         gate_alias: str | None = None) -> Job:
        """Validate and queue a job (4xx ``ServiceError`` on a bad dataset, model or setting).
        ``gpus`` > 1 launches DDP over that many GPUs (torchrun; peft backend only);
        ``gate_alias``: the alias the gateway's gate moves when the candidate passes."""
        body = {"dataset_id": dataset_id, "base_model": base_model, "backend": backend,
                **_options(hyperparameters=hyperparameters, export=export,
                           callback_url=callback_url, suffix=suffix, gpus=gpus,
                           gate_alias=gate_alias)}
        return Job.model_validate(await self.post_json("/v1/jobs", body))

    async def get_job(self, job_id: str) -> Job:
        return Job.model_validate(await self.get_json(f"/v1/jobs/{job_id}"))

    async def list_jobs(self, status: str | None = None, limit: int = 20,
                        after: str | None = None) -> Page[Job]:
        """Newest first; ``after`` is the last job id of the previous page."""
        params = _options(status=status, limit=limit, after=after)
        return Page[Job].model_validate(await self.get_json("/v1/jobs", params=params))

    async def cancel(self, job_id: str) -> Job:
        return Job.model_validate(await self.post_json(f"/v1/jobs/{job_id}/cancel"))

    async def delete(self, job_id: str) -> Deleted:
        return Deleted.model_validate((await self.request("DELETE", f"/v1/jobs/{job_id}")).json())

    async def events(self, job_id: str, after: int = 0, limit: int = 100) -> Page[JobEvent]:
        page = await self.get_json(f"/v1/jobs/{job_id}/events", params={"after": after, "limit": limit})
        return Page[JobEvent].model_validate(page)

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
                            ev = JobEvent.model_validate(json.loads(line[6:]))
                            after = ev.seq
                            yield ev
                    return
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError):
                await asyncio.sleep(1.0)  # reconnect and continue after the last seq

    async def wait(self, job_id: str, timeout: float = 3600, interval: float = 2.0) -> Job:
        """Poll until the job reaches a final state (raises ServiceError 504 on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            job = await self.get_job(job_id)
            if job.status in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise ServiceError(504, f"job {job_id} still {job.status} after {timeout}s",
                                   "job_wait_timeout", service=self.service)
            await asyncio.sleep(interval)

    async def get_model(self, model_id: str) -> ModelVersion:
        return ModelVersion.model_validate(await self.get_json(f"/v1/models/{model_id}"))

    async def list_models(self, limit: int = 50) -> Page[ModelVersion]:
        page = await self.get_json("/v1/models", params={"limit": limit})
        return Page[ModelVersion].model_validate(page)

"""GatewayClient: the typed async client of the gateway's own API (datasets, jobs, models,
keys, evals, promotions), and the only one: the CLI and the demo use it through its sync facade
(:class:`tuneloop.cli.api.GatewayAPI`).

The OpenAI surface (chat, completions, models, fine-tuning) is best used through the official
``openai`` SDK with ``base_url=<gateway>/v1``; this client covers what the SDK does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx

from ..contracts import Dataset, EvalRun, Job, JobEvent, ModelVersion, Page, Promotion
from ..offload import offload
from .base import ServiceClient, ServiceError

LONG = httpx.Timeout(600.0, connect=5.0)  # uploads, replay rows' generation


class ProgressReader:
    """File wrapper that reports bytes read (drives an upload progress bar)."""

    def __init__(self, fh: IO[bytes], on_read: Callable[[int], None]) -> None:
        self.fh, self.on_read = fh, on_read

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        if data:
            self.on_read(len(data))
        return data

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(1 << 16):
            yield chunk


class GatewayClient(ServiceClient):
    service = "gateway"

    # -- datasets ----------------------------------------------------------------------
    async def upload_dataset(self, file: Path, *, eval_file: Path | None = None,
                             options: dict[str, Any] | None = None,
                             on_progress: Callable[[int], None] | None = None,
                             replay_rows: list[dict[str, Any]] | None = None) -> Dataset:
        """Multipart upload (``file`` + optional ``eval_file`` + form options; ``replay_rows``
        go as ``replay_file``: train split only)."""
        data = {k: str(v) for k, v in (options or {}).items() if v is not None}
        tick = on_progress or (lambda n: None)
        with contextlib.ExitStack() as opened:
            async def part(path: Path) -> tuple[str, ProgressReader, str]:
                fh = opened.enter_context(await offload(open, path, "rb"))
                return (path.name, ProgressReader(fh, tick), "application/jsonl")

            files: dict[str, Any] = {"file": await part(file)}
            if eval_file is not None:
                files["eval_file"] = await part(eval_file)
            if replay_rows:
                body = "".join(json.dumps(r, ensure_ascii=False) + "\n"
                               for r in replay_rows).encode()
                files["replay_file"] = ("replay.jsonl", body, "application/jsonl")
            # httpx reads the parts as it sends them (64 KiB at a time, a local file)
            resp = await self.request("POST", "/v1/datasets", files=files, data=data, timeout=LONG)
        return Dataset.model_validate(resp.json())

    async def upload_rows(self, rows: list[dict[str, Any]], **options: Any) -> Dataset:
        body = {"rows": rows, **{k: v for k, v in options.items() if v is not None}}
        return Dataset.model_validate(await self.post_json("/v1/datasets", body, timeout=LONG))

    async def replay_rows(self, n: int, *, model: str | None = None, seed: int = 42) -> dict[str, Any]:
        """Replay rows against forgetting: the served base's answers to general prompts."""
        body = {"n": n, "seed": seed, **({"model": model} if model else {})}
        return await self.post_json("/v1/replay-rows", body,
                                    timeout=httpx.Timeout(1800.0, connect=5.0))

    async def list_datasets(self) -> Page[Dataset]:
        return Page[Dataset].model_validate(await self.get_json("/v1/datasets"))

    async def dataset(self, ds_id: str) -> Dataset:
        return Dataset.model_validate(await self.get_json(f"/v1/datasets/{ds_id}"))

    async def report(self, ds_id: str) -> dict[str, Any]:
        return await self.get_json(f"/v1/datasets/{ds_id}/report")

    async def report_text(self, ds_id: str) -> str:
        resp = await self.request("GET", f"/v1/datasets/{ds_id}/report", params={"format": "text"})
        if resp.headers.get("content-type", "").startswith("application/json"):
            body = resp.json()
            return body.get("text") or json.dumps(body, indent=2)
        return resp.text

    # -- jobs --------------------------------------------------------------------------
    async def create_job(self, body: dict[str, Any]) -> Job:
        return Job.model_validate(await self.post_json("/v1/jobs", body))

    async def list_jobs(self) -> Page[Job]:
        return Page[Job].model_validate(await self.get_json("/v1/jobs"))

    async def job(self, job_id: str) -> Job:
        return Job.model_validate(await self.get_json(f"/v1/jobs/{job_id}"))

    async def cancel_job(self, job_id: str) -> Job:
        return Job.model_validate(await self.post_json(f"/v1/jobs/{job_id}/cancel"))

    async def job_events(self, job_id: str, after: int | None = None,
                         limit: int | None = None) -> list[JobEvent]:
        params = {k: v for k, v in {"after": after, "limit": limit}.items() if v is not None}
        page = await self.get_json(f"/v1/jobs/{job_id}/events", params=params)
        return Page[JobEvent].model_validate(page).data

    async def stream_job_events(self, job_id: str,
                                after: int = 0) -> AsyncGenerator[dict[str, Any], None]:
        """Server-sent events of a job (``/events/stream``); ends when the server closes."""
        try:
            async with self.http.stream("GET", f"/v1/jobs/{job_id}/events/stream",
                                        params={"after": after} if after else None,
                                        timeout=httpx.Timeout(None, connect=5.0)) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise self._error(resp)
                data: list[str] = []
                async for line in resp.aiter_lines():
                    if line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line and data:
                        payload, data = "\n".join(data), []
                        try:
                            yield json.loads(payload)
                        except ValueError:
                            continue
        except httpx.ConnectError as exc:
            raise ServiceError(503, f"{self.service} service unreachable: {exc}",
                               "upstream_unavailable", service=self.service,
                               type_="service_unavailable") from exc

    # -- models ------------------------------------------------------------------------
    async def served_models(self) -> dict[str, Any]:
        """``/v1/models``: what the gateway serves (OpenAI's list shape)."""
        return await self.get_json("/v1/models")

    # -- keys --------------------------------------------------------------------------
    async def create_key(self, name: str, scopes: list[str],
                         rate_limit_rpm: int | None = None) -> dict[str, Any]:
        """Create an API key; the answer's ``key`` is the only time the secret is shown."""
        body: dict[str, Any] = {"name": name, "scopes": scopes}
        if rate_limit_rpm is not None:
            body["rate_limit_rpm"] = rate_limit_rpm
        return await self.post_json("/v1/keys", body)

    async def list_keys(self, include_revoked: bool = False) -> list[dict[str, Any]]:
        page = await self.get_json("/v1/keys", params={"include_revoked": include_revoked})
        return page["data"]

    async def revoke_key(self, key_id: str) -> dict[str, Any]:
        return (await self.request("DELETE", f"/v1/keys/{key_id}")).json()

    # -- evals -------------------------------------------------------------------------
    async def create_eval(self, targets: list[dict[str, Any]], *, dataset_id: str | None = None,
                          rows: list[dict[str, Any]] | None = None, wait: bool = False,
                          **options: Any) -> EvalRun:
        """Start an eval run (``targets``: ``{"name", "model", "base_url"?, "api_key"?}``)."""
        body = {"targets": targets, "dataset_id": dataset_id, "rows": rows, "wait": wait, **options}
        body = {k: v for k, v in body.items() if v is not None}
        timeout = httpx.Timeout(3600.0 if wait else 60.0, connect=5.0)
        return EvalRun.model_validate(await self.post_json("/v1/evals", body, timeout=timeout))

    async def get_eval(self, eval_id: str) -> EvalRun:
        return EvalRun.model_validate(await self.get_json(f"/v1/evals/{eval_id}"))

    async def list_evals(self, limit: int = 20, offset: int = 0) -> Page[EvalRun]:
        page = await self.get_json("/v1/evals", params={"limit": limit, "offset": offset})
        return Page[EvalRun].model_validate(page)

    async def eval_samples(self, eval_id: str, *, suite: str | None = None, offset: int = 0,
                           limit: int = 50) -> dict[str, Any]:
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        if suite:
            params["suite"] = suite
        return await self.get_json(f"/v1/evals/{eval_id}/samples", params=params)

    async def wait_eval(self, eval_id: str, *, poll_s: float = 1.0,
                        timeout_s: float = 3600.0) -> EvalRun:
        """Poll until the run leaves ``running``; raises a 504 ServiceError on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            run = await self.get_eval(eval_id)
            if run.status != "running":
                return run
            if time.monotonic() > deadline:
                raise ServiceError(504, f"eval {eval_id} still running after {timeout_s}s",
                                   "eval_timeout", service=self.service)
            await asyncio.sleep(poll_s)

    # -- promotions --------------------------------------------------------------------
    async def promotions(self, *, model_id: str | None = None,
                         job_id: str | None = None) -> list[Promotion]:
        return (await self.list_promotions(model_id=model_id, job_id=job_id)).data

    async def list_promotions(self, *, model_id: str | None = None,
                              job_id: str | None = None) -> Page[Promotion]:
        params = {k: v for k, v in {"model_id": model_id, "job_id": job_id}.items() if v}
        return Page[Promotion].model_validate(await self.get_json("/v1/promotions", params=params))

    async def promotion(self, promotion_id: str) -> Promotion:
        return Promotion.model_validate(await self.get_json(f"/v1/promotions/{promotion_id}"))

    async def gate_job(self, job_id: str, alias: str | None = None) -> Promotion:
        """Run the gate for a succeeded training job now (again, when it was inconclusive) and
        return the decision; ``alias`` overrides the job's gate_alias."""
        body = {"job_id": job_id, **({"alias": alias} if alias else {})}
        return Promotion.model_validate(await self.post_json(
            "/v1/promotions/gate", body, timeout=httpx.Timeout(3600.0, connect=5.0)))

    async def gate_model(self, model_id: str, dataset_id: str, base_model: str | None = None,
                         alias: str | None = None) -> Promotion:
        body = {"model_id": model_id, "dataset_id": dataset_id, "base_model": base_model,
                "alias": alias}
        return Promotion.model_validate(await self.post_json(
            "/v1/promotions/gate", {k: v for k, v in body.items() if v},
            timeout=httpx.Timeout(3600.0, connect=5.0)))

    async def promote(self, *, model: str | None = None, model_id: str | None = None,
                      alias: str | None = None, note: str | None = None) -> Promotion:
        body = {"model": model, "model_id": model_id, "alias": alias, "note": note}
        return Promotion.model_validate(await self.post_json(
            "/v1/promotions", {k: v for k, v in body.items() if v},
            timeout=httpx.Timeout(900.0, connect=5.0)))

    async def rollback(self, alias: str | None = None, note: str | None = None) -> Promotion:
        body = {k: v for k, v in {"alias": alias, "note": note}.items() if v}
        return Promotion.model_validate(await self.post_json(
            "/v1/promotions/rollback", body, timeout=httpx.Timeout(900.0, connect=5.0)))

    async def lineage(self, model_id: str) -> ModelVersion:
        """A model version's lineage (trainer) with the gateway's decisions (``promotions``)."""
        return ModelVersion.model_validate(await self.get_json(f"/v1/models/{model_id}"))

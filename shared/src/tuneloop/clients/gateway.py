"""GatewayClient: the typed async client of the gateway's own API (keys, evals, promotions).

The OpenAI surface (chat, completions, models, fine-tuning) is best used through the official
``openai`` SDK with ``base_url=<gateway>/v1``; this client covers what the SDK does not.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from ..contracts import EvalRun, ModelVersion, Page, Promotion
from .base import ServiceClient, ServiceError


class GatewayClient(ServiceClient):
    service = "gateway"

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
        params = {k: v for k, v in {"model_id": model_id, "job_id": job_id}.items() if v}
        return Page[Promotion].model_validate(await self.get_json("/v1/promotions", params=params)).data

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

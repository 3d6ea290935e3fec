"""The gateway's typed calls to its peers (per docs/contracts.md), on ``ServiceClient``."""

from __future__ import annotations

from typing import Any

import httpx

from tuneloop.clients.base import ServiceClient


class DatasetPeer(ServiceClient):
    service = "dataset"

    async def get_dataset(self, dataset_id: str) -> dict[str, Any]:
        return await self.get_json(f"/v1/datasets/{dataset_id}")

    async def eval_rows(self, dataset_id: str, limit: int) -> list[dict[str, Any]]:
        """Rows of the eval split, paged through the rows API (up to ``limit``)."""
        return await self.split_rows(dataset_id, "eval", limit)

    async def train_rows(self, dataset_id: str, limit: int) -> list[dict[str, Any]]:
        """The first rows of the train split (the prompted baseline's examples)."""
        return await self.split_rows(dataset_id, "train", limit)

    async def split_rows(self, dataset_id: str, split: str, limit: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        while len(rows) < limit:
            page = await self.get_json(f"/v1/datasets/{dataset_id}/rows", params={
                "split": split, "offset": len(rows), "limit": min(100, limit - len(rows))})
            data = page.get("data", [])
            rows.extend(data)
            if not data or not page.get("has_more"):
                break
        return rows[:limit]


class TrainerPeer(ServiceClient):
    service = "trainer"

    async def get_job(self, job_id: str) -> dict[str, Any]:
        return await self.get_json(f"/v1/jobs/{job_id}")

    async def succeeded_jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        page = await self.get_json("/v1/jobs", params={"status": "succeeded", "limit": limit})
        return [j for j in page.get("data", []) if j.get("status") == "succeeded"]

    async def get_model(self, model_id: str) -> dict[str, Any]:
        return await self.get_json(f"/v1/models/{model_id}")


class InferencePeer(ServiceClient):
    """Inference's admin API (deployments, aliases) with the inference admin key."""

    service = "inference"

    def __init__(self, base_url: str, *, deploy_timeout: float, **kwargs: Any) -> None:
        super().__init__(base_url, **kwargs)
        self.deploy_timeout = deploy_timeout

    async def ready(self) -> bool:
        """Inference's /ready (its default model is served), without retries."""
        try:
            resp = await self.http.get("/ready", timeout=httpx.Timeout(3.0))
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    async def deployments(self) -> list[dict[str, Any]]:
        return (await self.get_json("/admin/deployments")).get("data", [])

    async def deploy(self, body: dict[str, Any]) -> dict[str, Any]:
        """Deploy and wait until ready or failed (``?wait=true``)."""
        return await self.post_json("/admin/deployments", body, params={"wait": "true"},
                                    timeout=httpx.Timeout(self.deploy_timeout, connect=5.0))

    async def undeploy(self, dep_id: str) -> dict[str, Any]:
        return (await self.request("DELETE", f"/admin/deployments/{dep_id}")).json()

    async def aliases(self) -> list[dict[str, Any]]:
        return (await self.get_json("/admin/aliases")).get("data", [])

    async def alias_target(self, alias: str) -> str | None:
        for a in await self.aliases():
            if a.get("alias") == alias or a.get("name") == alias or a.get("id") == alias:
                return a.get("model") or a.get("target")
        return None

    async def set_alias(self, alias: str, model: str) -> dict[str, Any]:
        resp = await self.request("PUT", f"/admin/aliases/{alias}", json={"model": model})
        return resp.json()

    async def rollback(self, alias: str) -> dict[str, Any]:
        return await self.post_json(f"/admin/aliases/{alias}/rollback")

"""Typed async client of the inference service (:8003): admin API + a thin OpenAI call.

Admin calls need ``api_key=<INFERENCE_ADMIN_KEY>``. For the OpenAI surface, prefer the
official ``openai`` SDK with ``base_url=<inference>/v1``; :meth:`chat` exists for internal
callers that already hold this client.
"""

from __future__ import annotations

from typing import Any

import httpx

from ..contracts import Alias, Deleted, Deployment
from .base import ServiceClient


class InferenceClient(ServiceClient):
    service = "inference"

    def __init__(self, base_url: str, *, deploy_timeout: float = 900.0, **kwargs: Any) -> None:
        super().__init__(base_url, **kwargs)
        self.deploy_timeout = deploy_timeout

    def _long(self) -> httpx.Timeout:
        return httpx.Timeout(self.deploy_timeout, connect=5.0)

    async def ready(self) -> bool:
        """``/ready``: 200 once the default deployment serves (no retries)."""
        try:
            return (await self.http.get("/ready", timeout=httpx.Timeout(3.0))).status_code == 200
        except httpx.HTTPError:
            return False

    # -- deployments ---------------------------------------------------------------------
    async def deploy(self, *, model_id: str | None = None, name: str | None = None,
                     path: str | None = None, adapter_of: str | None = None,
                     wait: bool = True) -> Deployment:
        """Load a model version (``model_id``) or a local folder (``name`` + ``path``);
        ``wait`` blocks until it is ready or failed."""
        body = {k: v for k, v in {"model_id": model_id, "name": name, "path": path,
                                  "adapter_of": adapter_of}.items() if v is not None}
        return Deployment.model_validate(await self.post_json(
            "/admin/deployments", body, params={"wait": "true" if wait else "false"},
            timeout=self._long()))

    async def deployments(self) -> list[Deployment]:
        page = await self.get_json("/admin/deployments")
        return [Deployment.model_validate(d) for d in page["data"]]

    async def deployment(self, dep_id: str) -> Deployment:
        return Deployment.model_validate(await self.get_json(f"/admin/deployments/{dep_id}"))

    async def undeploy(self, dep_id: str) -> Deployment:
        """Drain and stop (the record stays, ``state: stopped``)."""
        resp = await self.request("DELETE", f"/admin/deployments/{dep_id}", timeout=self._long())
        return Deployment.model_validate(resp.json())

    # -- aliases -------------------------------------------------------------------------
    async def aliases(self) -> list[Alias]:
        return [Alias.model_validate(a) for a in (await self.get_json("/admin/aliases"))["data"]]

    async def alias(self, alias: str) -> Alias:
        return Alias.model_validate(await self.get_json(f"/admin/aliases/{alias}"))

    async def alias_target(self, alias: str) -> str | None:
        """The served name ``alias`` routes to, or None when there is no such alias."""
        for item in await self.aliases():
            if item.id == alias:
                return item.model
        return None

    async def set_alias(self, alias: str, model: str, *, retire_previous: bool = True) -> Alias:
        """Blue/green flip (loads ``model`` first when it is a model version not deployed)."""
        resp = await self.request("PUT", f"/admin/aliases/{alias}",
                                  json={"model": model, "retire_previous": retire_previous},
                                  timeout=self._long())
        return Alias.model_validate(resp.json())

    async def rollback(self, alias: str) -> Alias:
        return Alias.model_validate(
            await self.post_json(f"/admin/aliases/{alias}/rollback", timeout=self._long()))

    async def delete_alias(self, alias: str) -> Deleted:
        return Deleted.model_validate((await self.request("DELETE", f"/admin/aliases/{alias}")).json())

    # -- OpenAI surface ------------------------------------------------------------------
    async def models(self) -> list[dict[str, Any]]:
        return (await self.get_json("/v1/models"))["data"]

    async def chat(self, model: str, messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
        """One non-streaming chat completion (``params``: max_tokens, temperature, stop...)."""
        return await self.post_json("/v1/chat/completions",
                                    {"model": model, "messages": messages, **params},
                                    timeout=self._long())

"""ServiceClient: one httpx.AsyncClient per peer service."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from ..errors import TuneloopError
from ..logs import request_id_var

log = logging.getLogger("tuneloop.clients")

_IDEMPOTENT = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}
#: answers after which an idempotent call is tried again (a peer restarting, draining, full)
_RETRY_STATUS = {429, 502, 503, 504}
_MAX_WAIT_S = 5.0


class ServiceError(TuneloopError):
    """An error answered by (or on the way to) a peer service, in the one envelope.

    ``status`` is the peer's HTTP status (or 502/503/504 when the peer could not answer);
    ``code``/``message``/``param`` are copied from the peer's envelope.
    """

    type = "upstream_error"

    def __init__(self, status: int, message: str, code: str, *, service: str,
                 param: str | None = None, details: Any = None, type_: str | None = None) -> None:
        super().__init__(message, code=code, param=param, details=details, status=status)
        self.service = service
        if type_:
            self.type = type_


class ServiceClient:
    """Base for typed clients. Use as an async context manager or call :meth:`aclose`.

    Idempotent calls (GET, PUT, DELETE, ...) are tried up to ``retries`` times when the peer
    cannot be reached, drops the connection, or answers 429/502/503/504, with exponential
    backoff (0.2, 0.4, ... s) or the ``Retry-After`` it asks for, at most 5 s per wait.
    Other calls are sent once. ``api_key`` is sent as a bearer token: between the services,
    the service token (``TUNELOOP_SERVICE_TOKEN``)."""

    service = "peer"

    def __init__(self, base_url: str, *, timeout: float = 30.0, api_key: str | None = None,
                 retries: int = 3, transport: httpx.AsyncBaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(5.0, timeout)),
            transport=transport,
        )

    async def __aenter__(self) -> "ServiceClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; return the response if 2xx, else raise :class:`ServiceError`."""
        headers = dict(kwargs.pop("headers", None) or {})
        rid = request_id_var.get()
        if rid:
            headers.setdefault("X-Request-ID", rid)
        attempts = self.retries if method.upper() in _IDEMPOTENT else 1
        for attempt in range(1, attempts + 1):
            try:
                resp = await self.http.request(method, path, headers=headers, **kwargs)
                if resp.status_code in _RETRY_STATUS and attempt < attempts:
                    await asyncio.sleep(_wait(resp, attempt))
                    continue
                break
            except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
                if attempt >= attempts:
                    raise ServiceError(503, f"{self.service} service unreachable: {exc}",
                                       "upstream_unavailable", service=self.service,
                                       type_="service_unavailable") from exc
                await asyncio.sleep(0.2 * 2 ** (attempt - 1))
            except httpx.TimeoutException as exc:
                raise ServiceError(504, f"{self.service} service timed out ({method} {path})",
                                   "upstream_timeout", service=self.service) from exc
        if resp.status_code >= 400:
            raise self._error(resp)
        return resp

    def _error(self, resp: httpx.Response) -> ServiceError:
        try:
            err = resp.json()["error"]
            return ServiceError(resp.status_code, err.get("message", resp.text[:500]),
                                err.get("code") or f"http_{resp.status_code}", service=self.service,
                                param=err.get("param"), details=err.get("details"),
                                type_=err.get("type"))
        except Exception:
            return ServiceError(resp.status_code if resp.status_code < 500 else 502,
                                f"{self.service} answered {resp.status_code}: {resp.text[:300]}",
                                "upstream_error", service=self.service)

    async def get_json(self, path: str, **kwargs: Any) -> Any:
        return (await self.request("GET", path, **kwargs)).json()

    async def post_json(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return (await self.request("POST", path, json=body, **kwargs)).json()

    async def health(self) -> bool:
        try:
            await self.request("GET", "/health")
            return True
        except ServiceError:
            return False


def _wait(resp: httpx.Response, attempt: int) -> float:
    """Seconds before the next attempt: the peer's ``Retry-After`` if it sent one, else
    exponential backoff; at most ``_MAX_WAIT_S``."""
    try:
        wait = float(resp.headers.get("retry-after", ""))
    except ValueError:
        wait = 0.2 * 2 ** (attempt - 1)
    return max(0.0, min(wait, _MAX_WAIT_S))

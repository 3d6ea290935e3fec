"""The CLI's synchronous gateway client: a facade over the one async client,
:class:`tuneloop.clients.gateway.GatewayClient` (routes from docs/contracts.md).

Each :class:`GatewayAPI` owns an event loop, run by a thread of its own, and hands the async
client's calls to it: callers on any number of threads may call at once (the demo asks the base
model its replay prompts from 64 threads) and share the one connection pool. Answers come back
as the plain dicts the gateway sent (the contract models' ``to_dict``). Every failure becomes
:class:`ApiError` carrying the envelope's ``code`` and ``message`` (the CLI prints those, never
a traceback); status 0 when the gateway could not be reached or did not answer in time.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx

from ..clients.base import ServiceError
from ..clients.gateway import GatewayClient

DEFAULT_URL = "http://127.0.0.1:8000"
T = TypeVar("T")


class ApiError(Exception):
    """A failed call: HTTP status (0 when the gateway could not be reached) + envelope fields."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status else "no answer"
        return f"{self.message} ({where}, {self.code})"


def default_api_key(data_dir: str | Path | None = None) -> str | None:
    """``TUNELOOP_API_KEY``, else the admin key the embedded gateway wrote on first start."""
    key = os.environ.get("TUNELOOP_API_KEY")
    if key:
        return key
    var = Path(data_dir or os.environ.get("TUNELOOP_DATA_DIR", "var"))
    path = var / "gateway-admin-key"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class GatewayAPI:
    """Typed calls to the gateway (everything the CLI and the demo driver do), synchronously."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 60.0, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = (url or os.environ.get("TUNELOOP_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else default_api_key()
        self.client = GatewayClient(self.url, api_key=self.api_key or None, timeout=timeout,
                                    transport=transport)
        # one loop for the client's life, on its own thread: an asyncio.Runner driven by the
        # caller refused a second caller ("This event loop is already running": 599 of the GPU
        # demo's 600 replay rows were dropped so, and the tuned model forgot the general suite)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gateway-api",
                                        daemon=True)
        self._thread.start()
        self._closed = False

    def __enter__(self) -> "GatewayAPI":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._submit(self.client.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()

    def _submit(self, call: Coroutine[Any, Any, T]) -> T:
        """Run ``call`` on the client's loop and wait for it (from any thread but that one)."""
        return asyncio.run_coroutine_threadsafe(call, self._loop).result()

    # -- plumbing ----------------------------------------------------------------------
    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        """Run one call of the async client; its errors as :class:`ApiError`."""
        try:
            return self._submit(call)
        except ServiceError as exc:
            raise self._api_error(exc) from exc
        except httpx.TransportError as exc:  # a connection lost mid-answer
            raise ApiError(0, "unreachable", f"lost the connection to {self.url} ({exc})") from exc

    def _api_error(self, exc: ServiceError) -> ApiError:
        if isinstance(exc.__cause__, httpx.TimeoutException):
            return ApiError(0, "timeout", f"the gateway at {self.url} did not answer in time")
        if isinstance(exc.__cause__, httpx.TransportError):  # never reached the gateway
            return ApiError(0, "unreachable", f"cannot reach {self.url} ({exc.__cause__}); is "
                            "the stack up? (`tuneloop up`, or set TUNELOOP_URL)")
        return ApiError(exc.status, exc.code, exc.message, exc.details)

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self._run(self.client.request(method, path, **kw))

    def get(self, path: str, **params: Any) -> Any:
        params = {k: v for k, v in params.items() if v is not None}
        return self.request("GET", path, params=params).json()

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("POST", path, json=body, **kw).json()

    def health(self) -> bool:
        return self._submit(self.client.health())

    # -- datasets ----------------------------------------------------------------------
    def upload_dataset(self, file: Path, *, eval_file: Path | None = None,
                       options: dict[str, Any] | None = None,
                       on_progress: Callable[[int], None] | None = None,
                       replay_rows: list[dict] | None = None) -> dict:
        """Multipart upload (``file`` + optional ``eval_file`` + form options; ``replay_rows``
        go as ``replay_file``: train split only)."""
        return self._run(self.client.upload_dataset(
            file, eval_file=eval_file, options=options, on_progress=on_progress,
            replay_rows=replay_rows)).to_dict()

    def replay_rows(self, n: int, *, model: str | None = None, seed: int = 42) -> dict:
        """Replay rows against forgetting: the served base's answers to general prompts."""
        return self._run(self.client.replay_rows(n, model=model, seed=seed))

    def upload_rows(self, rows: list[dict], **options: Any) -> dict:
        return self._run(self.client.upload_rows(rows, **options)).to_dict()

    def list_datasets(self) -> dict:
        return self._run(self.client.list_datasets()).to_dict()

    def dataset(self, ds_id: str) -> dict:
        return self._run(self.client.dataset(ds_id)).to_dict()

    def report(self, ds_id: str) -> dict:
        return self._run(self.client.report(ds_id))

    def report_text(self, ds_id: str) -> str:
        return self._run(self.client.report_text(ds_id))

    # -- jobs --------------------------------------------------------------------------
    def create_job(self, body: dict) -> dict:
        return self._run(self.client.create_job(body)).to_dict()

    def list_jobs(self) -> dict:
        return self._run(self.client.list_jobs()).to_dict()

    def job(self, job_id: str) -> dict:
        return self._run(self.client.job(job_id)).to_dict()

    def cancel_job(self, job_id: str) -> dict:
        return self._run(self.client.cancel_job(job_id)).to_dict()

    def job_events(self, job_id: str, after: int | None = None, limit: int | None = None) -> list[dict]:
        return [e.to_dict() for e in self._run(self.client.job_events(job_id, after, limit))]

    def stream_job_events(self, job_id: str, after: int = 0) -> Iterator[dict]:
        """Server-sent events of a job (``/events/stream``); ends when the server closes."""
        events = self.client.stream_job_events(job_id, after)

        async def next_event() -> dict | None:
            return await anext(events, None)

        try:
            while (event := self._run(next_event())) is not None:
                yield event
        finally:
            self._submit(events.aclose())

    # -- models, promotions ------------------------------------------------------------
    def served_models(self) -> dict:
        return self._run(self.client.served_models())

    def model(self, model_id: str) -> dict:
        return self._run(self.client.lineage(model_id)).to_dict()

    def promotions(self, model_id: str | None = None, job_id: str | None = None) -> dict:
        return self._run(self.client.list_promotions(model_id=model_id, job_id=job_id)).to_dict()

    def promote(self, *, alias: str | None, model: str | None = None,
                model_id: str | None = None, note: str | None = None) -> dict:
        return self._run(self.client.promote(alias=alias, model=model, model_id=model_id,
                                             note=note)).to_dict()

    def rollback(self, alias: str | None, note: str | None = None) -> dict:
        return self._run(self.client.rollback(alias, note)).to_dict()

    def gate_job(self, job_id: str, alias: str | None = None) -> dict:
        """Run the gate for a job (again, if it was inconclusive) and return the decision."""
        return self._run(self.client.gate_job(job_id, alias)).to_dict()

    # -- evals -------------------------------------------------------------------------
    def create_eval(self, body: dict) -> dict:
        return self._run(self.client.create_eval(**body)).to_dict()

    def eval(self, eval_id: str) -> dict:
        return self._run(self.client.get_eval(eval_id)).to_dict()

    def wait_eval(self, eval_id: str, *, poll_s: float = 2.0, timeout_s: float = 3600.0,
                  on_poll: Callable[[dict], None] | None = None) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.eval(eval_id)
            if on_poll:
                on_poll(run)
            if run.get("status") not in ("queued", "running", "pending"):
                return run
            if time.monotonic() > deadline:
                raise ApiError(0, "timeout", f"eval {eval_id} not finished after {timeout_s:.0f}s")
            time.sleep(poll_s)

    # -- keys --------------------------------------------------------------------------
    def create_key(self, name: str, scopes: list[str], rate_limit_rpm: int | None = None) -> dict:
        return self._run(self.client.create_key(name, scopes, rate_limit_rpm or None))

"""The CLI's synchronous client of the gateway API (routes from docs/contracts.md).

One ``httpx.Client`` per command run; every non-2xx answer becomes :class:`ApiError` carrying
the envelope's ``code`` and ``message`` (the CLI prints those, never a traceback).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


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


class ProgressReader:
    """File wrapper that reports bytes read (drives the upload progress bar)."""

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


class GatewayAPI:
    """Typed calls to the gateway (everything the CLI and the demo driver do)."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 60.0, transport: httpx.BaseTransport | None = None) -> None:
        self.url = (url or os.environ.get("TUNELOOP_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else default_api_key()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, transport=transport,
                                 timeout=httpx.Timeout(timeout, connect=5.0))

    def __enter__(self) -> "GatewayAPI":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- plumbing ----------------------------------------------------------------------
    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.ConnectError as exc:
            raise ApiError(0, "unreachable", f"cannot reach {self.url} ({exc}); is the stack up? "
                           "(`tuneloop up`, or set TUNELOOP_URL)") from exc
        except httpx.TimeoutException as exc:
            raise ApiError(0, "timeout", f"{method} {path} timed out") from exc
        if resp.status_code >= 400:
            raise self._error(resp)
        return resp

    @staticmethod
    def _error(resp: httpx.Response) -> ApiError:
        try:
            err = resp.json()["error"]
            return ApiError(resp.status_code, err.get("code") or f"http_{resp.status_code}",
                            err.get("message") or resp.reason_phrase, err.get("details"))
        except (ValueError, KeyError, TypeError):
            return ApiError(resp.status_code, f"http_{resp.status_code}",
                            resp.text[:300] or resp.reason_phrase)

    def get(self, path: str, **params: Any) -> Any:
        params = {k: v for k, v in params.items() if v is not None}
        return self.request("GET", path, params=params).json()

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("POST", path, json=body, **kw).json()

    def health(self) -> bool:
        try:
            self.request("GET", "/health")
            return True
        except ApiError:
            return False

    # -- datasets ----------------------------------------------------------------------
    def upload_dataset(self, file: Path, *, eval_file: Path | None = None,
                       options: dict[str, Any] | None = None,
                       on_progress: Callable[[int], None] | None = None,
                       replay_rows: list[dict] | None = None) -> dict:
        """Multipart upload (``file`` + optional ``eval_file`` + form options; ``replay_rows``
        go as ``replay_file``: train split only)."""
        data = {k: str(v) for k, v in (options or {}).items() if v is not None}
        tick = on_progress or (lambda n: None)
        with open(file, "rb") as fh, (open(eval_file, "rb") if eval_file else _null()) as efh:
            files: dict[str, Any] = {"file": (file.name, ProgressReader(fh, tick), "application/jsonl")}
            if efh is not None:
                files["eval_file"] = (eval_file.name, ProgressReader(efh, tick), "application/jsonl")
            if replay_rows:
                body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in replay_rows).encode()
                files["replay_file"] = ("replay.jsonl", body, "application/jsonl")
            return self.request("POST", "/v1/datasets", files=files, data=data,
                                timeout=httpx.Timeout(600.0, connect=5.0)).json()

    def replay_rows(self, n: int, *, model: str | None = None, seed: int = 42) -> dict:
        """Replay rows against forgetting: the served base's answers to general prompts."""
        body = {"n": n, "seed": seed, **({"model": model} if model else {})}
        return self.post("/v1/replay-rows", body, timeout=httpx.Timeout(1800.0, connect=5.0))

    def upload_rows(self, rows: list[dict], **options: Any) -> dict:
        return self.post("/v1/datasets", {"rows": rows, **{k: v for k, v in options.items() if v is not None}},
                         timeout=httpx.Timeout(600.0, connect=5.0))

    def list_datasets(self) -> dict:
        return self.get("/v1/datasets")

    def dataset(self, ds_id: str) -> dict:
        return self.get(f"/v1/datasets/{ds_id}")

    def report(self, ds_id: str) -> dict:
        return self.get(f"/v1/datasets/{ds_id}/report")

    def report_text(self, ds_id: str) -> str:
        resp = self.request("GET", f"/v1/datasets/{ds_id}/report", params={"format": "text"})
        if resp.headers.get("content-type", "").startswith("application/json"):
            body = resp.json()
            return body.get("text") or json.dumps(body, indent=2)
        return resp.text

    # -- jobs --------------------------------------------------------------------------
    def create_job(self, body: dict) -> dict:
        return self.post("/v1/jobs", body)

    def list_jobs(self) -> dict:
        return self.get("/v1/jobs")

    def job(self, job_id: str) -> dict:
        return self.get(f"/v1/jobs/{job_id}")

    def cancel_job(self, job_id: str) -> dict:
        return self.post(f"/v1/jobs/{job_id}/cancel")

    def job_events(self, job_id: str, after: int | None = None, limit: int | None = None) -> list[dict]:
        return self.get(f"/v1/jobs/{job_id}/events", after=after, limit=limit).get("data", [])

    def stream_job_events(self, job_id: str, after: int = 0) -> Iterator[dict]:
        """Server-sent events of a job (``/events/stream``); ends when the server closes."""
        try:
            with self.http.stream("GET", f"/v1/jobs/{job_id}/events/stream",
                                  params={"after": after} if after else None,
                                  timeout=httpx.Timeout(None, connect=5.0)) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise self._error(resp)
                data: list[str] = []
                for line in resp.iter_lines():
                    if line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line and data:
                        payload, data = "\n".join(data), []
                        try:
                            yield json.loads(payload)
                        except ValueError:
                            continue
        except httpx.ConnectError as exc:
            raise ApiError(0, "unreachable", f"cannot reach {self.url} ({exc})") from exc

    # -- models, promotions ------------------------------------------------------------
    def served_models(self) -> dict:
        return self.get("/v1/models")

    def model(self, model_id: str) -> dict:
        return self.get(f"/v1/models/{model_id}")

    def promotions(self, model_id: str | None = None, job_id: str | None = None) -> dict:
        return self.get("/v1/promotions", model_id=model_id, job_id=job_id)

    def promote(self, *, alias: str | None, model: str | None = None,
                model_id: str | None = None, note: str | None = None) -> dict:
        body = {"alias": alias, "model": model, "model_id": model_id, "note": note}
        return self.post("/v1/promotions", {k: v for k, v in body.items() if v is not None},
                         timeout=httpx.Timeout(900.0, connect=5.0))

    def rollback(self, alias: str | None, note: str | None = None) -> dict:
        body = {k: v for k, v in {"alias": alias, "note": note}.items() if v is not None}
        return self.post("/v1/promotions/rollback", body)

    def gate_job(self, job_id: str, alias: str | None = None) -> dict:
        """Run the gate for a job (again, if it was inconclusive) and return the decision."""
        body = {"job_id": job_id, **({"alias": alias} if alias else {})}
        return self.post("/v1/promotions/gate", body, timeout=httpx.Timeout(3600.0, connect=5.0))

    # -- evals -------------------------------------------------------------------------
    def create_eval(self, body: dict) -> dict:
        wait = bool(body.get("wait"))
        return self.post("/v1/evals", body,
                         timeout=httpx.Timeout(3600.0 if wait else 60.0, connect=5.0))

    def eval(self, eval_id: str) -> dict:
        return self.get(f"/v1/evals/{eval_id}")

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
        body: dict[str, Any] = {"name": name, "scopes": scopes}
        if rate_limit_rpm:
            body["rate_limit_rpm"] = rate_limit_rpm
        return self.post("/v1/keys", body)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None

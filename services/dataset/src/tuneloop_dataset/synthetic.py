"""Synthetic data: ask an OpenAI-compatible teacher for new examples, keep a reviewed draft.

The article's advice: prompt a strong model with examples of the task, generate many
completions, then review and curate the best. A job runs in the background of the service;
its state (progress, parse failures, generated rows, review decisions) is in the database,
so a restart loses nothing: a job that was running when the service stopped is marked
``failed`` with code ``interrupted`` and the rows it already generated stay reviewable.
The teacher's API key is kept in memory only, never stored. The jobs' SQL is in
:class:`.repository.SynthRepository`.
"""

from __future__ import annotations

import builtins
import asyncio
import json
import logging
import random
import time
from typing import Any

import anyio
import httpx

from tuneloop.db import Database
from tuneloop.errors import InvalidRequest
from tuneloop.ids import new_id, require_id
from tuneloop.offload import offload

from .db import SynthJobRow
from .metrics import DatasetMetrics
from .parsing import RowError, canonical, normalize_row, row_digest
from .minhash import Signer, new_index
from .quality import json_parses
from .repository import SynthRepository
from .schemas import PublishRequest, ReviewRequest, SynthRequest
from .service import DatasetService, Ingested
from .settings import DatasetSettings
from .sources import write_rows

log = logging.getLogger("tuneloop.dataset.synthetic")

SYSTEM_EXAMPLES = (
    "You write new training examples for fine-tuning a model on one task. Reply with exactly "
    "one JSON object with the string keys \"instruction\", \"input\" and \"output\", and nothing "
    "else. The example must be new: different from the examples shown.")
_FAILURE_CAP = 100


def extract_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text`` (models wrap JSON in prose or code fences)."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = decoder.raw_decode(text, start)
            if isinstance(obj, dict):
                return obj
        except ValueError:
            pass
        start = text.find("{", start + 1)
    return None


def _seed_rows(seeds: list[Any]) -> list[list[dict[str, str]]]:
    out = []
    for i, row in enumerate(seeds):
        try:
            out.append(normalize_row(row)[0])
        except RowError as exc:
            raise InvalidRequest(f"seed_examples[{i}]: {exc.message}", code="invalid_seed_example",
                                 param=f"seed_examples[{i}]" + (f".{exc.field}" if exc.field else "")
                                 ) from exc
    return out



RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}


def _retry_after(resp: httpx.Response) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), if any."""
    raw = resp.headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        return max(0.0, parsedate_to_datetime(raw).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class SynthService:
    def __init__(self, settings: DatasetSettings, db: Database, metrics: DatasetMetrics,
                 datasets: DatasetService) -> None:
        self.settings = settings
        self.repo = SynthRepository(db)
        self.metrics = metrics
        self.datasets = datasets
        self._keys: dict[str, str | None] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._cancel: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------
    async def recover(self) -> int:
        """At startup: jobs left queued/running by a stopped process are marked failed."""
        return await self.repo.recover()

    async def shutdown(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            try:
                await task
            except BaseException:  # finishing every task is all that matters
                pass

    # -- API ---------------------------------------------------------------------------
    async def create(self, req: SynthRequest) -> dict[str, Any]:
        """Store the job, start it in the background (on this loop), answer the job."""
        if req.n > self.settings.synth_max_examples:
            raise InvalidRequest(f"n must be at most {self.settings.synth_max_examples}",
                                 code="invalid_request", param="n")
        seeds = _seed_rows(req.seed_examples)
        expect_json = req.expect_json_output
        if expect_json is None:
            expect_json = bool(seeds) and all(json_parses(m[-1]["content"]) for m in seeds)
        spec = req.model_dump()
        spec["teacher"].pop("api_key", None)
        spec["expect_json_output"] = expect_json
        job_id = new_id("syn")
        now = int(time.time())
        await self.repo.add(SynthJobRow(id=job_id, status="queued", created_at=now, spec=spec,
                                        progress=_progress(), failures=[], error=None))
        self._keys[job_id] = req.teacher.api_key
        self._tasks[job_id] = asyncio.get_running_loop().create_task(self._run(job_id))
        return await self.get(job_id)

    async def get(self, job_id: str) -> dict[str, Any]:
        require_id(job_id, "syn", "synthetic_job")
        return _to_api(*await self.repo.get(job_id))

    async def list(self, limit: int, offset: int) -> dict[str, Any]:
        jobs = await self.repo.page(limit + 1, offset)
        return {"object": "list", "data": [_to_api(*j) for j in jobs[:limit]],
                "has_more": len(jobs) > limit}

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """Stop a job (409 ``job_finished`` once it ended): one running here stops before its
        next teacher request; one no task of this process runs is marked cancelled now."""
        require_id(job_id, "syn", "synthetic_job")
        await self.repo.cancel(job_id, finish=job_id not in self._tasks)
        if job_id in self._tasks:
            self._cancel.add(job_id)
        return await self.get(job_id)

    async def rows(self, job_id: str, status: str | None, offset: int, limit: int) -> dict[str, Any]:
        require_id(job_id, "syn", "synthetic_job")
        rows = await self.repo.rows(job_id, status, offset, limit + 1)
        return {"object": "list", "has_more": len(rows) > limit,
                "data": [{"id": r.id, "index": r.idx, "messages": r.messages, "status": r.status}
                         for r in rows[:limit]]}

    async def review(self, job_id: str, req: ReviewRequest) -> dict[str, Any]:
        require_id(job_id, "syn", "synthetic_job")
        await self.repo.review(job_id, req.accept, req.reject, req.accept_all_pending)
        return await self.get(job_id)

    async def publish(self, job_id: str, opts: PublishRequest) -> Ingested:
        """Accepted rows -> a new dataset version (through the normal validator)."""
        require_id(job_id, "syn", "synthetic_job")
        rows = await self.repo.accepted(job_id)
        if opts.name is None:
            opts.name = f"synthetic-{job_id}"
        async with self.datasets.tmp_dir() as tmp:
            path = tmp / "accepted.jsonl"
            await offload(write_rows, [{"messages": msgs} for msgs in rows], path)
            result = await self.datasets.ingest(path, opts, {"kind": "synthetic", "job_id": job_id})
        await self.repo.set_dataset(job_id, result.dataset["id"])
        return result

    # -- the job -----------------------------------------------------------------------
    async def _run(self, job_id: str) -> None:
        try:
            await self._generate(job_id)
        except asyncio.CancelledError:
            await self.repo.finish(job_id, "failed", {
                "code": "interrupted", "message": "the dataset service stopped during the job; "
                "rows generated before are kept in the draft"})
            raise
        except Exception as exc:  # a job failure is recorded, never lost
            log.exception("synthetic job failed", extra={"job_id": job_id})
            await self.repo.finish(job_id, "failed",
                                   {"code": "internal_error", "message": str(exc)[:500]})
        finally:
            self._tasks.pop(job_id, None)
            self._keys.pop(job_id, None)
            self._cancel.discard(job_id)

    async def _generate(self, job_id: str) -> None:
        job, _ = await self.repo.get(job_id)
        spec = job.spec
        seeds = _seed_rows(spec["seed_examples"])
        teacher = spec["teacher"]
        key = self._keys.get(job_id)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        url = teacher["base_url"].rstrip("/") + "/chat/completions"
        mode, n = spec["mode"], spec["n"]
        inputs = spec.get("inputs") or []
        if mode == "completions":  # each input is answered once
            max_requests = min(spec.get("max_requests") or len(inputs), len(inputs))
        else:
            max_requests = spec.get("max_requests") or 3 * n
        rng = random.Random(job_id)
        progress = _progress(requested=n)
        failures: list[dict[str, Any]] = []
        seen = {row_digest(canonical(m)) for m in seeds}
        lsh = new_index(self.settings.near_dup_threshold, self.settings.near_dup_num_perm)
        kept_mh: dict[int, Any] = {}
        await self.repo.update(job_id, status="running", started_at=int(time.time()))
        consecutive_errors = 0
        timeout = httpx.Timeout(self.settings.synth_request_timeout_s, connect=10)
        async with httpx.AsyncClient(timeout=timeout, headers=headers) as http:
            for i in range(max_requests):
                if progress["kept"] >= n or job_id in self._cancel:
                    break
                inp = inputs[i] if mode == "completions" else None
                body = {"model": teacher["model"], "messages": self._prompt(spec, seeds, inp, rng),
                        "temperature": spec["temperature"], "max_tokens": spec["max_tokens"]}
                progress["requests"] += 1
                try:
                    resp = await self._ask_teacher(http, url, body, job_id)
                except httpx.HTTPError as exc:
                    consecutive_errors += 1
                    self.metrics.synth_requests.labels("transport_error").inc()
                    _fail(failures, progress, i, "teacher_unreachable", f"{type(exc).__name__}: {exc}")
                    if consecutive_errors >= 3:
                        await self._save(job_id, progress, failures)
                        await self.repo.finish(job_id, "failed", {
                            "code": "teacher_unreachable",
                            "message": f"3 teacher requests in a row failed: {str(exc)[:300]}"})
                        return
                    continue
                if resp.status_code >= 400:
                    self.metrics.synth_requests.labels("http_error").inc()
                    await self._save(job_id, progress, failures)
                    await self.repo.finish(job_id, "failed", {
                        "code": "teacher_error",
                        "message": f"teacher answered {resp.status_code}: {resp.text[:300]}"})
                    return
                consecutive_errors = 0
                self.metrics.synth_requests.labels("ok").inc()
                text = _content(resp)
                outcome = self._accept(spec, text, inp, seen, lsh, kept_mh, progress, failures, i)
                if outcome is not None:
                    msgs, digest = outcome
                    await self.repo.add_row(job_id, progress["kept"], msgs, digest)
                    progress["kept"] += 1
                    self.metrics.synth_rows.labels("kept").inc()
                await self._save(job_id, progress, failures)
        status = "cancelled" if job_id in self._cancel else "succeeded"
        if progress["kept"] < n and status == "succeeded":
            progress["shortfall"] = n - progress["kept"]
            await self._save(job_id, progress, failures)
        await self.repo.finish(job_id, status, None)

    async def _ask_teacher(self, http: httpx.AsyncClient, url: str, body: dict[str, Any],
                           job_id: str) -> httpx.Response:
        """POST to the teacher; a 429/5xx answer or a lost request is retried up to
        ``synth_retries`` times, waiting what ``Retry-After`` asks (else 1, 2, 4, ... s with
        jitter; at most ``synth_retry_max_wait_s``). Returns the last answer; raises the last
        transport error. A generation has no side effect, so a retry is safe."""
        s = self.settings
        for attempt in range(s.synth_retries + 1):
            last = attempt == s.synth_retries or job_id in self._cancel
            try:
                resp = await http.post(url, json=body)
            except httpx.HTTPError:
                if last:
                    raise
                resp = None
            if resp is not None and (resp.status_code not in RETRY_STATUSES or last):
                return resp
            wait = _retry_after(resp) if resp is not None else None
            if wait is None:
                wait = min(2.0 ** attempt, s.synth_retry_max_wait_s) * random.uniform(0.8, 1.2)
            self.metrics.synth_requests.labels("retried").inc()
            log.info("teacher busy or unreachable; retrying", extra={
                "job_id": job_id, "status": resp.status_code if resp is not None else None,
                "wait_s": round(wait, 2), "attempt": attempt + 1})
            await anyio.sleep(min(wait, s.synth_retry_max_wait_s))
        raise AssertionError("unreachable")

    def _prompt(self, spec: dict[str, Any], seeds: builtins.list[builtins.list[dict[str, str]]], inp: str | None,
                rng: random.Random) -> builtins.list[dict[str, str]]:
        shown = rng.sample(seeds, min(len(seeds), 5)) if seeds else []
        if spec["mode"] == "completions":
            msgs: list[dict[str, str]] = []
            for s in shown:  # few-shot turns
                msgs += s[:-1] + [s[-1]]
            msgs.append({"role": "user", "content": f"{spec['instruction']}\n\n{inp}"})
            return msgs
        examples = "\n".join(json.dumps(_as_article(s, spec["instruction"]), ensure_ascii=False)
                             for s in shown)
        user = (f"Task: {spec['instruction']}\n\nExamples (one JSON object per line):\n{examples}\n\n"
                "Write one new example as a single JSON object.")
        return [{"role": "system", "content": SYSTEM_EXAMPLES}, {"role": "user", "content": user}]

    def _accept(self, spec: dict[str, Any], text: str, inp: str | None, seen: set[bytes],
                lsh: Any, kept_mh: dict[int, Any], progress: dict[str, Any],
                failures: builtins.list[dict[str, Any]], i: int) -> tuple[builtins.list[dict[str, str]], bytes] | None:
        """Parse, validate and deduplicate one teacher answer; count what happened."""
        if spec["mode"] == "completions":
            row: Any = {"instruction": spec["instruction"], "input": inp, "output": text.strip()}
        else:
            row = extract_json_object(text)
            if row is None:
                self.metrics.synth_rows.labels("parse_failure").inc()
                _fail(failures, progress, i, "no_json_object", "the answer contains no JSON object",
                      text)
                return None
            if "instruction" not in row and "messages" not in row:
                row["instruction"] = spec["instruction"]
        try:
            msgs, _ = normalize_row(row)
        except RowError as exc:
            self.metrics.synth_rows.labels("invalid").inc()
            _fail(failures, progress, i, exc.code,
                  f"{exc.field + ': ' if exc.field else ''}{exc.message}", text)
            return None
        if spec["expect_json_output"] and not json_parses(msgs[-1]["content"]):
            self.metrics.synth_rows.labels("invalid").inc()
            _fail(failures, progress, i, "output_not_json",
                  "the answer's output is not valid JSON (the seed outputs are)", text)
            return None
        digest = row_digest(canonical(msgs))
        if digest in seen:
            progress["duplicates"] += 1
            self.metrics.synth_rows.labels("duplicate").inc()
            return None
        signer = Signer(self.settings.near_dup_num_perm)
        sig = signer.signature(msgs)
        mh = signer.lean(sig)
        if any(signer.jaccard(kept_mh[h], sig) >= self.settings.near_dup_threshold
               for h in lsh.query(mh)):
            progress["near_duplicates"] += 1
            self.metrics.synth_rows.labels("near_duplicate").inc()
            return None
        seen.add(digest)
        key = len(kept_mh)
        kept_mh[key] = sig
        lsh.insert(key, mh)
        return msgs, digest

    async def _save(self, job_id: str, progress: dict[str, Any], failures: builtins.list[dict[str, Any]]) -> None:
        await self.repo.update(job_id, progress=dict(progress), failures=list(failures))


def _to_api(job: SynthJobRow, counts: dict[str, int]) -> dict[str, Any]:
    return {"id": job.id, "object": "synthetic_job", "status": job.status,
            "created_at": job.created_at, "started_at": job.started_at,
            "finished_at": job.finished_at, "spec": job.spec, "progress": job.progress,
            "failures": job.failures, "error": job.error, "dataset_id": job.dataset_id,
            "rows": counts}


def _progress(requested: int = 0) -> dict[str, Any]:
    return {"requested": requested, "requests": 0, "kept": 0, "parse_failures": 0, "invalid": 0,
            "duplicates": 0, "near_duplicates": 0, "errors": 0}


def _fail(failures: list[dict[str, Any]], progress: dict[str, Any], i: int, code: str,
          message: str, raw: str | None = None) -> None:
    if code == "no_json_object":
        progress["parse_failures"] += 1
    elif code in ("teacher_unreachable",):
        progress["errors"] += 1
    else:
        progress["invalid"] += 1
    if len(failures) < _FAILURE_CAP:
        item = {"request": i, "code": code, "message": message[:300]}
        if raw is not None:
            item["raw"] = raw[:300]
        failures.append(item)
    return None


def _content(resp: httpx.Response) -> str:
    try:
        return resp.json()["choices"][0]["message"]["content"] or ""
    except (ValueError, KeyError, IndexError, TypeError):
        return ""


def _as_article(messages: list[dict[str, str]], instruction: str) -> dict[str, str]:
    user = next(m["content"] for m in messages if m["role"] == "user")
    inp = user[len(instruction):].lstrip("\n") if user.startswith(instruction) else user
    return {"instruction": instruction, "input": inp, "output": messages[-1]["content"]}

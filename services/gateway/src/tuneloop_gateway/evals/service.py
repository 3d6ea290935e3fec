"""Eval runs: resolve the examples, run the targets, score, store the report.

Runs are persisted (``gateway_eval_runs``) before they start and when they end; a run that
was in flight when the process stopped is marked failed (``interrupted``) at the next start.
A run ends ``succeeded`` only when every generation answered; when some still failed after
their retries it ends ``incomplete`` (its report lists them and scores only the answers).

Every eval whose baseline can be prompted with examples from a train split (a dataset version,
or ``train_rows``) also runs the *prompted baseline*: the baseline's model with a k-shot prompt
(GATEWAY_EVAL_KSHOT), named ``<baseline>_<k>shot``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from typing import Any

from tuneloop.clients.base import ServiceError
from tuneloop.clients.dataset import DatasetClient
from tuneloop.clients.inference import InferenceClient
from tuneloop import layout
from tuneloop.db import Database
from tuneloop.errors import InvalidRequest, NotFound, Unprocessable
from tuneloop.ids import is_valid_id, new_id
from tuneloop.offload import offload
from tuneloop.storage import ArtifactStore

from ..db import EvalRun
from ..leases import WorkLease
from ..repository.evals import EvalRepository
from ..schemas import EvalCreate
from ..settings import GatewaySettings
from .kshot import choose_shots
from .report import build_report, detect_task, general_prompts, load_general_suite
from .runner import (
    Example,
    Generation,
    RetryPolicy,
    Target,
    TargetRun,
    judge_pairs,
    rows_to_examples,
    run_all,
    shots_fingerprint,
)

log = logging.getLogger("tuneloop.gateway.evals")


def run_view(row: EvalRun, *, full: bool = True, progress: dict | None = None) -> dict[str, Any]:
    out = {"id": row.id, "object": "eval", "name": row.name, "status": row.status,
           "created_at": row.created_at, "finished_at": row.finished_at,
           "duration_s": row.duration_s, "config": row.config, "error": row.error}
    if progress is not None and row.status == "running":
        out["progress"] = progress
    if full:
        out["report"] = row.report
    return out


class EvalService:
    def __init__(self, settings: GatewaySettings, db: Database, store: ArtifactStore,
                 dataset: DatasetClient, metrics: Any, inference: InferenceClient | None = None,
                 lease: WorkLease | None = None) -> None:
        self.settings = settings
        self.repo = EvalRepository(db)
        # which process runs a run (replicas share the database; leases.py)
        self.lease = lease or WorkLease(settings.replica_id, settings.work_lease_s)
        self.store = store
        self.dataset = dataset
        self.inference = inference
        self.metrics = metrics
        self.general_items = load_general_suite(settings.general_suite_size)
        self._tasks: dict[str, asyncio.Task] = {}
        self._progress: dict[str, dict[str, dict[str, int]]] = {}  # run -> target -> counts
        self.retry = RetryPolicy(
            retries=settings.eval_retries, backoff_s=settings.eval_backoff_s,
            backoff_max_s=settings.eval_backoff_max_s,
            timeout_min_s=min(settings.eval_request_timeout_min_s, settings.eval_request_timeout_s),
            timeout_max_s=settings.eval_request_timeout_s, timeout_safety=settings.eval_timeout_safety,
            give_up_after=settings.eval_give_up_after, give_up_after_s=settings.eval_give_up_after_s)

    # -- lifecycle ---------------------------------------------------------------------
    async def recover(self, *, at_start: bool = True) -> int:
        """Fail (interrupted) the runs left 'running' by a process that stopped: this replica's
        previous process (``at_start``) or any replica whose lease ran out; runs another live
        replica holds go on."""
        return await self.repo.recover(self.lease, at_start=at_start)

    async def aclose(self) -> None:
        for t in list(self._tasks.values()):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    # -- inputs ------------------------------------------------------------------------
    def _targets(self, spec: EvalCreate) -> list[Target]:
        default = self.settings.inference_url.rstrip("/") + "/v1"
        return [Target(t.name, t.base_url or default, t.model,
                       t.api_key or (None if t.base_url else self.settings.inference_api_key),
                       t.role) for t in spec.targets]

    async def _dataset_rows(self, dataset_id: str, limit: int) -> list[dict[str, Any]]:
        """The eval split: from the artifact store's parquet, else through the rows API."""
        if not is_valid_id(dataset_id, "ds"):
            raise NotFound(f"dataset '{dataset_id[:80]}' not found", code="dataset_not_found",
                           param="dataset_id")
        key = layout.dataset_parquet(dataset_id, "eval")
        if await offload(self.store.exists, key):
            return await offload(self._read_parquet, key, limit)
        try:
            rows = await self.dataset.all_rows(dataset_id, "eval", page=100, limit=limit)
        except ServiceError as exc:
            if exc.status == 404:
                raise NotFound(f"dataset '{dataset_id}' not found", code="dataset_not_found",
                               param="dataset_id") from exc
            raise
        return rows

    async def _train_rows(self, dataset_id: str, limit: int = 200) -> list[dict[str, Any]]:
        """The first rows of a dataset version's train split (the k-shot baseline's examples)."""
        key = layout.dataset_parquet(dataset_id, "train")
        if await offload(self.store.exists, key):
            return await offload(self._read_parquet, key, limit)
        return await self.dataset.all_rows(dataset_id, "train", page=100, limit=limit)

    async def _kshot_target(self, spec: EvalCreate, targets: list[Target], examples: list[Example],
                            baseline: str, max_tokens: int) -> tuple[Target | None, dict[str, Any]]:
        """The prompted baseline: the baseline's model with k examples from the train split."""
        k = self.settings.eval_kshot if spec.kshot is None else spec.kshot
        if k <= 0:
            return None, {"k": 0, "skipped": "off"}
        where: dict[str, Any]
        if spec.train_rows is not None:
            rows, where = spec.train_rows, {"train_rows": len(spec.train_rows)}
        elif spec.dataset_id:
            try:
                rows, where = await self._train_rows(spec.dataset_id), {"dataset_id": spec.dataset_id}
            except ServiceError as exc:
                return None, {"k": k, "skipped": f"train split unavailable: {exc.message}"}
        else:
            return None, {"k": k, "skipped": "no train split (give dataset_id or train_rows)"}
        shots, info = choose_shots(rows, k, examples, seed=spec.dataset_id or "rows",
                                   budget_tokens=self.settings.eval_kshot_max_prompt_tokens,
                                   max_tokens=max_tokens)
        if not shots:
            return None, {"k": k, **info, **where}
        base = next(t for t in targets if t.name == baseline)
        name = f"{baseline}_{info['used']}shot"
        if any(t.name == name for t in targets):
            return None, {"k": k, "skipped": f"a target is already named {name}"}
        kt = Target(name, base.base_url, base.model, base.api_key, "base_kshot", shots=shots,
                    general=False, n_shots=info["used"])
        return kt, {"k": k, "target": name, **info, **where}

    def _read_parquet(self, key: str, limit: int) -> list[dict[str, Any]]:
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(self.store.read_bytes(key)))
        return table.slice(0, limit).to_pylist()

    async def resolve_examples(self, spec: EvalCreate) -> list[Example]:
        limit = spec.max_examples or self.settings.eval_max_examples
        rows = (await self._dataset_rows(spec.dataset_id, limit) if spec.dataset_id
                else (spec.rows or [])[:limit])
        if not rows:
            raise Unprocessable("the eval set is empty", code="eval_set_empty")
        try:
            return rows_to_examples(rows)
        except ValueError as exc:
            raise Unprocessable(str(exc), code="eval_row_invalid") from exc

    # -- runs --------------------------------------------------------------------------
    async def create(self, spec: EvalCreate, *, source: dict[str, Any] | None = None) -> str:
        """Validate, persist and start a run in the background; return its id."""
        examples = await self.resolve_examples(spec)
        try:
            task = detect_task(examples, spec.metric)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="metric") from exc
        targets = self._targets(spec)
        baseline = spec.baseline or targets[0].name
        max_tokens = spec.max_tokens or self.settings.eval_max_tokens
        kshot, kshot_info = await self._kshot_target(spec, targets, examples, baseline, max_tokens)
        if kshot is not None:
            at = next(i for i, t in enumerate(targets) if t.name == baseline) + 1
            targets.insert(at, kshot)
        reuse = self.settings.eval_reuse_generations if spec.reuse_generations is None else spec.reuse_generations
        weights = await self._weights(targets) if reuse else {}
        general_on = self.settings.general_suite if spec.general_suite is None else spec.general_suite
        config = {
            "source": source or ({"dataset_id": spec.dataset_id} if spec.dataset_id
                                 else {"rows": len(spec.rows or [])}),
            "targets": [{**t.public(), **({"weights": weights[t.name]} if weights.get(t.name) else {})}
                        for t in targets],
            "reuse_generations": reuse,
            "baseline": baseline, "metric": spec.metric, "kshot": kshot_info,
            "max_tokens": max_tokens,
            "concurrency": spec.concurrency or self.settings.eval_concurrency,
            "general_suite": general_on,
            "n_general": len(self.general_items) if general_on else 0,
            "retry": {"retries": self.retry.retries, "timeout_min_s": self.retry.timeout_min_s,
                      "timeout_max_s": self.retry.timeout_max_s, "backoff_max_s": self.retry.backoff_max_s},
            "judge": ({"model": spec.judge.model, "base_url": spec.judge.base_url,
                       "candidate": spec.judge.candidate, "base": spec.judge.base}
                      if spec.judge else None),
            "n_examples": len(examples),
        }
        run_id = new_id("eval")
        row = EvalRun(id=run_id, status="running", name=spec.name, config=config,
                      created_at=int(time.time()), owner=self.lease.owner,
                      heartbeat_at=self.lease.now())
        await self.repo.add(row)
        task_ = asyncio.create_task(self._execute(run_id, spec, targets, examples, task, config),
                                    name=run_id)
        self._tasks[run_id] = task_
        task_.add_done_callback(lambda t: self._tasks.pop(t.get_name(), None))
        return run_id

    async def wait(self, run_id: str) -> dict[str, Any]:
        task = self._tasks.get(run_id)
        if task is not None:
            await asyncio.shield(task)
        return await self.get(run_id)

    async def run(self, spec: EvalCreate, **kw: Any) -> dict[str, Any]:
        """Create a run and wait for its report (what promotion uses)."""
        run_id = await self.create(spec, **kw)
        return await self.wait(run_id)

    async def _execute(self, run_id: str, spec: EvalCreate, targets: list[Target],
                       examples: list[Example], task: dict[str, Any], config: dict[str, Any]) -> None:
        start = time.perf_counter()
        general = self.general_items if config["general_suite"] else []
        progress = self._progress.setdefault(run_id, {})
        for t in targets:
            total = len(examples) + (len(general) if t.general else 0)
            progress[t.name] = {"total": total, "done": 0, "failed": 0}

        def tick(name: str, ok: bool) -> None:
            progress[name]["done"] += 1
            progress[name]["failed"] += 0 if ok else 1

        try:
            reused = (await self._reusable(run_id, targets, examples, general, config)
                      if config.get("reuse_generations") else {})
            for name, (_, prior) in reused.items():
                progress[name]["done"] += sum(1 for g in prior.task + prior.general if not g.error)
            runs = await run_all(targets, examples, general_prompts(general),
                                 prior={n: r for n, (_, r) in reused.items()},
                                 max_tokens=config["max_tokens"], concurrency=config["concurrency"],
                                 policy=self.retry, progress=tick)
            for r in runs:
                for g in r.task + r.general:
                    self.metrics.eval_generations.labels("error" if g.error else "ok").inc()
            judge, pair = None, None
            if spec.judge:
                judge, pair = await self._judge(spec, targets, runs, examples, config)
            report, samples = await offload(
                build_report, runs, examples, task, general, config["baseline"], judge, pair)
            report["reused_generations"] = {name: src for name, (src, _) in reused.items()}
            report["regenerated"] = {r.target.name: len(r.task) + len(r.general) - r.reused
                                     for r in runs if r.target.name in reused}
            status = "succeeded" if report["complete"] else "incomplete"
            await self._finish(run_id, status, report, samples, None,
                               time.perf_counter() - start)
        except asyncio.CancelledError:
            await self._finish(run_id, "failed", None, None,
                               {"code": "interrupted", "message": "the gateway stopped"},
                               time.perf_counter() - start)
            raise
        except Exception as exc:  # a run must end with a stored status, never vanish
            log.exception("eval run failed", extra={"eval_id": run_id})
            await self._finish(run_id, "failed", None, None,
                               {"code": "eval_failed", "message": f"{exc.__class__.__name__}: {exc}"},
                               time.perf_counter() - start)
        finally:
            self._progress.pop(run_id, None)

    async def _judge(self, spec: EvalCreate, targets: list[Target], runs: list, examples: list[Example],
                     config: dict[str, Any]) -> tuple[list[dict], tuple[str, str]]:
        j = spec.judge
        if j is None:
            raise ValueError("no judge in this eval's spec")
        by_name = {r.target.name: r for r in runs}
        base = j.base or config["baseline"]
        cand = j.candidate or next(t.name for t in targets if t.name != base)
        if cand not in by_name or base not in by_name:
            raise InvalidRequest("judge candidate/base must be target names")
        default = self.settings.inference_url.rstrip("/") + "/v1"
        judge_t = Target("judge", j.base_url or default, j.model, j.api_key)
        res = await judge_pairs(judge_t, examples, by_name[cand].task, by_name[base].task,
                                concurrency=config["concurrency"],
                                timeout=self.retry.timeout_max_s, limit=j.max_examples)
        return res, (cand, base)

    # -- reuse of earlier generations ----------------------------------------------------
    async def _weights(self, targets: list[Target]) -> dict[str, str]:
        """Which immutable weights each target is served by: ``<served name>@<model id or path>``.

        Only for targets on our own inference (served names never change weights; an alias is
        resolved to the served name it points at now). Unknown → no entry → generated afresh."""
        default = self.settings.inference_url.rstrip("/") + "/v1"
        ours = [t for t in targets if t.base_url == default]
        if not ours or self.inference is None:
            return {}
        try:
            deployments = await self.inference.deployments()
            aliases = {a.id: a.model for a in await self.inference.aliases()}
        except Exception as exc:  # reuse is an optimisation, never a failure
            log.info("eval reuse off for this run: %s", exc)
            return {}
        out = {}
        for t in ours:
            served = aliases.get(t.model, t.model)
            dep = next((d for d in deployments if d.model == served), None)
            if dep and (dep.model_id or dep.path):
                out[t.name] = f"{served}@{dep.model_id or dep.path}"
                if t.shots is not None:  # same weights, other prompts: other answers
                    out[t.name] += f"#shots:{shots_fingerprint(t.shots)}"
        return out

    async def _reusable(self, run_id: str, targets: list[Target], examples: list[Example],
                        general: list[dict], config: dict[str, Any]) -> dict[str, tuple[str, TargetRun]]:
        """Earlier runs' generations for targets with the same weights (and few-shot prompt), on
        the same eval set (same source, prompts and general suite) with the same max_tokens.
        Greedy decoding makes them the same answers. From a succeeded or an incomplete run: the
        answers are kept, the failed ones are generated again; the prior with the most answers
        (then the newest) wins."""
        if not any(t.get("weights") for t in config["targets"]):
            return {}
        rows = await self.repo.finished(other_than=run_id)
        return await offload(_reusable_from, rows, targets, examples, general, config)

    # -- storage -----------------------------------------------------------------------
    async def _finish(self, run_id: str, status: str, report: dict | None, samples: list | None,
                      error: dict | None, duration: float) -> None:
        if await self.repo.finish(run_id, status, report, samples, error, duration):
            self.metrics.eval_runs.labels(status).inc()

    async def get(self, run_id: str) -> dict[str, Any]:
        return run_view(await self.repo.get(run_id), progress=self._progress.get(run_id))

    async def samples(self, run_id: str, suite: str | None, offset: int, limit: int) -> dict[str, Any]:
        row = await self.repo.get(run_id)
        items = [s for s in row.samples or [] if suite is None or s["suite"] == suite]
        page = items[offset:offset + limit]
        return {"object": "list", "data": page, "has_more": offset + limit < len(items),
                "total": len(items)}

    async def list(self, limit: int, offset: int) -> dict[str, Any]:
        data = [run_view(r, full=False) for r in await self.repo.page(limit + 1, offset)]
        return {"object": "list", "data": data[:limit], "has_more": len(data) > limit}


def _reusable_from(rows: list[EvalRun], targets: list[Target], examples: list[Example],
                   general: list[dict], config: dict[str, Any]) -> dict[str, tuple[str, TargetRun]]:
    """:meth:`EvalService._reusable` over the earlier runs ``rows`` (newest first); blocking
    (every prior sample is compared)."""
    want = {t["name"]: t["weights"] for t in config["targets"] if t.get("weights")}
    same = ("max_tokens", "general_suite", "n_examples")
    eval_set = _eval_set(config)
    found: dict[str, tuple[str, TargetRun]] = {}
    for row in rows:
        if (any(row.config.get(k) != config.get(k) for k in same) or not row.samples
                or _eval_set(row.config) != eval_set):
            continue
        for prior in row.config.get("targets", []):
            for t in targets:
                if not (prior.get("weights") and prior["weights"] == want.get(t.name)):
                    continue
                run = _target_run_from_samples(t, prior["name"], row.samples, examples, general)
                if run is not None and (t.name not in found or _answered(run) > _answered(found[t.name][1])):
                    found[t.name] = (row.id, run)
    return found

def _target_run_from_samples(target: Target, name: str, samples: list[dict], examples: list[Example],
                             general: list[dict]) -> TargetRun | None:
    """Rebuild one target's generations from stored samples (a failed one stays failed, to be
    generated again), or None if the prompts, the suite or the layout differ."""
    general = general if target.general else []
    task = [x for x in samples if x.get("suite") == "task"]
    gen = [x for x in samples if x.get("suite") == "general"] if target.general else []
    if len(task) != len(examples) or len(gen) != len(general):
        return None
    out = TargetRun(target)
    for x, ex in zip(task, examples, strict=True):
        o = (x.get("outputs") or {}).get(name)
        if not o or x.get("prompt") != ex.messages or "latency_ms" not in o:
            return None
        out.task.append(_stored_generation(o))
    for x, it in zip(gen, general, strict=True):
        o = (x.get("outputs") or {}).get(name)
        if not o or x.get("id") != it["id"] or "latency_ms" not in o:
            return None
        out.general.append(_stored_generation(o))
    out.reused = _answered(out)
    return out if out.reused else None


def _stored_generation(o: dict[str, Any]) -> Generation:
    if o.get("error"):
        return Generation(error=o["error"], attempts=int(o.get("attempts") or 1))
    return Generation(o["output"], o["latency_ms"] / 1000, int(o.get("completion_tokens") or 0))


def _answered(run: TargetRun) -> int:
    return sum(1 for g in run.task + run.general if not g.error)


def _eval_set(config: dict[str, Any]) -> Any:
    """The eval set a run used: a dataset version (immutable), or inline rows (then the prompts
    are compared one by one as well)."""
    src = config.get("source") or {}
    return src.get("dataset_id") or ("rows", src.get("rows"))

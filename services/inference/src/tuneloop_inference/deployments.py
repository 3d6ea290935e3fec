"""Deployments on this replica: bring-up, restart, runtime LoRA adapters, placement, retire.

A deployment is brought up as a task (placed on GPUs or CPU cores before its first await, so
concurrent bring-ups see each other), smoke-checked, then routed. A health restart starts the
engine process again and re-attaches its adapters. Retiring unroutes first, drains in-flight
requests, then stops the engine (or unloads the adapter) and frees its placement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop import layout
from tuneloop.storage import ArtifactStore
from tuneloop.offload import offloaded

from .db import Deployment, ReplicaDeployment
from .engines import Engine, EngineError, make_engine
from .metrics import InferenceMetrics
from .observed import ObservedState
from .placement import CpuCores, GpuAllocator, PlacementError, detect_gpus
from .repository import DesiredState
from .routing import RoutingTable
from .settings import InferenceSettings
from .sources import SourceChecks

log = logging.getLogger("tuneloop.inference.deployments")


@dataclass
class LocalDeployment:
    """What this replica holds for one deployment."""

    id: str
    name: str
    engine: Engine | None = None          # own process (None for a LoRA adapter)
    base: Engine | None = None            # the engine an adapter is attached to
    adapter_dir: str | None = None        # local adapter folder (re-attached after a restart)
    state: str = "starting"
    error: str | None = None
    task: asyncio.Task | None = None      # bring-up / restart in progress
    failures: int = 0
    restarts: int = 0
    ready_event: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def serving_engine(self) -> Engine | None:
        return self.engine or self.base


class Deployments:
    def __init__(self, settings: InferenceSettings, repo: DesiredState, observed: ObservedState,
                 routing: RoutingTable, store: ArtifactStore, metrics: InferenceMetrics,
                 kind: str, device: str) -> None:
        self.settings, self.repo, self.observed, self.routing = settings, repo, observed, routing
        self.store, self.metrics, self.kind = store, metrics, kind
        self.local: dict[str, LocalDeployment] = {}     # deployment id -> local state
        self.log_dir = settings.data_dir / "logs" / "engines"
        self.cache_dir = settings.data_dir / "model-cache"
        self.gpus = (GpuAllocator(gpu_pool(settings), settings.gpu_memory_budget)
                     if kind == "vllm" and device == "cuda" else None)
        self.cpu_cores = (CpuCores(sorted(os.sched_getaffinity(0)))
                          if kind == "vllm" and device == "cpu"
                          and settings.vllm_cpu_threads_bind == "auto" else None)
        self.checks = SourceChecks(settings, store, routing, kind, device, self.gpus)

    # ------------------------------------------------------------------ create / read
    async def create(self, *, model_id: str | None = None, name: str | None = None,
                     path: str | None = None, adapter_of: str | None = None,
                     tensor_parallel_size: int | None = None,
                     wait: bool = False) -> tuple[Deployment, bool]:
        """Register (or re-activate) a deployment and bring it up here. Returns (row, created)."""
        src = await self.checks.source(model_id, name, path, adapter_of)
        if tensor_parallel_size is None:  # re-creating keeps what it was deployed with
            existing = await self.repo.find_by_name(src.name)
            tensor_parallel_size = existing.tensor_parallel_size if existing else None
        held = self.by_name(src.name)
        tp = self.checks.tensor_parallel(tensor_parallel_size, src, placed=held is not None and
                                         held.state in ("ready", "restarting", "starting"))
        row, created = await self.repo.upsert_deployment(src.name, src.model_id, src.path,
                                                         src.adapter_of, tp)
        loc = self.ensure_local(row)
        if wait and loc.task is not None:
            await asyncio.shield(loc.task)
        return row, created

    def by_name(self, name: str) -> LocalDeployment | None:
        return next((loc for loc in self.local.values() if loc.name == name), None)

    async def get(self, ident: str) -> dict[str, Any]:
        row, replicas = await self.repo.load_deployment(ident)
        return self.describe(row, replicas)

    async def list_all(self) -> list[dict[str, Any]]:
        return [self.describe(row, reps) for row, reps in await self.repo.load_all_deployments()]

    def describe(self, row: Deployment, replicas: list[ReplicaDeployment]) -> dict[str, Any]:
        """The API view: desired state from the row, live state from this replica if it holds it."""
        loc = self.local.get(row.id)
        state = loc.state if loc is not None else row.state
        error = loc.error if loc is not None else row.error
        if row.desired == "stopped":
            state = "stopped"
        engine = loc.serving_engine if loc is not None else None
        return {
            "id": row.id, "object": "deployment", "model": row.name, "model_id": row.model_id,
            "path": row.path, "adapter_of": row.adapter_of, "state": state, "desired": row.desired,
            "engine": row.engine, "tensor_parallel_size": row.tensor_parallel_size or 1,
            "error": error, "created_at": row.created_at,
            "local": ({**engine.describe(), "restarts": loc.restarts} if engine and loc else None),
            "replicas": [{"replica": r.replica_id, "state": r.state, "url": r.url,
                          "restarts": r.restarts, "error": r.error, "updated_at": r.updated_at}
                         for r in replicas],
        }

    # ------------------------------------------------------------------ bring-up
    def ensure_local(self, row: Deployment) -> LocalDeployment:
        """Start bringing ``row`` up on this replica unless it is already up or coming up."""
        self.routing.known.add(row.name)
        loc = self.local.get(row.id)
        if loc is not None and (loc.state in ("ready", "restarting") or
                                (loc.task is not None and not loc.task.done())):
            return loc
        loc = LocalDeployment(id=row.id, name=row.name)
        self.local[row.id] = loc
        loc.task = asyncio.create_task(self._bring_up(loc, row))
        return loc

    async def _bring_up(self, loc: LocalDeployment, row: Deployment) -> None:
        t0 = time.monotonic()
        try:
            tp = row.tensor_parallel_size or 1
            gpus = None  # placed before the first await: concurrent bring-ups see each other
            if not row.adapter_of and self.gpus is not None:
                gpus = self.gpus.place(row.id, tp, self.settings.gpu_memory_utilization)
            cpus = (self.cpu_cores.place(row.id)
                    if not row.adapter_of and self.cpu_cores is not None else None)
            await self.observed.deployment(loc, "starting")
            if row.adapter_of:
                await self._attach_adapter(loc, row)
            else:
                model_dir = await self._model_dir(row)
                loc.engine = make_engine(self.kind, name=row.name, model_dir=model_dir,
                                         settings=self.settings,
                                         log_path=self.log_dir / f"{row.id}.log",
                                         tensor_parallel_size=tp, gpus=gpus, cpus=cpus)
                await self._start_engine(loc.engine)
        except (EngineError, PlacementError, OSError, ValueError) as exc:
            code = getattr(exc, "code", "model_load_failed")
            loc.state, loc.error = "failed", f"{code}: {exc}"
            log.warning("deployment failed", extra={"deployment": row.id, "error": loc.error})
            if loc.engine is not None:
                await loc.engine.stop()
            self._release(row.id)
            await self.observed.deployment(loc, "failed", loc.error, aggregate=True)
            return
        loc.state, loc.error = "ready", None
        engine = loc.serving_engine
        assert engine is not None
        self.routing.routes[row.name] = engine
        self.metrics.engine_load.labels(engine.kind).observe(time.monotonic() - t0)
        self._count_ready()
        loc.ready_event.set()
        await self.observed.deployment(loc, "ready", aggregate=True)
        await self.observed.aliases(self.routing.follow_desired())

    async def _start_engine(self, engine: Engine) -> None:
        await engine.start()
        try:
            await engine.wait_ready()
            await engine.smoke()
        except BaseException:
            await engine.stop()
            raise
        engine.state = "ready"

    async def _attach_adapter(self, loc: LocalDeployment, row: Deployment) -> None:
        base = self.routing.routes.get(row.adapter_of or "")
        if base is None or not hasattr(base, "load_lora"):
            raise EngineError(f"base '{row.adapter_of}' is not served by a vllm engine here",
                              "model_load_failed")
        adapter_dir = await self._artifact_dir(layout.model_adapter(row.model_id or ""),
                                               row.model_id or row.id)
        await base.load_lora(row.name, str(adapter_dir))
        loc.base, loc.adapter_dir = base, str(adapter_dir)
        try:
            await base.smoke(row.name)  # the adapter under its own name (the base keeps its own)
        except BaseException:
            with contextlib.suppress(Exception):  # do not leave a broken adapter loaded
                await base.unload_lora(row.name)  # type: ignore[attr-defined]
            raise

    async def _model_dir(self, row: Deployment) -> str:
        if row.path:
            return await _model_folder(row.path)
        return str(await self._artifact_dir(layout.model_merged(row.model_id or ""),
                                            row.model_id or row.id))

    @offloaded
    def _artifact_dir(self, key: str, ident: str) -> Path:
        """The artifact's local copy (downloaded into the model cache from an object store)."""
        if not self.store.exists(key):
            raise EngineError(f"artifact '{key}' not found in the store", "model_load_failed")
        return self.store.get_dir(key, self.cache_dir / ident / key.rsplit("/", 1)[-1])

    def _release(self, dep_id: str) -> None:
        """Free what the engine was placed on: its GPUs, or its CPU cores."""
        if self.gpus is not None:
            self.gpus.release(dep_id)
        if self.cpu_cores is not None:
            self.cpu_cores.release(dep_id)

    def _count_ready(self) -> None:
        self.metrics.engines_ready.set(sum(1 for x in self.local.values() if x.state == "ready"))

    # ------------------------------------------------------------------ restart
    async def restart(self, loc: LocalDeployment) -> None:
        """Start a dead or unanswering engine again (backoff between attempts); its runtime
        adapters are loaded again. After ``max_restarts`` failures it is unrouted: failed."""
        engine = loc.engine
        assert engine is not None
        await self.observed.deployment(loc, "restarting")
        for attempt in range(1, self.settings.max_restarts + 1):
            engine.kill_process()
            loc.restarts += 1
            engine.restarts = loc.restarts
            self.metrics.engine_restarts.labels(loc.name).inc()
            try:
                await self._start_engine(engine)
            except EngineError as exc:
                loc.error = f"{exc.code}: {exc}"
                await asyncio.sleep(min(30.0, 2.0 ** attempt))
                continue
            await self._reattach_adapters(engine)
            loc.state, loc.failures, loc.error = "ready", 0, None
            await self.observed.deployment(loc, "ready", aggregate=True)
            return
        loc.state = "failed"
        self.routing.routes.pop(loc.name, None)
        engine.kill_process()
        self._release(loc.id)
        await self.observed.deployment(loc, "failed", loc.error, aggregate=True)

    async def _reattach_adapters(self, engine: Engine) -> None:
        """A restarted vLLM process has lost its runtime LoRA adapters: load them again."""
        for other in list(self.local.values()):
            if other.base is not engine or other.adapter_dir is None or other.state != "ready":
                continue
            try:
                await engine.load_lora(other.name, other.adapter_dir)  # type: ignore[attr-defined]
            except EngineError as exc:
                other.state, other.error = "failed", f"{exc.code}: {exc}"
                self.routing.unroute(other.name, engine)
                await self.observed.deployment(other, "failed", other.error, aggregate=True)

    # ------------------------------------------------------------------ retire
    async def retire(self, dep_id: str) -> None:
        """Unroute, drain in-flight requests, then stop the engine (or unload the adapter)."""
        loc = self.local.get(dep_id)
        if loc is None:
            return
        if loc.task is not None and not loc.task.done():
            loc.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loc.task
        engine = loc.serving_engine
        self.routing.unroute(loc.name, engine)
        self.routing.known.discard(loc.name)
        loc.state = "stopped"
        if engine is not None:
            drained = await engine.drain(self.settings.drain_timeout_s)
            if not drained:
                log.warning("drain timed out", extra={"deployment": dep_id,
                                                      "in_flight": engine.in_flight})
            if loc.engine is not None:
                await loc.engine.stop()
                self._release(dep_id)
            elif loc.base is not None and hasattr(loc.base, "unload_lora"):
                with contextlib.suppress(Exception):
                    await loc.base.unload_lora(loc.name)
        self.local.pop(dep_id, None)
        self._count_ready()
        await self.observed.deployment(loc, "stopped")

    async def delete(self, ident: str) -> dict[str, Any]:
        """Stop serving a deployment everywhere (desired = stopped; 409 while an alias or an
        adapter uses it) and drain + stop it here. The row stays for rollback."""
        async with self.routing.swap_lock:
            row = await self.repo.stop_deployment(ident)
            await self.retire(row.id)
        return await self.get(row.id)

    async def shutdown(self) -> None:
        """Stop this replica's engines (bring-ups cancelled); the desired state is left as is."""
        for loc in list(self.local.values()):
            if loc.task and not loc.task.done():
                loc.task.cancel()
        self.routing.routes.clear()
        await asyncio.gather(*(loc.engine.stop() for loc in self.local.values() if loc.engine),
                             return_exceptions=True)


@offloaded
def _model_folder(path: str) -> str:
    if not Path(path, "config.json").is_file():
        raise EngineError(f"model folder '{path}' is gone", "model_load_failed")
    return path


def gpu_pool(settings: InferenceSettings) -> list[str]:
    """GPUs this replica places vLLM engines on: ``INFERENCE_GPU_IDS``, else the service's own
    ``CUDA_VISIBLE_DEVICES``, else what ``nvidia-smi -L`` lists, else GPU 0."""
    if settings.gpu_ids:
        return list(settings.gpu_ids)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible:
        return [g.strip() for g in visible.split(",") if g.strip()]
    return detect_gpus() or ["0"]

"""The controller: desired state in the DB, engines on this replica, routing, blue/green swaps.

Desired state (shared by every replica): deployments (``desired`` = serving | stopped) and
aliases. Each replica runs :meth:`Controller.reconcile_once` in a loop: it starts an engine for
every deployment it should serve, flips an alias locally only once the target version is ready
*here* (until then the old version keeps answering), and drains + stops engines that are no
longer wanted. What each replica actually serves is written back (observed state), so an alias
counts as flipped only when every live replica routes it to the new version.

Routing is a dict lookup (served name or alias -> engine) done without awaiting, so a flip is
atomic for the event loop: a request either got the old engine (and holds an in-flight slot
that the drain waits for) or gets the new one.

vLLM engines are placed on GPUs by :class:`~.placement.GpuAllocator` (``tensor_parallel_size``
GPUs each, ``CUDA_VISIBLE_DEVICES``): a new engine that does not fit next to the ones serving is
refused up front, so a swap never needs to stop the serving side first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select

from tuneloop.db import Database
from tuneloop.errors import Conflict, InvalidRequest, NotFound, ServiceUnavailable, Unprocessable
from tuneloop.ids import is_valid_id, new_id
from tuneloop.storage import ArtifactStore

from .db import Alias, AliasHistory, Deployment, Replica, ReplicaAlias, ReplicaDeployment
from .engines import Engine, EngineError, make_engine, resolve_engine_kind, vllm_device
from .metrics import InferenceMetrics
from .placement import CpuCores, GpuAllocator, PlacementError, detect_gpus
from .settings import InferenceSettings

log = logging.getLogger("tuneloop.inference.controller")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")


def _now() -> int:
    return int(time.time())


ADAPTER_SUFFIX = ".lora"  # served name of a version attached as a runtime LoRA adapter


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


class Controller:
    def __init__(self, settings: InferenceSettings, db: Database, store: ArtifactStore,
                 metrics: InferenceMetrics) -> None:
        self.settings = settings
        self.db = db
        self.store = store
        self.metrics = metrics
        self.kind = resolve_engine_kind(settings)
        self.device = vllm_device(settings) if self.kind == "vllm" else "cpu"
        self.replica = settings.replica_id
        self.local: dict[str, LocalDeployment] = {}     # deployment id -> local state
        self.routes: dict[str, Engine] = {}             # served name -> ready engine
        self.aliases: dict[str, str] = {}               # alias -> served name (local routing)
        self.known: set[str] = set()                    # served names desired somewhere
        self._swap_lock = asyncio.Lock()                 # swaps and reconcile steps
        self._desired_aliases: dict[str, str] | None = None  # last DB snapshot (under the lock)
        self._loops: list[asyncio.Task] = []
        self._last_heartbeat = 0.0
        self._stopping = False
        self.log_dir = settings.data_dir / "logs" / "engines"
        self.cache_dir = settings.data_dir / "model-cache"
        self.gpus = (GpuAllocator(gpu_pool(settings), settings.gpu_memory_budget)
                     if self.kind == "vllm" and self.device == "cuda" else None)
        self.cpu_cores = (CpuCores(sorted(os.sched_getaffinity(0)))
                          if self.kind == "vllm" and self.device == "cpu"
                          and settings.vllm_cpu_threads_bind == "auto" else None)

    # ================================================================== lifecycle
    async def start(self) -> None:
        await asyncio.to_thread(self._startup_rows)
        if self.settings.base_model_path:
            await self._bootstrap_base()
        await self.reconcile_once()
        self._loops = [asyncio.create_task(self._loop(self.reconcile_once,
                                                      self.settings.reconcile_interval_s)),
                       asyncio.create_task(self._loop(self.health_once,
                                                      self.settings.health_interval_s))]

    async def shutdown(self) -> None:
        """Stop this replica's engines; the desired state in the DB is left as it is."""
        self._stopping = True
        for task in self._loops:
            task.cancel()
        for loc in list(self.local.values()):
            if loc.task and not loc.task.done():
                loc.task.cancel()
        await asyncio.gather(*(t for t in self._loops), return_exceptions=True)
        self.routes.clear()
        await asyncio.gather(*(loc.engine.stop() for loc in self.local.values() if loc.engine),
                             return_exceptions=True)
        await asyncio.to_thread(self._forget_replica)

    async def _loop(self, fn, interval: float) -> None:  # noqa: ANN001
        while True:
            await asyncio.sleep(interval)
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("controller loop step failed")

    def _startup_rows(self) -> None:
        """Register the replica; kill engines a crashed predecessor of this replica left behind."""
        with self.db.session() as s:
            for row in s.scalars(select(ReplicaDeployment).where(
                    ReplicaDeployment.replica_id == self.replica)):
                if row.pid:
                    _kill_orphan(row.pid)
            s.execute(delete(ReplicaDeployment).where(ReplicaDeployment.replica_id == self.replica))
            s.execute(delete(ReplicaAlias).where(ReplicaAlias.replica_id == self.replica))
            s.merge(Replica(id=self.replica, last_seen=time.time(), started_at=_now()))

    def _forget_replica(self) -> None:
        with self.db.session() as s:
            s.execute(delete(ReplicaDeployment).where(ReplicaDeployment.replica_id == self.replica))
            s.execute(delete(ReplicaAlias).where(ReplicaAlias.replica_id == self.replica))
            s.execute(delete(Replica).where(Replica.id == self.replica))

    async def _bootstrap_base(self) -> None:
        name, path = self.settings.base_model_name, self.settings.base_model_path
        existing = await asyncio.to_thread(self._find_by_name, name)
        if existing is None:
            await self.create_deployment(name=name, path=path, wait=False)

    # ================================================================== routing
    def resolve(self, requested: str) -> tuple[Engine, str]:
        """Alias or served name -> (ready engine, served name). No await: atomic vs. flips."""
        served = self.aliases.get(requested, requested)
        engine = self.routes.get(served)
        if engine is not None and engine.state == "ready":
            return engine, served
        if served in self.known or requested in self.aliases:
            raise ServiceUnavailable(f"model '{requested}' is not ready on this replica yet",
                                     code="model_not_ready", param="model")
        raise NotFound(f"The model '{requested[:200]}' does not exist", code="model_not_found",
                       param="model")

    def list_models(self) -> list[dict[str, Any]]:
        out = []
        for name, engine in sorted(self.routes.items()):
            if engine.state == "ready":
                out.append({"id": name, "object": "model", "created": 0, "owned_by": "tuneloop",
                            "root": name, "engine": engine.kind})
        for alias, served in sorted(self.aliases.items()):
            if served in self.routes:
                out.append({"id": alias, "object": "model", "created": 0, "owned_by": "tuneloop",
                            "root": served, "alias_of": served})
        return out

    def serves(self, name: str) -> bool:
        try:
            self.resolve(name)
            return True
        except (NotFound, ServiceUnavailable):
            return False

    # ================================================================== deployments
    async def create_deployment(self, *, model_id: str | None = None, name: str | None = None,
                                path: str | None = None, adapter_of: str | None = None,
                                tensor_parallel_size: int | None = None,
                                wait: bool = False) -> tuple[dict[str, Any], bool]:
        """Register (or re-activate) a deployment and bring it up here. Returns (object, created)."""
        name, path, adapter_of = self._validate_source(model_id, name, path, adapter_of)
        if tensor_parallel_size is None:  # re-creating keeps what it was deployed with
            existing = await asyncio.to_thread(self._find_by_name, name)
            tensor_parallel_size = existing.tensor_parallel_size if existing else None
        tp = self._validate_tp(tensor_parallel_size, name, model_id, path, adapter_of)
        row, created = await asyncio.to_thread(self._upsert_deployment, name, model_id, path,
                                               adapter_of, tp)
        loc = self._ensure_local(row)
        if wait and loc.task is not None:
            await asyncio.shield(loc.task)
        return await self.get_deployment(row.id), created

    def _validate_source(self, model_id: str | None, name: str | None, path: str | None,
                         adapter_of: str | None) -> tuple[str, str | None, str | None]:
        if bool(model_id) == bool(path):
            raise InvalidRequest("give exactly one of `model_id` (a trained model version) or "
                                 "`path` (a local model folder)", param="model_id")
        if model_id:
            if not is_valid_id(model_id, "mv"):
                raise InvalidRequest(f"model_id '{model_id[:80]}' is not a model version id "
                                     "(mv-...)", param="model_id", code="invalid_model_id")
            # a runtime adapter and the merged weights of one version are different deployments
            # (two engines' caches): each keeps an immutable served name of its own
            own = f"{model_id}{ADAPTER_SUFFIX}" if adapter_of else model_id
            if name and name != own:
                raise InvalidRequest(f"a model version is served under '{own}'; omit `name`",
                                     param="name")
            name = own
            key = f"models/{model_id}/adapter" if adapter_of else f"models/{model_id}/merged"
            if not self.store.exists(key):
                raise NotFound(f"model version '{model_id}' has no {key.rsplit('/', 1)[-1]} "
                               "artifact in the store", code="model_not_found", param="model_id")
        else:
            if not name:
                raise InvalidRequest("`name` is required with `path`", param="name")
            if adapter_of:
                raise InvalidRequest("`adapter_of` needs a `model_id`", param="adapter_of")
            p = Path(path)  # type: ignore[arg-type]
            if not p.is_absolute():
                p = p.resolve()
            if not (p / "config.json").is_file():
                raise InvalidRequest(f"path '{path}' is not a model folder (no config.json)",
                                     param="path", code="invalid_model_path")
            path = str(p)
        if not NAME_RE.match(name):
            raise InvalidRequest("name: letters, digits, '.', '_', ':', '-' (max 128)",
                                 param="name")
        if name in self.aliases:
            raise Conflict(f"'{name}' is an alias; served names and aliases must differ",
                           code="name_taken", param="name")
        if adapter_of:
            base = self.routes.get(adapter_of)
            if self.kind != "vllm" or (base is not None and not getattr(base, "lora", False)):
                raise InvalidRequest("runtime LoRA adapters need the vllm engine with LoRA on "
                                     f"for '{adapter_of}' (INFERENCE_VLLM_ENABLE_LORA; on CPU "
                                     "by default for the base deployment)", param="adapter_of",
                                     code="lora_unsupported")
            if adapter_of not in self.routes:
                raise InvalidRequest(f"base deployment '{adapter_of}' is not ready here",
                                     param="adapter_of", code="model_not_ready")
        return name, path, adapter_of

    def _validate_tp(self, tp: int | None, name: str, model_id: str | None, path: str | None,
                     adapter_of: str | None) -> int:
        """``tensor_parallel_size``: vLLM only, a divisor of the model's attention heads, at most
        the GPUs of this replica, and (for an engine not up yet) room on them right now."""
        if adapter_of:
            if tp not in (None, 1):
                raise InvalidRequest("a runtime LoRA adapter runs in its base's engine (and its "
                                     "tensor parallelism); omit tensor_parallel_size",
                                     param="tensor_parallel_size", code="invalid_request")
            return 1
        tp = tp or self.settings.tensor_parallel_size
        if tp == 1 and self.gpus is None:
            return tp
        if self.gpus is None:
            raise InvalidRequest(f"tensor_parallel_size={tp} needs the vllm engine on GPUs (this "
                                 f"replica runs the {self.kind} engine on {self.device}, one "
                                 "process per model)",
                                 param="tensor_parallel_size", code="tensor_parallel_unsupported")
        heads = self._attention_heads(model_id, path)
        if heads and heads % tp:
            raise InvalidRequest(f"tensor_parallel_size={tp} must divide the model's "
                                 f"{heads} attention heads", param="tensor_parallel_size",
                                 code="invalid_tensor_parallel_size")
        existing = self.local.get(self._dep_id_of(name) or "")
        if existing is not None and existing.state in ("ready", "restarting", "starting"):
            return tp  # already holds its GPUs here
        try:
            self.gpus.check(tp, self.settings.gpu_memory_utilization)
        except PlacementError as exc:
            if exc.code == "not_enough_gpus":
                raise InvalidRequest(str(exc), param="tensor_parallel_size",
                                     code="not_enough_gpus") from exc
            raise Conflict(f"cannot place '{name}': {exc}", code=exc.code,
                           param="tensor_parallel_size") from exc
        return tp

    def _dep_id_of(self, name: str) -> str | None:
        return next((d for d, loc in self.local.items() if loc.name == name), None)

    def _attention_heads(self, model_id: str | None, path: str | None) -> int | None:
        try:
            if path:
                cfg = json.loads(Path(path, "config.json").read_text())
            else:
                cfg = json.loads(self.store.read_bytes(f"models/{model_id}/merged/config.json"))
        except (OSError, ValueError, KeyError):
            return None
        cfg = cfg.get("text_config") or cfg
        heads = cfg.get("num_attention_heads")
        return heads if isinstance(heads, int) else None

    def _upsert_deployment(self, name: str, model_id: str | None, path: str | None,
                           adapter_of: str | None, tp: int = 1) -> tuple[Deployment, bool]:
        with self.db.session() as s:
            row = s.scalars(select(Deployment).where(Deployment.name == name)).first()
            if row is not None:
                if (row.model_id, row.path, row.adapter_of) != (model_id, path, adapter_of):
                    raise Conflict(f"served name '{name}' already names other weights; served "
                                   "names are immutable (deploy under a new name)",
                                   code="served_name_taken", param="name")
                if (row.tensor_parallel_size or 1) != tp:
                    if row.desired == "serving":
                        raise Conflict(f"'{name}' is serving with tensor_parallel_size="
                                       f"{row.tensor_parallel_size}; delete it first to change that",
                                       code="deployment_conflict", param="tensor_parallel_size")
                    row.tensor_parallel_size = tp
                if row.desired != "serving" or row.state == "failed":
                    row.desired, row.state, row.error, row.updated_at = ("serving", "starting",
                                                                         None, _now())
                return row, False
            row = Deployment(id=new_id("dep"), name=name, model_id=model_id, path=path,
                             adapter_of=adapter_of, engine=self.kind, tensor_parallel_size=tp,
                             desired="serving",
                             state="starting", created_at=_now(), updated_at=_now())
            s.add(row)
            return row, True

    def _ensure_local(self, row: Deployment) -> LocalDeployment:
        """Start bringing ``row`` up on this replica unless it is already up or coming up."""
        self.known.add(row.name)
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
            await asyncio.to_thread(self._observe, loc, "starting")
            if row.adapter_of:
                await self._attach_adapter(loc, row)
            else:
                model_dir = await asyncio.to_thread(self._model_dir, row)
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
            self._release_gpus(row.id)
            await asyncio.to_thread(self._observe, loc, "failed", loc.error, aggregate=True)
            return
        loc.state, loc.error = "ready", None
        engine = loc.serving_engine
        assert engine is not None
        self.routes[row.name] = engine
        self.metrics.engine_load.labels(engine.kind).observe(time.monotonic() - t0)
        self.metrics.engines_ready.set(sum(1 for x in self.local.values() if x.state == "ready"))
        loc.ready_event.set()
        await asyncio.to_thread(self._observe, loc, "ready", aggregate=True)
        await self._apply_aliases()

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
        base = self.routes.get(row.adapter_of or "")
        if base is None or not hasattr(base, "load_lora"):
            raise EngineError(f"base '{row.adapter_of}' is not served by a vllm engine here",
                              "model_load_failed")
        adapter_dir = await asyncio.to_thread(self._artifact_dir, f"models/{row.model_id}/adapter",
                                              row.model_id or row.id)
        await base.load_lora(row.name, str(adapter_dir))  # type: ignore[attr-defined]
        loc.base, loc.adapter_dir = base, str(adapter_dir)
        try:
            await base.smoke(row.name)  # the adapter under its own name (the base keeps its own)
        except BaseException:
            with contextlib.suppress(Exception):  # do not leave a broken adapter loaded
                await base.unload_lora(row.name)  # type: ignore[attr-defined]
            raise

    def _release_gpus(self, dep_id: str) -> None:
        """Free what the engine was placed on: its GPUs, or its CPU cores."""
        if self.gpus is not None:
            self.gpus.release(dep_id)
        if self.cpu_cores is not None:
            self.cpu_cores.release(dep_id)

    def _model_dir(self, row: Deployment) -> str:
        if row.path:
            if not Path(row.path, "config.json").is_file():
                raise EngineError(f"model folder '{row.path}' is gone", "model_load_failed")
            return row.path
        return str(self._artifact_dir(f"models/{row.model_id}/merged", row.model_id or row.id))

    def _artifact_dir(self, key: str, ident: str) -> Path:
        if not self.store.exists(key):
            raise EngineError(f"artifact '{key}' not found in the store", "model_load_failed")
        return self.store.get_dir(key, self.cache_dir / ident / key.rsplit("/", 1)[-1])

    async def get_deployment(self, dep_id: str) -> dict[str, Any]:
        row, replicas = await asyncio.to_thread(self._load_deployment, dep_id)
        return self._describe(row, replicas)

    async def list_deployments(self) -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(self._load_all_deployments)
        return [self._describe(row, replicas) for row, replicas in rows]

    def _describe(self, row: Deployment, replicas: list[ReplicaDeployment]) -> dict[str, Any]:
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

    def _load_deployment(self, ident: str) -> tuple[Deployment, list[ReplicaDeployment]]:
        with self.db.session() as s:
            row = s.get(Deployment, ident) or s.scalars(
                select(Deployment).where(Deployment.name == ident)).first()
            if row is None:
                raise NotFound(f"deployment '{ident[:80]}' not found",
                               code="deployment_not_found", param="id")
            reps = list(s.scalars(select(ReplicaDeployment).where(
                ReplicaDeployment.deployment_id == row.id)))
            return row, reps

    def _load_all_deployments(self) -> list[tuple[Deployment, list[ReplicaDeployment]]]:
        with self.db.session() as s:
            rows = list(s.scalars(select(Deployment).order_by(Deployment.created_at)))
            reps = list(s.scalars(select(ReplicaDeployment)))
        return [(r, [x for x in reps if x.deployment_id == r.id]) for r in rows]

    def _find_by_name(self, name: str) -> Deployment | None:
        with self.db.session() as s:
            return s.scalars(select(Deployment).where(Deployment.name == name)).first()

    async def delete_deployment(self, ident: str) -> dict[str, Any]:
        """Stop serving a deployment (desired = stopped); the row stays for rollback."""
        row, _ = await asyncio.to_thread(self._load_deployment, ident)
        async with self._swap_lock:
            users = await asyncio.to_thread(self._aliases_pointing_to, row.name)
            if users:
                raise Conflict(f"deployment '{row.name}' is the target of alias(es) {users}; "
                               "move or delete the alias first", code="deployment_in_use",
                               param="id")
            adapters = await asyncio.to_thread(self._adapters_of, row.name)
            if adapters:
                raise Conflict(f"deployment '{row.name}' serves the LoRA adapter(s) {adapters}; "
                               "delete them first", code="deployment_in_use", param="id")
            await asyncio.to_thread(self._set_desired, row.id, "stopped")
            await self._retire_local(row.id)
        return await self.get_deployment(row.id)

    def _adapters_of(self, name: str) -> list[str]:
        """Served names of adapters attached to ``name`` that should still be served."""
        with self.db.session() as s:
            return [d.name for d in s.scalars(select(Deployment).where(
                Deployment.adapter_of == name, Deployment.desired == "serving"))]

    def _aliases_pointing_to(self, name: str) -> list[str]:
        with self.db.session() as s:
            return [a.name for a in s.scalars(select(Alias).where(Alias.model == name))]

    def _set_desired(self, dep_id: str, desired: str) -> None:
        with self.db.session() as s:
            row = s.get(Deployment, dep_id)
            if row is not None:
                row.desired, row.updated_at = desired, _now()
                if desired == "stopped":
                    row.state = "stopped"

    async def _retire_local(self, dep_id: str) -> None:
        """Unroute, drain in-flight requests, then stop the engine (or unload the adapter)."""
        loc = self.local.get(dep_id)
        if loc is None:
            return
        if loc.task is not None and not loc.task.done():
            loc.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loc.task
        engine = loc.serving_engine
        if self.routes.get(loc.name) is engine:
            self.routes.pop(loc.name, None)
        self.known.discard(loc.name)
        loc.state = "stopped"
        if engine is not None:
            drained = await engine.drain(self.settings.drain_timeout_s)
            if not drained:
                log.warning("drain timed out", extra={"deployment": dep_id,
                                                      "in_flight": engine.in_flight})
            if loc.engine is not None:
                await loc.engine.stop()
                self._release_gpus(dep_id)
            elif loc.base is not None and hasattr(loc.base, "unload_lora"):
                with contextlib.suppress(Exception):
                    await loc.base.unload_lora(loc.name)  # type: ignore[attr-defined]
        self.local.pop(dep_id, None)
        self.metrics.engines_ready.set(sum(1 for x in self.local.values() if x.state == "ready"))
        await asyncio.to_thread(self._observe, loc, "stopped")

    # ================================================================== aliases
    async def set_alias(self, alias: str, model: str, *, retire_previous: bool = True,
                        action: str = "set",
                        tensor_parallel_size: int | None = None) -> dict[str, Any]:
        """Blue/green: bring ``model`` up (if needed) and smoke it, flip atomically, drain and
        stop the previous version. On load/smoke failure the alias is unchanged (422)."""
        if not NAME_RE.match(alias):
            raise InvalidRequest("alias: letters, digits, '.', '_', ':', '-' (max 128)",
                                 param="alias")
        async with self._swap_lock:
            t0 = time.monotonic()
            if await asyncio.to_thread(self._find_by_name, alias) is not None:
                raise Conflict(f"'{alias}' is a served name; pick another alias",
                               code="name_taken", param="alias")
            target = await asyncio.to_thread(self._find_by_name, model)
            if target is None:
                if alias == model:
                    raise InvalidRequest("an alias cannot point to itself", param="model")
                if is_valid_id(model, "mv"):  # same GPUs per engine as the version it replaces
                    tp = tensor_parallel_size or await asyncio.to_thread(self._alias_tp, alias)
                    await self.create_deployment(model_id=model, tensor_parallel_size=tp)
                    target = await asyncio.to_thread(self._find_by_name, model)
                else:
                    raise NotFound(f"no deployment serves '{model[:120]}'",
                                   code="model_not_found", param="model")
            elif target.desired != "serving" or target.state == "failed":
                await self.create_deployment(model_id=target.model_id, name=target.name,
                                             path=target.path, adapter_of=target.adapter_of,
                                             tensor_parallel_size=target.tensor_parallel_size)
            assert target is not None
            loc = self._ensure_local(target)
            if loc.task is not None and not loc.task.done():
                await asyncio.shield(loc.task)
            if loc.state != "ready":
                self.metrics.swaps.labels(alias, action, "rejected").inc()
                code = (loc.error or "model_load_failed").split(":", 1)[0]
                raise Unprocessable(f"'{model}' did not come up, alias '{alias}' unchanged: "
                                    f"{loc.error}", code=code, param="model")
            previous = self.aliases.get(alias)
            if previous is None:
                row = await asyncio.to_thread(self._get_alias_row, alias)
                previous = row.model if row else None
            # the flip: desired state first (other replicas follow), then local routing
            await asyncio.to_thread(self._write_alias, alias, model, previous, action)
            self.aliases[alias] = model
            if self._desired_aliases is not None:
                self._desired_aliases[alias] = model
            await asyncio.to_thread(self._observe_alias, alias, model)
            flipped_at = time.monotonic() - t0
            retired = None
            if retire_previous and previous and previous != model:
                retired = await self._maybe_retire(previous)
            seconds = time.monotonic() - t0
            self.metrics.swaps.labels(alias, action, "ok").inc()
            self.metrics.swap_duration.labels(alias).observe(seconds)
            await asyncio.to_thread(self._record_swap_seconds, alias, seconds)
        out = await self.get_alias(alias)
        out["swap"] = {"previous": previous, "retired": retired, "seconds": round(seconds, 3),
                       "flip_after_seconds": round(flipped_at, 3)}
        return out

    def _alias_tp(self, alias: str) -> int | None:
        """tensor_parallel_size of the deployment ``alias`` points to now (None: no alias)."""
        with self.db.session() as s:
            row = s.get(Alias, alias)
            if row is None:
                return None
            dep = s.scalars(select(Deployment).where(Deployment.name == row.model)).first()
            return dep.tensor_parallel_size if dep is not None and not dep.adapter_of else None

    async def _maybe_retire(self, name: str) -> str | None:
        """Stop the previous version unless another alias or the default model still uses it."""
        if name == self.settings.resolved_default_model():
            return None
        users = await asyncio.to_thread(self._aliases_pointing_to, name)
        if users or name in self.aliases.values():
            return None
        if await asyncio.to_thread(self._adapters_of, name):
            return None  # runtime LoRA adapters live in its engine: stopping it kills them
        row = await asyncio.to_thread(self._find_by_name, name)
        if row is None:
            return None
        await asyncio.to_thread(self._set_desired, row.id, "stopped")
        await self._retire_local(row.id)
        return name

    async def rollback(self, alias: str) -> dict[str, Any]:
        row = await asyncio.to_thread(self._get_alias_row, alias)
        if row is None:
            raise NotFound(f"alias '{alias[:80]}' not found", code="alias_not_found",
                           param="alias")
        if not row.previous:
            raise Conflict(f"alias '{alias}' has no previous version", code="no_previous_version",
                           param="alias")
        return await self.set_alias(alias, row.previous, action="rollback")

    async def delete_alias(self, alias: str) -> dict[str, Any]:
        row = await asyncio.to_thread(self._get_alias_row, alias)
        if row is None:
            raise NotFound(f"alias '{alias[:80]}' not found", code="alias_not_found",
                           param="alias")
        async with self._swap_lock:
            await asyncio.to_thread(self._delete_alias_rows, alias)
            self.aliases.pop(alias, None)
            if self._desired_aliases is not None:
                self._desired_aliases.pop(alias, None)
        return {"id": alias, "object": "alias", "deleted": True}

    def _get_alias_row(self, alias: str) -> Alias | None:
        with self.db.session() as s:
            return s.get(Alias, alias)

    def _write_alias(self, alias: str, model: str, previous: str | None, action: str) -> None:
        with self.db.session() as s:
            row = s.get(Alias, alias)
            if row is None:
                s.add(Alias(name=alias, model=model, previous=previous, updated_at=_now()))
            else:
                row.model, row.updated_at = model, _now()
                if previous != model:
                    row.previous = previous
            s.add(AliasHistory(alias=alias, model=model, previous=previous, action=action,
                               created_at=_now()))

    def _record_swap_seconds(self, alias: str, seconds: float) -> None:
        with self.db.session() as s:
            last = s.scalars(select(AliasHistory).where(AliasHistory.alias == alias)
                             .order_by(AliasHistory.id.desc())).first()
            if last is not None:
                last.swap_seconds = round(seconds, 3)

    def _delete_alias_rows(self, alias: str) -> None:
        with self.db.session() as s:
            s.execute(delete(Alias).where(Alias.name == alias))
            s.execute(delete(ReplicaAlias).where(ReplicaAlias.alias == alias))

    async def get_alias(self, alias: str) -> dict[str, Any]:
        data = await asyncio.to_thread(self._alias_view, alias)
        if data is None:
            raise NotFound(f"alias '{alias[:80]}' not found", code="alias_not_found",
                           param="alias")
        return data

    async def list_aliases(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._all_alias_views)

    def _all_alias_views(self) -> list[dict[str, Any]]:
        with self.db.session() as s:
            names = [a.name for a in s.scalars(select(Alias).order_by(Alias.name))]
        return [v for v in (self._alias_view(n) for n in names) if v is not None]

    def _alias_view(self, alias: str) -> dict[str, Any] | None:
        cutoff = time.time() - self.settings.replica_stale_s
        with self.db.session() as s:
            row = s.get(Alias, alias)
            if row is None:
                return None
            live = {r.id for r in s.scalars(select(Replica).where(Replica.last_seen >= cutoff))}
            observed = {r.replica_id: r.model for r in s.scalars(
                select(ReplicaAlias).where(ReplicaAlias.alias == alias)) if r.replica_id in live}
            history = [{"model": h.model, "previous": h.previous, "action": h.action,
                        "swap_seconds": h.swap_seconds, "created_at": h.created_at}
                       for h in s.scalars(select(AliasHistory).where(AliasHistory.alias == alias)
                                          .order_by(AliasHistory.id.desc()).limit(20))]
        converged = bool(live) and all(observed.get(r) == row.model for r in live)
        return {"id": alias, "object": "alias", "model": row.model, "previous": row.previous,
                "updated_at": row.updated_at, "replicas": observed, "converged": converged,
                "history": history}

    # ================================================================== reconcile + health
    async def reconcile_once(self) -> None:
        """Converge this replica on the desired state in the DB."""
        if self._stopping:
            return
        async with self._swap_lock:
            await self._reconcile_locked()

    async def _reconcile_locked(self) -> None:
        deployments, aliases = await asyncio.to_thread(self._desired_state)
        wanted = {d.id: d for d in deployments if d.desired == "serving"}
        self.known = {d.name for d in wanted.values()}
        for dep in wanted.values():
            if dep.id not in self.local and dep.state != "failed":
                if dep.adapter_of and dep.adapter_of not in self.routes:
                    continue  # its base comes first
                self._ensure_local(dep)
        self._desired_aliases = aliases
        await self._apply_aliases()
        for dep_id in [d for d in self.local if d not in wanted]:
            loc = self.local[dep_id]
            if loc.name not in self.aliases.values():
                await self._retire_local(dep_id)

    async def _apply_aliases(self) -> None:
        """Flip each alias locally once its target is ready here (else keep the old one)."""
        desired = self._desired_aliases
        if desired is None:
            return
        for alias, model in desired.items():
            if self.aliases.get(alias) != model and model in self.routes:
                self.aliases[alias] = model
                await asyncio.to_thread(self._observe_alias, alias, model)
        for alias in [a for a in self.aliases if a not in desired]:
            self.aliases.pop(alias, None)

    def _desired_state(self) -> tuple[list[Deployment], dict[str, str]]:
        with self.db.session() as s:
            deps = list(s.scalars(select(Deployment)))
            aliases = {a.name: a.model for a in s.scalars(select(Alias))}
        return deps, aliases

    def _heartbeat(self) -> None:
        with self.db.session() as s:
            row = s.get(Replica, self.replica)
            if row is None:
                s.add(Replica(id=self.replica, last_seen=time.time(), started_at=_now()))
            else:
                row.last_seen = time.time()

    async def health_once(self) -> None:
        """Health-check ready engines; restart one that died or stopped answering."""
        if time.monotonic() - self._last_heartbeat > 5:
            self._last_heartbeat = time.monotonic()
            await asyncio.to_thread(self._heartbeat)
        for loc in list(self.local.values()):
            engine = loc.engine
            if engine is None or loc.state != "ready" or self._stopping:
                continue
            if engine.alive() and await engine.check_health():
                loc.failures = 0
                continue
            loc.failures += 1
            if engine.alive() and loc.failures < self.settings.health_failures:
                continue
            log.warning("engine unhealthy, restarting", extra={"deployment": loc.id,
                                                               "alive": engine.alive()})
            loc.state = engine.state = "restarting"
            loc.task = asyncio.create_task(self._restart(loc))

    async def _restart(self, loc: LocalDeployment) -> None:
        engine = loc.engine
        assert engine is not None
        await asyncio.to_thread(self._observe, loc, "restarting")
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
            await asyncio.to_thread(self._observe, loc, "ready", aggregate=True)
            return
        loc.state = "failed"
        self.routes.pop(loc.name, None)
        engine.kill_process()
        self._release_gpus(loc.id)
        await asyncio.to_thread(self._observe, loc, "failed", loc.error, aggregate=True)

    async def _reattach_adapters(self, engine: Engine) -> None:
        """A restarted vLLM process has lost its runtime LoRA adapters: load them again."""
        for other in list(self.local.values()):
            if other.base is not engine or other.adapter_dir is None or other.state != "ready":
                continue
            try:
                await engine.load_lora(other.name, other.adapter_dir)  # type: ignore[attr-defined]
            except EngineError as exc:
                other.state, other.error = "failed", f"{exc.code}: {exc}"
                if self.routes.get(other.name) is engine:
                    self.routes.pop(other.name, None)
                await asyncio.to_thread(self._observe, other, "failed", other.error,
                                        aggregate=True)

    # ================================================================== observed state
    def _observe(self, loc: LocalDeployment, state: str, error: str | None = None, *,
                 aggregate: bool = False) -> None:
        engine = loc.serving_engine
        with self.db.session() as s:
            if s.get(Deployment, loc.id) is None:
                return
            s.merge(ReplicaDeployment(replica_id=self.replica, deployment_id=loc.id, state=state,
                                      url=engine.url if engine else None,
                                      pid=loc.engine.pid if loc.engine else None,
                                      restarts=loc.restarts, error=error, updated_at=_now()))
            if aggregate:
                row = s.get(Deployment, loc.id)
                if row is not None and row.desired == "serving":
                    row.state, row.error, row.updated_at = state, error, _now()

    def _observe_alias(self, alias: str, model: str) -> None:
        with self.db.session() as s:
            s.merge(ReplicaAlias(replica_id=self.replica, alias=alias, model=model,
                                 updated_at=_now()))

    # ================================================================== readiness
    def default_ready(self) -> dict[str, Any]:
        name = self.settings.resolved_default_model()
        if name is None:
            return {"ok": True, "model": None}
        return {"ok": self.serves(name), "model": name}


def gpu_pool(settings: InferenceSettings) -> list[str]:
    """GPUs this replica places vLLM engines on: ``INFERENCE_GPU_IDS``, else the service's own
    ``CUDA_VISIBLE_DEVICES``, else what ``nvidia-smi -L`` lists, else GPU 0."""
    if settings.gpu_ids:
        return list(settings.gpu_ids)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible:
        return [g.strip() for g in visible.split(",") if g.strip()]
    return detect_gpus() or ["0"]


def _kill_orphan(pid: int) -> None:
    """Kill an engine process group left by a previous run of this replica (only ours)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return
    if b"tuneloop_inference.engines" in cmdline or b"vllm" in cmdline:
        with contextlib.suppress(OSError):
            os.killpg(pid, 9)

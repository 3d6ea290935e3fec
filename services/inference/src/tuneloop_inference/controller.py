"""The controller: desired state in the DB, engines on this replica, routing, blue/green swaps.

Desired state (shared by every replica): deployments (``desired`` = serving | stopped) and
aliases. Each replica converges on it (:mod:`.reconciler`), flipping an alias locally only once
the target version is ready *here*, and writes back what it serves (:mod:`.observed`), so an
alias counts as flipped only when every live replica routes it to the new version.

This module wires the parts together and runs their lifecycle; the routers depend on the
parts themselves (``api/deps.py``):

- :mod:`.repository` — the one data-access boundary (async methods, SQL off the event loop);
- :mod:`.routing` — served name or alias -> ready engine, looked up without awaiting;
- :mod:`.deployments` — bring-up, restart, runtime LoRA adapters, placement, retire
  (:mod:`.sources` checks what a request names and whether it fits);
- :mod:`.aliases` — blue/green flips and rollback;
- :mod:`.reconciler` — the convergence and health loops;
- :mod:`.observed` — this replica's observed state.

vLLM engines are placed on GPUs by :class:`~.placement.GpuAllocator` (``tensor_parallel_size``
GPUs each, ``CUDA_VISIBLE_DEVICES``): a new engine that does not fit next to the ones serving is
refused up front, so a swap never needs to stop the serving side first.
"""

from __future__ import annotations

from typing import Any

from tuneloop.db import Database
from tuneloop.storage import ArtifactStore

from .aliases import Aliases
from .deployments import Deployments, LocalDeployment, gpu_pool
from .engines import resolve_engine_kind, vllm_device
from .metrics import InferenceMetrics
from .observed import ObservedState
from .placement import GpuAllocator
from .reconciler import Reconciler
from .repository import DesiredState
from .routing import RoutingTable
from .settings import InferenceSettings

__all__ = ["Controller", "LocalDeployment", "gpu_pool"]


class Controller:
    def __init__(self, settings: InferenceSettings, db: Database, store: ArtifactStore,
                 metrics: InferenceMetrics) -> None:
        self.settings = settings
        kind = resolve_engine_kind(settings)
        device = vllm_device(settings) if kind == "vllm" else "cpu"
        self.repo = DesiredState(db, kind)
        self.observed = ObservedState(db, settings.replica_id)
        self.routing = RoutingTable()
        self.deployments = Deployments(settings, self.repo, self.observed, self.routing, store,
                                       metrics, kind, device)
        self.aliases = Aliases(settings, self.repo, self.observed, self.routing,
                               self.deployments, metrics)
        self.reconciler = Reconciler(settings, self.repo, self.observed, self.routing,
                                     self.deployments)

    @property
    def gpus(self) -> GpuAllocator | None:
        return self.deployments.gpus

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.observed.claim()
        if self.settings.base_model_path:
            await self._bootstrap_base()
        await self.reconciler.reconcile_once()
        self.reconciler.start()

    async def shutdown(self) -> None:
        """Stop this replica's engines; the desired state in the DB is left as it is."""
        await self.reconciler.stop()
        await self.deployments.shutdown()
        await self.observed.forget()

    async def _bootstrap_base(self) -> None:
        name, path = self.settings.base_model_name, self.settings.base_model_path
        if await self.repo.find_by_name(name) is None:
            await self.deployments.create(name=name, path=path, wait=False)

    def default_ready(self) -> dict[str, Any]:
        """Readiness: the default model (if one is configured) is served by a ready engine here."""
        name = self.settings.resolved_default_model()
        if name is None:
            return {"ok": True, "model": None}
        return {"ok": self.routing.serves(name), "model": name}

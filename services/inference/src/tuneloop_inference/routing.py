"""The routing table of this replica: served name or alias -> ready engine.

Lookups never await, so a flip is atomic for the event loop: a request either got the old
engine (and holds an in-flight slot that the drain waits for) or gets the new one. Writers
(bring-up, swaps, the reconciler) change it under ``swap_lock`` or between awaits.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from tuneloop.errors import NotFound, ServiceUnavailable

from .engines import Engine

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")
ADAPTER_SUFFIX = ".lora"  # served name of a version attached as a runtime LoRA adapter


class RoutingTable:
    def __init__(self) -> None:
        self.routes: dict[str, Engine] = {}          # served name -> ready engine
        self.aliases: dict[str, str] = {}            # alias -> served name (local routing)
        self.known: set[str] = set()                 # served names desired somewhere
        self.desired_aliases: dict[str, str] | None = None  # last DB snapshot (under the lock)
        self.swap_lock = asyncio.Lock()              # swaps and reconcile steps

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

    def serves(self, name: str) -> bool:
        try:
            self.resolve(name)
            return True
        except (NotFound, ServiceUnavailable):
            return False

    def list_models(self) -> list[dict[str, Any]]:
        """``/v1/models``: ready served names, then aliases whose target is routed here."""
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

    def set_alias(self, alias: str, model: str) -> None:
        """Route ``alias`` to ``model`` here and in the desired snapshot (a flip)."""
        self.aliases[alias] = model
        if self.desired_aliases is not None:
            self.desired_aliases[alias] = model

    def drop_alias(self, alias: str) -> None:
        self.aliases.pop(alias, None)
        if self.desired_aliases is not None:
            self.desired_aliases.pop(alias, None)

    def follow_desired(self) -> list[tuple[str, str]]:
        """Flip each desired alias whose target is routed here (else keep the old one), drop
        aliases no longer desired. Returns the (alias, served name) pairs that flipped."""
        desired = self.desired_aliases
        if desired is None:
            return []
        flipped = [(alias, model) for alias, model in desired.items()
                   if self.aliases.get(alias) != model and model in self.routes]
        self.aliases.update(flipped)
        for alias in [a for a in self.aliases if a not in desired]:
            self.aliases.pop(alias, None)
        return flipped

    def unroute(self, name: str, engine: Engine | None) -> None:
        """Stop routing ``name`` if it still routes to ``engine``."""
        if self.routes.get(name) is engine:
            self.routes.pop(name, None)

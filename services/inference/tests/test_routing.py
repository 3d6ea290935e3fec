"""The routing table alone (no processes): alias -> served name -> ready engine, and how a
replica follows the desired aliases (flip only to a version routed here, keep the old one
until then)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tuneloop.errors import NotFound, ServiceUnavailable
from tuneloop_inference.routing import RoutingTable

V1, V2 = "mv-0000000000000001", "mv-0000000000000002"


def table() -> RoutingTable:
    t = RoutingTable()
    t.routes[V1] = SimpleNamespace(state="ready", kind="vllm")  # type: ignore[assignment]
    t.aliases["bot"] = V1
    return t


def test_resolve_alias_name_not_ready_and_unknown() -> None:
    t = table()
    assert t.resolve("bot")[1] == V1 and t.resolve(V1)[1] == V1
    t.known.add(V2)
    with pytest.raises(ServiceUnavailable) as err:
        t.resolve(V2)
    assert err.value.code == "model_not_ready"
    with pytest.raises(NotFound) as missing:
        t.resolve("nope")
    assert missing.value.code == "model_not_found"
    assert [m["id"] for m in t.list_models()] == [V1, "bot"]


def test_follow_desired_flips_only_to_what_is_routed_here() -> None:
    t = table()
    t.desired_aliases = {"bot": V2, "new": V1}
    assert t.follow_desired() == [("new", V1)]       # V2 is not up here: bot keeps V1
    assert t.aliases == {"bot": V1, "new": V1}
    t.routes[V2] = SimpleNamespace(state="ready", kind="vllm")  # type: ignore[assignment]
    assert t.follow_desired() == [("bot", V2)]
    t.desired_aliases = {"bot": V2}
    assert t.follow_desired() == [] and t.aliases == {"bot": V2}  # "new" was deleted

"""``tuneloop captures`` and ``tuneloop canary``: the flywheel's commands (docs/flywheel.md)."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from .common import _call, _clean, _json, api, console, out, state
from .render import kv_table, list_table, print_decision

# -- captures (the flywheel: docs/flywheel.md) ------------------------------------------------
captures_app = typer.Typer(no_args_is_help=True, help="Captured traffic: review, publish, retrain.")
canary_app = typer.Typer(no_args_is_help=True, help="Canary releases of an alias.")
CAPTURE_COLUMNS: list[tuple[str, Any]] = [
    ("id", lambda r: r.get("id")), ("model", lambda r: r.get("model")),
    ("served", lambda r: r.get("served_model")), ("status", lambda r: r.get("status")),
    ("rating", lambda r: (r.get("feedback") or {}).get("rating")),
    ("prompt", lambda r: str(((r.get("messages") or [{}])[-1]).get("content", ""))[:60]),
    ("output", lambda r: (r.get("edited_output") or r.get("output") or "")[:60]),
]


@captures_app.command("list")
def captures_list(
    status: Annotated[Optional[str], typer.Option(help="pending | accepted | rejected")] = None,
    rating: Annotated[Optional[str], typer.Option(help="up | down | none")] = None,
    model: Annotated[Optional[str], typer.Option(help="The alias/model the client asked for.")] = None,
    similar_to: Annotated[Optional[str], typer.Option(
        help="A dataset version: add each row's similarity to its training prompts.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
) -> None:
    """The review queue, newest first."""
    with api() as c:
        res = _call(c.get, "/v1/captures", status=status, rating=rating, model=model,
                    similar_to=similar_to, limit=limit)
    out(res, list_table(f"captures ({res.get('total')} matching)", res["data"], CAPTURE_COLUMNS))


@captures_app.command("review")
def captures_review(
    accept: Annotated[Optional[list[str]], typer.Option("--accept", help="Capture id.")] = None,
    reject: Annotated[Optional[list[str]], typer.Option("--reject", help="Capture id.")] = None,
) -> None:
    """Accept or reject captured rows (edit an answer through the API or the console)."""
    with api() as c:
        res = _call(c.post, "/v1/captures/review", {"accept": accept or [], "reject": reject or []})
    out(res, kv_table("review", list(res.items())))


@captures_app.command("publish")
def captures_publish(
    base: Annotated[Optional[str], typer.Option(help="Dataset version to extend.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Name of the new version.")] = None,
) -> None:
    """Accepted captures -> a new dataset version (its lineage names the captured requests)."""
    with api() as c:
        res = _call(c.post, "/v1/captures/publish", _clean(base_dataset_id=base, name=name))
    ds = res.get("dataset") or {}
    out(res, kv_table("published", [("dataset", ds.get("id")), ("counts", ds.get("counts")),
                                     ("lineage", (ds.get("source") or {}).get("lineage"))]))


@captures_app.command("retrain")
def captures_retrain(
    base: Annotated[str, typer.Option(help="Dataset version to extend.")],
    base_model: Annotated[str, typer.Option(help="Base model (path or hub id) to train.")],
    gate_alias: Annotated[Optional[str], typer.Option(help="Alias the gate may move.")] = None,
    backend: Annotated[str, typer.Option(help="auto | unsloth | peft")] = "auto",
) -> None:
    """Publish the accepted captures and train on the new version (gated like any job)."""
    with api() as c:
        res = _call(c.post, "/v1/captures/retrain", _clean(
            base_dataset_id=base, base_model=base_model, gate_alias=gate_alias, backend=backend))
    out(res, kv_table("retrain", [("dataset", res["dataset"]["id"]), ("job", res["job"]["id"]),
                                   ("status", res["job"].get("status"))]))


@captures_app.command("drift")
def captures_drift(dataset: Annotated[str, typer.Option(help="Dataset version to compare with.")],
                   model: Annotated[Optional[str], typer.Option()] = None) -> None:
    """How far the captured prompts are from a version's training prompts."""
    with api() as c:
        res = _call(c.get, "/v1/captures/drift", dataset_id=dataset, model=model)
    out(res, kv_table("drift", [("drifted", res.get("drifted")), ("captured", res.get("captured")),
                                 ("reasons", res.get("reasons")), ("length", res.get("length")),
                                 ("content", res.get("content"))]))


def _canary_table(res: dict) -> Any:
    cmp_ = res.get("comparison") or {}
    pairs = [(k, res.get(k)) for k in ("id", "alias", "stable", "candidate", "mode", "weight",
                                       "status")]
    pairs += [(arm, cmp_[arm]) for arm in ("stable", "candidate", "shadow") if arm in cmp_]
    pairs += [("quality", cmp_.get("quality")), ("last event", (res.get("events") or [{}])[-1])]
    return kv_table(f"canary {res.get('id')}", pairs)


@canary_app.command("start")
def canary_start(
    alias: str, model: Annotated[str, typer.Argument(help="Served name or model version (mv-...).")],
    weight: Annotated[float, typer.Option(min=0, max=1, help="Share of requests.")] = 0.05,
    shadow: Annotated[bool, typer.Option(help="Mirror instead: the answer is recorded, "
                                               "not returned.")] = False,
    max_error_rate: Annotated[float, typer.Option(min=0, max=1)] = 0.05,
    max_latency_ratio: Annotated[float, typer.Option(min=0)] = 2.0,
    min_requests: Annotated[int, typer.Option(min=1)] = 20,
) -> None:
    """Send a weighted share of an alias's traffic (or a mirror of it) to a candidate."""
    body = {"alias": alias, "model": model, "weight": weight,
            "mode": "shadow" if shadow else "weighted", "max_error_rate": max_error_rate,
            "max_latency_ratio": max_latency_ratio, "min_requests": min_requests}
    with api() as c:
        res = _call(c.post, "/v1/canaries", body)
    out(res, _canary_table(res))


@canary_app.command("list")
def canary_list(status: Annotated[Optional[str], typer.Option()] = None) -> None:
    """Canaries, newest first."""
    with api() as c:
        res = _call(c.get, "/v1/canaries", status=status)
    out(res, list_table("canaries", res["data"], [
        ("id", lambda r: r["id"]), ("alias", lambda r: r["alias"]),
        ("candidate", lambda r: r["candidate"]), ("mode", lambda r: r["mode"]),
        ("weight", lambda r: r["weight"]), ("status", lambda r: r["status"])]))


@canary_app.command("show")
def canary_show(canary_id: str) -> None:
    """The live comparison: error rate, latency and feedback per arm, and the events."""
    with api() as c:
        res = _call(c.get, f"/v1/canaries/{canary_id}")
    out(res, _canary_table(res))


@canary_app.command("weight")
def canary_weight(canary_id: str, weight: Annotated[float, typer.Argument(min=0, max=1)]) -> None:
    """Change a running canary's share of the traffic."""
    with api() as c:
        res = _call(_json, c, "PATCH", f"/v1/canaries/{canary_id}", {"weight": weight})
    out(res, _canary_table(res))


@canary_app.command("rollback")
def canary_rollback(canary_id: str, reason: Annotated[Optional[str], typer.Option()] = None) -> None:
    """Stop sending traffic to the candidate (the alias is unchanged)."""
    with api() as c:
        res = _call(c.post, f"/v1/canaries/{canary_id}/rollback", _clean(reason=reason))
    out(res, _canary_table(res))


@canary_app.command("promote")
def canary_promote(
    canary_id: str,
    gate: Annotated[bool, typer.Option(help="Run the gate first (needs --dataset).")] = False,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset version for the gate.")] = None,
) -> None:
    """Promote the candidate: the alias flips to it (or the gate decides)."""
    with api() as c:
        res = _call(c.post, f"/v1/canaries/{canary_id}/promote",
                    _clean(gate=gate, dataset_id=dataset), timeout=1800)
    if state.as_json:
        return out(res)
    console.print(_canary_table(res))
    print_decision(console, res["promotion"])

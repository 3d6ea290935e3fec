"""Scoring of the generations and the report: metrics with confidence intervals per target,
paired comparisons of every target with the baselines (the zero-shot base, listed first, and the
prompted k-shot base) and production, the general-suite drop, the failed requests, the
article's advice, and the per-example outputs side by side.

A generation that failed after its retries is never scored: it is listed in
``failed_requests``, every metric is computed over the answers only, and each paired comparison
over the rows both targets answered.
"""

from __future__ import annotations

from typing import Any

from .general_suite import check_general, load_suite
from .runner import Example, Generation, TargetRun
from .scoring import (
    bootstrap,
    exact_match,
    field_scores,
    is_text_field,
    paired_difference,
    parse_json,
    percentile,
    proportion_or_mean,
    rouge_all,
    wilson,
)

METRICS = ("auto", "json_fields", "exact_match", "rougeL")
# The article: "If the base model already performs at 85% accuracy, fine-tuning for 88% may not
# justify the complexity."
HIGH_BASE = 0.85
SMALL_UPLIFT = 0.05


def load_general_suite(limit: int | None = None) -> list[dict[str, Any]]:
    """The general-capability suite: its core (unset), or ``limit`` items (see ``load_suite``)."""
    return load_suite(limit)


def general_prompts(items: list[dict[str, Any]]) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": it["prompt"]}] for it in items]


def detect_task(examples: list[Example], metric: str = "auto") -> dict[str, Any]:
    """Which metric is primary: JSON fields, exact match (short answers) or ROUGE-L."""
    refs = [parse_json(ex.reference) for ex in examples]
    is_json = bool(refs) and all(isinstance(r, dict) for r in refs)
    fields: dict[str, str] = {}
    if is_json:
        keys: dict[str, list[Any]] = {}
        for r in refs:
            for k, v in (r or {}).items():
                keys.setdefault(k, []).append(v)
        fields = {k: ("text" if is_text_field(v) else "label") for k, v in keys.items()}
    if metric == "auto":
        if is_json:
            metric = "json_fields"
        else:
            words = [len(ex.reference.split()) for ex in examples] or [0]
            metric = "exact_match" if sum(words) / len(words) <= 4 else "rougeL"
    if metric == "json_fields" and not is_json:
        raise ValueError("metric json_fields needs every reference to be a JSON object")
    kind = "json" if is_json else ("short_text" if metric == "exact_match" else "free_text")
    return {"kind": kind, "primary_metric": metric, "fields": fields}


def score_example(gen: Generation, ex: Example, task: dict[str, Any]) -> dict[str, Any] | None:
    """All scores of one output; ``task_score`` is the primary metric's per-example value.
    None for a failed generation: an infrastructure error is not a wrong answer."""
    if gen.error:
        return None
    out = gen.output
    s: dict[str, Any] = {"exact_match": exact_match(out, ex.reference)}
    s.update(rouge_all(out, ex.reference))
    if task["kind"] == "json":
        ref = parse_json(ex.reference)
        pred = parse_json(out)
        text_fields = {k for k, t in task["fields"].items() if t == "text"}
        s["json_valid"] = float(isinstance(pred, dict))
        s["fields"] = field_scores(pred, ref or {}, text_fields)
        s["json_fields"] = (sum(s["fields"].values()) / len(s["fields"])) if s["fields"] else 0.0
    s["task_score"] = s[task["primary_metric"]]
    return s


def general_score(gen: Generation, item: dict[str, Any]) -> float | None:
    """1/0 for a general-suite answer (by the item's check), None when the request failed."""
    if gen.error:
        return None
    return check_general(gen.output, item)


def _target_metrics(run: TargetRun, examples: list[Example], task: dict[str, Any],
                    general_items: list[dict[str, Any]]) -> tuple[dict[str, Any], list, list]:
    scores = [score_example(g, ex, task) for g, ex in zip(run.task, examples, strict=True)]
    ok_scores = [s for s in scores if s is not None]
    n = len(ok_scores)
    m: dict[str, Any] = {
        "task_score": proportion_or_mean([s["task_score"] for s in ok_scores]),
        "exact_match": wilson(sum(s["exact_match"] for s in ok_scores), n),
    }
    for r in ("rouge1", "rouge2", "rougeL"):
        m[r] = bootstrap([s[r] for s in ok_scores])
    if task["kind"] == "json":
        m["json_valid"] = wilson(sum(s["json_valid"] for s in ok_scores), n)
        m["fields"] = {k: (bootstrap([s["fields"][k] for s in ok_scores]) if t == "text"
                           else wilson(sum(s["fields"][k] for s in ok_scores), n))
                       for k, t in task["fields"].items()}
    items = general_items if run.general else []
    general_scores = [general_score(g, it) for g, it in zip(run.general, items, strict=True)]
    answered = [x for x in general_scores if x is not None]
    m["general"] = wilson(sum(answered), len(answered)) if items else None
    if items:
        m["general_by_kind"] = _by_kind(general_scores, items)
    ok = [g for g in run.task + run.general if not g.error]
    lat = [g.latency_s * 1000 for g in ok]
    total_tokens = sum(g.completion_tokens for g in ok)
    m["latency_ms"] = {"p50": round(percentile(lat, 50), 1), "p95": round(percentile(lat, 95), 1),
                       "mean": round(sum(lat) / len(lat), 1) if lat else 0.0}
    gen_s = sum(g.latency_s for g in ok)
    m["tokens_per_s"] = round(total_tokens / gen_s, 2) if gen_s > 0 else 0.0
    m["completion_tokens"] = total_tokens
    m["tokens_estimated"] = any(g.tokens_estimated for g in ok)
    m["errors"] = sum(1 for g in run.task + run.general if g.error)
    m["generations"] = len(run.task) + len(run.general)
    m["retried"] = sum(1 for g in run.task + run.general if g.attempts > 1)
    m["reused"] = run.reused
    m["wall_s"] = round(run.wall_s, 3)
    if run.pace:
        m["pace"] = run.pace
    return m, scores, general_scores


def _by_kind(scores: list[float | None], items: list[dict[str, Any]]) -> dict[str, Any]:
    kinds: dict[str, list[float]] = {}
    for sc, it in zip(scores, items, strict=True):
        if sc is not None:
            kinds.setdefault(it.get("kind", "knowledge"), []).append(sc)
    return {k: wilson(sum(v), len(v)) for k, v in sorted(kinds.items())}


def _paired(a: list, b: list, key: str | None = None) -> dict[str, Any]:
    """Paired difference ``a - b`` over the rows where both answered (failed rows left out)."""
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    xs = [x[key] if key else x for x, _ in pairs]
    ys = [y[key] if key else y for _, y in pairs]
    return paired_difference(xs, ys)


def reference_targets(runs: list[TargetRun], baseline: str) -> list[str]:
    """What every other target is compared with: the baseline, the prompted (k-shot)
    baselines and production."""
    out = [baseline]
    out += [r.target.name for r in runs if r.target.role in ("base_kshot", "production")
            and r.target.name != baseline]
    return out


def failed_requests(runs: list[TargetRun], examples: list[Example],
                    general_items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every generation that still failed after its retries (the evidence of an incomplete run)."""
    out = []
    for r in runs:
        for i, g in enumerate(r.task):
            if g.error:
                out.append({"target": r.target.name, "suite": "task", "index": i,
                            "line": examples[i].line, "error": g.error, "attempts": g.attempts})
        for i, g in enumerate(r.general):
            if g.error:
                out.append({"target": r.target.name, "suite": "general", "index": i,
                            "id": general_items[i]["id"], "error": g.error, "attempts": g.attempts})
    return out


def build_report(runs: list[TargetRun], examples: list[Example], task: dict[str, Any],
                 general_items: list[dict[str, Any]], baseline: str,
                 judge: list[dict[str, Any]] | None = None,
                 judge_pair: tuple[str, str] | None = None) -> tuple[dict[str, Any], list[dict]]:
    """The report (metrics, comparisons, failed requests, advice) and the per-example samples."""
    per: dict[str, tuple[dict, list, list]] = {
        r.target.name: _target_metrics(r, examples, task, general_items) for r in runs}
    refs = reference_targets(runs, baseline)
    targets, comparisons = [], []
    ordered = ([r for r in runs if r.target.name == baseline]
               + [r for r in runs if r.target.role == "base_kshot" and r.target.name != baseline]
               + [r for r in runs if r.target.name != baseline and r.target.role != "base_kshot"])
    for run in ordered:
        m = per[run.target.name][0]
        status = ("failed" if m["errors"] == m["generations"] and m["generations"]
                  else "incomplete" if m["errors"] else "ok")
        targets.append({**run.target.public(), "status": status, "metrics": m})
    for run in ordered:
        name = run.target.name
        m, scores, gen_scores = per[name]
        for ref in refs:
            if ref == name or (name in refs and refs.index(name) < refs.index(ref)):
                continue  # each pair once; never a reference against a later one
            ref_m, ref_scores, ref_general = per[ref]
            comp: dict[str, Any] = {"target": name, "vs": ref,
                                    "uplift": _paired(scores, ref_scores, "task_score")}
            if general_items and run.general and per[ref][2]:
                comp["general_drop"] = _paired(ref_general, gen_scores)
            if task["kind"] == "json":
                comp["json_valid_delta"] = round(m["json_valid"]["value"] - ref_m["json_valid"]["value"], 4)
            comparisons.append(comp)
    judge_summary = None
    if judge is not None and judge_pair:
        judge_summary = {
            "candidate": judge_pair[0], "base": judge_pair[1], "orders": ["candidate_first", "base_first"],
            "preference": bootstrap([j["score"] for j in judge]),
            "position_consistency": round(sum(j["consistent"] for j in judge) / len(judge), 4) if judge else 0.0,
            "errors": sum(1 for j in judge if j["error"]),
        }
    failed = failed_requests(runs, examples, general_items)
    report = {
        "task": task, "n_examples": len(examples), "n_general": len(general_items),
        "baseline": baseline, "targets": targets, "comparisons": comparisons,
        "judge": judge_summary, "complete": not failed,
        "failed_requests": failed[:500], "n_failed_requests": len(failed),
    }
    report["advice"] = advice(report)
    report["table"] = table(report)
    return report, samples(runs, examples, per, general_items, judge)


def advice(report: dict[str, Any]) -> list[str]:
    """The article's evaluation advice as report lines; the base's own score comes first,
    failed requests (which no score includes) right after it."""
    targets, comparisons, task = report["targets"], report["comparisons"], report["task"]
    base = targets[0]
    metric = task["primary_metric"]
    b = base["metrics"]["task_score"]["value"]
    lines = [f"Base '{base['name']}' scores {b:.1%} on the held-out set ({metric}); "
             "judge every fine-tune against this, never by training loss."]
    nf = report.get("n_failed_requests", 0)
    if nf:
        per: dict[str, int] = {}
        for f in report["failed_requests"]:
            per[f["target"]] = per.get(f["target"], 0) + 1
        first = report["failed_requests"][0]["error"] if report["failed_requests"] else "?"
        lines.append(f"{nf} generation(s) failed after retries ("
                     + ", ".join(f"{k}: {v}" for k, v in per.items())
                     + f"; first error: {first[:120]}). They are left out of every score, the run "
                     "is incomplete and no gate decides on it: re-run it (only the failed "
                     "requests are generated again).")
    kshot = [t for t in targets if t.get("role") == "base_kshot"]
    for k in kshot:
        v = k["metrics"]["task_score"]["value"]
        lines.append(f"The base prompted with {k.get('shots')} examples ('{k['name']}') scores "
                     f"{v:.1%}: a fine-tune must beat this, the baseline you can deploy today "
                     "without training.")
    best_base = max([base, *kshot], key=lambda t: t["metrics"]["task_score"]["value"])
    bb = best_base["metrics"]["task_score"]["value"]
    refs = {base["name"], *(k["name"] for k in kshot)}
    if not any(c["target"] not in refs for c in comparisons) and bb >= HIGH_BASE:
        lines.append(f"The best baseline already scores {bb:.0%}: fine-tuning for a few more points "
                     "may not justify its cost; try prompt engineering or RAG first.")
    for comp in comparisons:
        if comp["target"] in refs or comp["vs"] not in refs:
            continue
        t = next(x for x in targets if x["name"] == comp["target"])
        u = comp["uplift"]
        v = t["metrics"]["task_score"]["value"]
        sig = u["ci_low"] > 0 or u["ci_high"] < 0
        lines.append(f"'{t['name']}' scores {v:.1%}: {u['value']:+.1%} vs '{comp['vs']}' "
                     f"(95% CI {u['ci_low']:+.1%} .. {u['ci_high']:+.1%}"
                     f"{'' if sig else ', not significant'}).")
        if comp["vs"] == best_base["name"] and bb >= HIGH_BASE and u["value"] < SMALL_UPLIFT:
            lines.append(f"The best baseline already scores {bb:.0%} and the uplift of '{t['name']}' "
                         f"is {u['value']:+.1%}: fine-tuning may not justify its cost and complexity.")
        drop = comp.get("general_drop")
        if drop and drop["value"] > 0.05:
            lines.append(f"'{t['name']}' lost {drop['value']:.1%} on the general-capability suite: "
                         "watch for catastrophic forgetting.")
    n = base["metrics"]["task_score"]["n"]
    if n < 100:
        lines.append(f"Only {n} eval examples: the article recommends a held-out set of 100-200; "
                     "intervals are wide.")
    return lines


def table(report: dict[str, Any]) -> str:
    """A plain-text table that reads at 80 columns: metrics as rows, targets as columns."""
    return "\n".join(table_lines(report))


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """``(target names, [(metric, [cell per target])])`` — shared by the CLI and the console."""
    targets = report.get("targets") or []
    names = [t.get("name", "?") for t in targets]
    kind = (report.get("task") or {}).get("kind")

    def val(x: Any) -> str:
        return "-" if not isinstance(x, dict) or x.get("value") is None else f"{x['value']:.3f}"

    rows: list[tuple[str, list[str]]] = [("task score", [val(t["metrics"].get("task_score")) for t in targets])]
    if kind == "json":
        rows.append(("json valid", [val(t["metrics"].get("json_valid")) for t in targets]))
        fields: list[str] = []
        for t in targets:
            fields += [k for k in t["metrics"].get("fields") or {} if k not in fields]
        rows += [(f"  {k}", [val((t["metrics"].get("fields") or {}).get(k)) for t in targets]) for k in fields]
    rows.append(("exact match", [val(t["metrics"].get("exact_match")) for t in targets]))
    rows.append(("rougeL", [val(t["metrics"].get("rougeL")) for t in targets]))
    rows.append(("general", [val(t["metrics"].get("general")) for t in targets]))
    rows.append(("p50 ms", [f"{t['metrics']['latency_ms']['p50']:.0f}" for t in targets]))
    rows.append(("tok/s", [f"{t['metrics']['tokens_per_s']:.1f}" for t in targets]))
    rows.append(("failed", [f"{t['metrics']['errors']}/{t['metrics']['generations']}" for t in targets]))
    return names, rows


def table_lines(report: dict[str, Any], width: int = 80) -> list[str]:
    """Targets as columns, wrapped into blocks when they do not fit in ``width``."""
    names, rows = table_rows(report)
    label_w = max([len("metric")] + [len(r[0]) for r in rows])
    col_w = [max(len(n), *(len(r[1][i]) for r in rows)) for i, n in enumerate(names)]
    blocks: list[list[int]] = []
    cur: list[int] = []
    used = label_w
    for i in range(len(names)):
        if cur and used + 2 + col_w[i] > width:
            blocks.append(cur)
            cur, used = [], label_w
        cur.append(i)
        used += 2 + col_w[i]
    if cur:
        blocks.append(cur)
    lines: list[str] = []
    for bi, block in enumerate(blocks):
        if bi:
            lines.append("")
        lines.append("  ".join(["metric".ljust(label_w)] + [names[i].rjust(col_w[i]) for i in block]))
        for label, cells in rows:
            lines.append("  ".join([label.ljust(label_w)] + [cells[i].rjust(col_w[i]) for i in block]))
    return lines


def samples(runs: list[TargetRun], examples: list[Example], per: dict, general_items: list[dict],
            judge: list[dict] | None) -> list[dict]:
    out = []
    jmap = {j["index"]: j for j in judge or []}
    for i, ex in enumerate(examples):
        outputs = {}
        for r in runs:
            g, s = r.task[i], per[r.target.name][1][i]
            outputs[r.target.name] = {"output": g.output, "error": g.error, "attempts": g.attempts,
                                      "latency_ms": round(g.latency_s * 1000, 1),
                                      "completion_tokens": g.completion_tokens,
                                      "task_score": None if s is None else round(s["task_score"], 4),
                                      "exact_match": None if s is None else s["exact_match"],
                                      **({"json_valid": s["json_valid"]} if s and "json_valid" in s else {})}
        item = {"suite": "task", "index": i, "line": ex.line, "prompt": ex.messages,
                "reference": ex.reference, "outputs": outputs}
        if ex.index in jmap:
            item["judge"] = jmap[ex.index]
        out.append(item)
    for i, it in enumerate(general_items):
        outputs = {r.target.name: {"output": r.general[i].output, "error": r.general[i].error,
                                   "attempts": r.general[i].attempts,
                                   "latency_ms": round(r.general[i].latency_s * 1000, 1),
                                   "completion_tokens": r.general[i].completion_tokens,
                                   "correct": per[r.target.name][2][i]} for r in runs if r.general}
        out.append({"suite": "general", "index": i, "id": it["id"], "kind": it.get("kind"),
                    "prompt": it.get("prompt") or it["question"], "reference": it.get("answers"),
                    "outputs": outputs})
    return out

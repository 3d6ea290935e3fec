"""Scoring of the generations and the report: metrics with confidence intervals per target,
uplift against the baseline (the base model, listed first), the general-suite drop, the
article's advice, and the per-example outputs side by side.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from .runner import Example, Generation, TargetRun
from .scoring import (
    answer_match,
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


def load_general_suite() -> list[dict[str, Any]]:
    text = resources.files("tuneloop_gateway.data").joinpath("general_suite.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def general_prompts(items: list[dict[str, Any]]) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": it["question"] + " Answer in a few words."}]
            for it in items]


def detect_task(examples: list[Example], metric: str = "auto") -> dict[str, Any]:
    """Which metric is primary: JSON fields, exact match (short answers) or ROUGE-L."""
    refs = [parse_json(ex.reference) for ex in examples]
    is_json = bool(refs) and all(isinstance(r, dict) for r in refs)
    fields: dict[str, str] = {}
    if is_json:
        keys: dict[str, list[Any]] = {}
        for r in refs:
            for k, v in r.items():
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


def score_example(gen: Generation, ex: Example, task: dict[str, Any]) -> dict[str, Any]:
    """All scores of one output; ``task_score`` is the primary metric's per-example value."""
    out = gen.output if not gen.error else ""
    s: dict[str, Any] = {"exact_match": exact_match(out, ex.reference)}
    s.update(rouge_all(out, ex.reference))
    if task["kind"] == "json":
        ref = parse_json(ex.reference)
        pred = parse_json(out)
        text_fields = {k for k, t in task["fields"].items() if t == "text"}
        s["json_valid"] = float(isinstance(pred, dict))
        s["fields"] = field_scores(pred, ref, text_fields)
        s["json_fields"] = (sum(s["fields"].values()) / len(s["fields"])) if s["fields"] else 0.0
    s["task_score"] = s[task["primary_metric"]]
    return s


def _target_metrics(run: TargetRun, examples: list[Example], task: dict[str, Any],
                    general_items: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict], list[float]]:
    scores = [score_example(g, ex, task) for g, ex in zip(run.task, examples, strict=True)]
    m: dict[str, Any] = {
        "task_score": proportion_or_mean([s["task_score"] for s in scores]),
        "exact_match": wilson(sum(s["exact_match"] for s in scores), len(scores)),
    }
    for r in ("rouge1", "rouge2", "rougeL"):
        m[r] = bootstrap([s[r] for s in scores])
    if task["kind"] == "json":
        m["json_valid"] = wilson(sum(s["json_valid"] for s in scores), len(scores))
        m["fields"] = {k: (bootstrap([s["fields"][k] for s in scores]) if t == "text"
                           else wilson(sum(s["fields"][k] for s in scores), len(scores)))
                       for k, t in task["fields"].items()}
    general_scores = [answer_match(g.output if not g.error else "", it["answers"])
                      for g, it in zip(run.general, general_items, strict=True)]
    ok = [g for g in run.task + run.general if not g.error]
    lat = [g.latency_s * 1000 for g in ok]
    total_tokens = sum(g.completion_tokens for g in ok)
    m["general"] = wilson(sum(general_scores), len(general_scores)) if general_items else None
    m["latency_ms"] = {"p50": round(percentile(lat, 50), 1), "p95": round(percentile(lat, 95), 1),
                       "mean": round(sum(lat) / len(lat), 1) if lat else 0.0}
    gen_s = sum(g.latency_s for g in ok)
    m["tokens_per_s"] = round(total_tokens / gen_s, 2) if gen_s > 0 else 0.0
    m["completion_tokens"] = total_tokens
    m["tokens_estimated"] = any(g.tokens_estimated for g in ok)
    m["errors"] = sum(1 for g in run.task + run.general if g.error)
    m["generations"] = len(run.task) + len(run.general)
    m["wall_s"] = round(run.wall_s, 3)
    return m, scores, general_scores


def build_report(runs: list[TargetRun], examples: list[Example], task: dict[str, Any],
                 general_items: list[dict[str, Any]], baseline: str,
                 judge: list[dict[str, Any]] | None = None,
                 judge_pair: tuple[str, str] | None = None) -> tuple[dict[str, Any], list[dict]]:
    """The report (metrics, comparisons, advice) and the per-example samples."""
    per: dict[str, tuple[dict, list[dict], list[float]]] = {
        r.target.name: _target_metrics(r, examples, task, general_items) for r in runs}
    base_m, base_scores, base_general = per[baseline]
    targets, comparisons = [], []
    ordered = [r for r in runs if r.target.name == baseline] + [r for r in runs if r.target.name != baseline]
    for run in ordered:
        m, scores, gen_scores = per[run.target.name]
        status = "failed" if m["errors"] == m["generations"] and m["generations"] else "ok"
        targets.append({**run.target.public(), "status": status, "metrics": m})
        if run.target.name == baseline:
            continue
        comp: dict[str, Any] = {
            "target": run.target.name, "vs": baseline,
            "uplift": paired_difference([s["task_score"] for s in scores],
                                        [s["task_score"] for s in base_scores]),
        }
        if general_items:
            comp["general_drop"] = paired_difference(base_general, gen_scores)
        if task["kind"] == "json":
            comp["json_valid_delta"] = round(m["json_valid"]["value"] - base_m["json_valid"]["value"], 4)
        comparisons.append(comp)
    judge_summary = None
    if judge is not None and judge_pair:
        judge_summary = {
            "candidate": judge_pair[0], "base": judge_pair[1], "orders": ["candidate_first", "base_first"],
            "preference": bootstrap([j["score"] for j in judge]),
            "position_consistency": round(sum(j["consistent"] for j in judge) / len(judge), 4) if judge else 0.0,
            "errors": sum(1 for j in judge if j["error"]),
        }
    report = {
        "task": task, "n_examples": len(examples), "n_general": len(general_items),
        "baseline": baseline, "targets": targets, "comparisons": comparisons,
        "judge": judge_summary,
        "advice": advice(targets, comparisons, task),
    }
    report["table"] = table(report)
    return report, samples(runs, examples, per, general_items, judge)


def advice(targets: list[dict], comparisons: list[dict], task: dict[str, Any]) -> list[str]:
    """The article's evaluation advice as report lines; the base's own score comes first."""
    base = targets[0]
    metric = task["primary_metric"]
    b = base["metrics"]["task_score"]["value"]
    lines = [f"Base '{base['name']}' scores {b:.1%} on the held-out set ({metric}); "
             "judge every fine-tune against this, never by training loss."]
    if not comparisons and b >= HIGH_BASE:
        lines.append(f"The base already scores {b:.0%}: fine-tuning for a few more points may not "
                     "justify its cost; try prompt engineering or RAG first.")
    for comp in comparisons:
        t = next(x for x in targets if x["name"] == comp["target"])
        u = comp["uplift"]
        v = t["metrics"]["task_score"]["value"]
        sig = u["ci_low"] > 0 or u["ci_high"] < 0
        lines.append(f"'{t['name']}' scores {v:.1%}: {u['value']:+.1%} vs base "
                     f"(95% CI {u['ci_low']:+.1%} .. {u['ci_high']:+.1%}"
                     f"{'' if sig else ', not significant'}).")
        if b >= HIGH_BASE and u["value"] < SMALL_UPLIFT:
            lines.append(f"The base already scores {b:.0%} and the uplift of '{t['name']}' is "
                         f"{u['value']:+.1%}: fine-tuning may not justify its cost and complexity.")
        drop = comp.get("general_drop")
        if drop and drop["value"] > 0.05:
            lines.append(f"'{t['name']}' lost {drop['value']:.1%} on the general-capability suite: "
                         "watch for catastrophic forgetting.")
    if len(targets) and targets[0]["metrics"]["task_score"]["n"] < 100:
        lines.append(f"Only {targets[0]['metrics']['task_score']['n']} eval examples: the article "
                     "recommends a held-out set of 100-200; intervals are wide.")
    return lines


def table(report: dict[str, Any]) -> str:
    """A plain-text base-vs-tuned table (what the demo prints)."""
    kind = report["task"]["kind"]
    cols = ["target", "task", "exact"] + (["json_ok"] if kind == "json" else []) + [
        "rougeL", "general", "p50 ms", "tok/s"]
    rows = [cols]
    for t in report["targets"]:
        m = t["metrics"]
        row = [t["name"], f"{m['task_score']['value']:.3f}", f"{m['exact_match']['value']:.3f}"]
        if kind == "json":
            row.append(f"{m['json_valid']['value']:.3f}")
        row += [f"{m['rougeL']['value']:.3f}",
                f"{m['general']['value']:.3f}" if m.get("general") else "-",
                f"{m['latency_ms']['p50']:.0f}", f"{m['tokens_per_s']:.1f}"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def samples(runs: list[TargetRun], examples: list[Example], per: dict, general_items: list[dict],
            judge: list[dict] | None) -> list[dict]:
    out = []
    jmap = {j["index"]: j for j in judge or []}
    for i, ex in enumerate(examples):
        outputs = {}
        for r in runs:
            g, s = r.task[i], per[r.target.name][1][i]
            outputs[r.target.name] = {"output": g.output, "error": g.error,
                                      "latency_ms": round(g.latency_s * 1000, 1),
                                      "completion_tokens": g.completion_tokens,
                                      "task_score": round(s["task_score"], 4),
                                      "exact_match": s["exact_match"],
                                      **({"json_valid": s["json_valid"]} if "json_valid" in s else {})}
        item = {"suite": "task", "index": i, "line": ex.line, "prompt": ex.messages,
                "reference": ex.reference, "outputs": outputs}
        if ex.index in jmap:
            item["judge"] = jmap[ex.index]
        out.append(item)
    for i, it in enumerate(general_items):
        outputs = {r.target.name: {"output": r.general[i].output, "error": r.general[i].error,
                                   "latency_ms": round(r.general[i].latency_s * 1000, 1),
                                   "completion_tokens": r.general[i].completion_tokens,
                                   "correct": per[r.target.name][2][i]} for r in runs}
        out.append({"suite": "general", "index": i, "id": it["id"], "prompt": it["question"],
                    "reference": it["answers"], "outputs": outputs})
    return out

"""The gate's decision rule, pure: an eval report + thresholds -> pass / fail / inconclusive,
with one auditable check per rule (estimate, 95% interval, threshold, verdict)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .evals.scoring import decide
from .settings import GatewaySettings


@dataclass(frozen=True)
class GateConfig:
    min_uplift: float
    min_vs_production: float
    max_general_drop: float
    min_json_validity: float

    @classmethod
    def from_settings(cls, s: GatewaySettings) -> "GateConfig":
        return cls(s.gate_min_uplift, s.gate_min_vs_production, s.gate_max_general_drop,
                   s.gate_min_json_validity)


def _comparison(report: dict[str, Any], target: str, vs: str) -> dict[str, Any] | None:
    return next((c for c in report.get("comparisons") or []
                 if c["target"] == target and c["vs"] == vs), None)


def apply_gate(report: dict[str, Any], gate: GateConfig, *, candidate: str, base: str,
               production: str | None = None) -> tuple[str, list[dict[str, Any]], list[str]]:
    """Decide from an eval report: ``(decision, checks, reasons)`` with ``decision`` one of
    ``pass``, ``fail``, ``inconclusive``. Every check records its estimate, its 95% interval,
    the threshold and its verdict, so the decision can be audited. The candidate must beat the
    best baseline: the zero-shot base and every prompted (k-shot) baseline in the report."""
    by = {t["name"]: t for t in report["targets"]}
    cand_m = by[candidate]["metrics"]
    metric = report["task"]["primary_metric"]
    checks: list[dict[str, Any]] = []
    n_eval = report.get("n_examples")

    def check(name: str, ci: dict[str, Any] | None, op: str, threshold: float, what: str,
              unit: str = "eval rows") -> None:
        if ci is None:
            return
        d = decide(ci, op, threshold)
        c = {"check": name, "value": round(float(ci["value"]), 4), "ci_low": ci.get("ci_low"),
             "ci_high": ci.get("ci_high"), "n": ci.get("n"), "op": op, "threshold": threshold,
             "verdict": d["verdict"], "passed": d["verdict"] == "pass", "detail": what}
        if ci.get("method"):
            c["method"] = ci["method"]
        if "mcnemar_p" in ci:
            c["mcnemar_p"] = ci["mcnemar_p"]
        if d["verdict"] == "inconclusive":
            c["rows_needed"], c["unit"] = d["rows_needed"], unit
        checks.append(c)

    failed = report.get("n_failed_requests", 0)
    if failed:
        per: dict[str, int] = {}
        for f in report.get("failed_requests") or []:
            per[f["target"]] = per.get(f["target"], 0) + 1
        checks.append({"check": "all_requests_answered", "value": failed, "op": "==", "threshold": 0,
                       "verdict": "inconclusive", "passed": False,
                       "detail": f"{failed} generation(s) failed after retries ("
                       + ", ".join(f"{k}: {v}" for k, v in per.items())
                       + "); an infrastructure error is not a wrong answer: run the gate again"})
    baselines = [base] + [t["name"] for t in report["targets"]
                          if t.get("role") == "base_kshot" and t["name"] != base]
    best = max(baselines, key=lambda b: by[b]["metrics"]["task_score"]["value"])
    for b in baselines:
        comp = _comparison(report, candidate, b)
        label = "uplift_vs_base" if b == base else "uplift_vs_base_kshot"
        b_v = by[b]["metrics"]["task_score"]["value"]
        check(label, comp and comp["uplift"], ">=", gate.min_uplift,
              f"{metric}: candidate {cand_m['task_score']['value']:.3f} vs '{b}' {b_v:.3f}"
              + (" (the best baseline)" if b == best else ""))
    if production and production in by:
        comp = _comparison(report, candidate, production)
        check("uplift_vs_production", comp and comp["uplift"], ">=", gate.min_vs_production,
              f"{metric}: candidate vs production {by[production]['metrics']['task_score']['value']:.3f}")
    comp = _comparison(report, candidate, base)
    if comp and comp.get("general_drop"):
        bm = by[base]["metrics"].get("general") or {}
        check("general_suite_drop", comp["general_drop"], "<=", gate.max_general_drop,
              f"general suite: base {bm.get('value', 0):.3f}, candidate "
              f"{(cand_m.get('general') or {}).get('value', 0):.3f}", unit="general-suite items")
    if report["task"]["kind"] == "json":
        check("json_validity", cand_m["json_valid"], ">=", gate.min_json_validity,
              "share of candidate outputs that parse as JSON objects")
    verdicts = {c["verdict"] for c in checks}
    if failed:
        decision = "inconclusive"
    else:
        decision = "fail" if "fail" in verdicts else "inconclusive" if "inconclusive" in verdicts else "pass"
    reasons = [_reason(c, n_eval) for c in checks]
    return decision, checks, reasons


def _reason(c: dict[str, Any], n_eval: int | None) -> str:
    word = {"pass": "meets", "fail": "fails", "inconclusive": "cannot decide"}[c["verdict"]]
    ci = (f" (95% CI {c['ci_low']:+.3f} .. {c['ci_high']:+.3f})"
          if c.get("ci_low") is not None else "")
    line = f"{c['check']}: {c['value']}{ci} {word} {c['op']} {c['threshold']} ({c['detail']})"
    if c["verdict"] == "inconclusive" and "rows_needed" in c:
        need = c["rows_needed"]
        more = f", {need - c['n']} more" if need and c.get("n") else ""
        line += (f"; about {need} {c['unit']} in all would decide it (have {c.get('n')}{more})" if need
                 else "; the estimate sits on the threshold: more rows will not decide it soon")
        if need and c["check"] == "general_suite_drop":
            line += " (GATEWAY_GENERAL_SUITE_SIZE runs up to 3000 items)"
    return line

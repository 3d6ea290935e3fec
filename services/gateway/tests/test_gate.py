"""The gate's decision table on reports shaped like the engine's: intervals, not point
estimates; the best baseline; failed requests make it inconclusive; float noise at the boundary."""

from tuneloop_gateway.evals.scoring import decide, paired_difference
from tuneloop_gateway.gate import GateConfig, apply_gate

GATE = GateConfig(min_uplift=0.05, min_vs_production=0.0, max_general_drop=0.05, min_json_validity=0.9)


def _ci(value, half=0.02, n=200):
    return {"value": value, "ci_low": value - half, "ci_high": value + half, "n": n}


def _target(name, score, json_ok, role=None, status="ok"):
    return {"name": name, "role": role, "status": status, "metrics": {
        "task_score": _ci(score), "general": _ci(0.5), "json_valid": _ci(json_ok, 0.01)}}


def _report(targets, comps, failed=()):
    return {"task": {"kind": "json", "primary_metric": "json_fields"}, "n_examples": 200,
            "targets": targets, "n_failed_requests": len(failed), "failed_requests": list(failed),
            "comparisons": [{"target": t, "vs": v, "uplift": u, **({"general_drop": g} if g else {})}
                            for t, v, u, g in comps]}


BASES = [_target("base", 0.1, 0.1, "base"), _target("base_3shot", 0.4, 1.0, "base_kshot")]


def _good(**over):
    comps = {"base": ("cand", "base", _ci(0.7), _ci(0.0)),
             "kshot": ("cand", "base_3shot", _ci(0.4), None)}
    comps.update(over)
    return _report(BASES + [_target("cand", 0.8, 1.0, "candidate")], list(comps.values()))


def test_better_candidate_passes_every_check():
    decision, checks, reasons = apply_gate(_good(), GATE, candidate="cand", base="base")
    assert decision == "pass" and all(c["verdict"] == "pass" for c in checks)
    assert {c["check"] for c in checks} == {"uplift_vs_base", "uplift_vs_base_kshot",
                                            "general_suite_drop", "json_validity"}
    kshot = next(c for c in checks if c["check"] == "uplift_vs_base_kshot")
    assert "best baseline" in kshot["detail"]


def test_candidate_must_beat_the_prompted_baseline_not_only_the_zero_shot_one():
    rep = _good(kshot=("cand", "base_3shot", _ci(-0.1), None))
    decision, checks, reasons = apply_gate(rep, GATE, candidate="cand", base="base")
    assert decision == "fail"
    assert [c["check"] for c in checks if c["verdict"] == "fail"] == ["uplift_vs_base_kshot"]
    assert any(r.startswith("uplift_vs_base_kshot") and "fails" in r for r in reasons)


def test_interval_across_the_threshold_is_inconclusive_with_rows_needed():
    # uplift 0.08 but the interval [-0.02, 0.18] straddles min_uplift 0.05
    rep = _good(kshot=("cand", "base_3shot", {"value": 0.08, "ci_low": -0.02, "ci_high": 0.18, "n": 80}, None))
    decision, checks, reasons = apply_gate(rep, GATE, candidate="cand", base="base")
    c = next(c for c in checks if c["check"] == "uplift_vs_base_kshot")
    assert decision == "inconclusive" and c["verdict"] == "inconclusive"
    # half-width 0.10 must shrink below the gap 0.03: (0.10 / 0.03)^2 * 80 rows
    assert c["rows_needed"] == 889
    assert any("about 889 eval rows in all would decide it (have 80, 809 more)" in r for r in reasons)


def test_rows_needed_uses_the_side_of_a_lopsided_interval_that_faces_the_threshold():
    # 39 of 40 JSON-valid: Wilson 0.871 .. 0.996 straddles 0.9; the lower side (0.104) must
    # shrink to the gap (0.075): ~77 rows, never fewer than the 40 already scored
    c = decide({"value": 0.975, "ci_low": 0.871, "ci_high": 0.996, "n": 40}, ">=", 0.9)
    assert c["verdict"] == "inconclusive" and c["rows_needed"] == 77
    # below the threshold for "<=" (a drop of 0.03 with 0.05 allowed): the upper side counts
    c = decide({"value": 0.03, "ci_low": 0.025, "ci_high": 0.08, "n": 100}, "<=", 0.05)
    assert c["rows_needed"] == 625
    # a narrow facing side never asks for fewer rows than there are
    c = decide({"value": 0.95, "ci_low": 0.899, "ci_high": 0.99, "n": 200}, ">=", 0.9)
    assert c["verdict"] == "inconclusive" and c["rows_needed"] >= 201


def test_a_definite_failure_beats_an_inconclusive_check():
    rep = _good(kshot=("cand", "base_3shot", {"value": 0.08, "ci_low": -0.02, "ci_high": 0.18, "n": 80}, None),
                base=("cand", "base", _ci(0.7), _ci(0.3)))  # forgetting clearly above 0.05
    decision, checks, _ = apply_gate(rep, GATE, candidate="cand", base="base")
    assert decision == "fail"
    assert {c["check"] for c in checks if c["verdict"] == "fail"} == {"general_suite_drop"}


def test_failed_requests_make_the_gate_inconclusive_never_rejected():
    failed = [{"target": "cand", "suite": "task", "index": i, "error": "timeout after 30s",
               "attempts": 5} for i in range(8)]
    bad = _good(kshot=("cand", "base_3shot", _ci(-0.3), None))  # would fail on its answers
    rep = {**bad, "n_failed_requests": 8, "failed_requests": failed}
    decision, checks, reasons = apply_gate(rep, GATE, candidate="cand", base="base")
    assert decision == "inconclusive"
    assert checks[0]["check"] == "all_requests_answered" and checks[0]["value"] == 8
    assert "cand: 8" in reasons[0]


def test_boundary_is_tolerant_to_float_noise():
    drop = 0.675 - 0.625
    assert drop > 0.05  # 0.05000000000000004: a naive <= would fail it
    assert decide({"value": drop, "ci_low": drop, "ci_high": drop, "n": 400}, "<=", 0.05)["verdict"] == "pass"
    assert decide({"value": 0.05, "ci_low": 0.0, "ci_high": 0.675 - 0.625, "n": 400}, "<=", 0.05)["verdict"] == "pass"
    assert decide({"value": 0.06, "ci_low": 0.0501, "ci_high": 0.07, "n": 400}, "<=", 0.05)["verdict"] == "fail"
    up = 0.3 - 0.25  # 0.04999999999999999
    assert decide({"value": up, "ci_low": up, "ci_high": 0.1, "n": 100}, ">=", 0.05)["verdict"] == "pass"
    rep = _good(base=("cand", "base", _ci(0.7), {"value": 0.03, "ci_low": 0.0, "ci_high": drop, "n": 400}))
    decision, checks, _ = apply_gate(rep, GATE, candidate="cand", base="base")
    assert decision == "pass" and next(c for c in checks if c["check"] == "general_suite_drop")["passed"]


def test_candidate_worse_than_production_is_refused():
    rep = _good()
    rep["targets"].append(_target("prod", 0.9, 1.0, "production"))
    rep["comparisons"].append({"target": "cand", "vs": "prod", "uplift": _ci(-0.1)})
    decision, checks, _ = apply_gate(rep, GATE, candidate="cand", base="base", production="prod")
    assert decision == "fail"
    assert [c["check"] for c in checks if c["verdict"] == "fail"] == ["uplift_vs_production"]


def test_paired_binary_uses_agresti_min_and_mcnemar():
    a = [1.0] * 30 + [0.0] * 70
    b = [0.0] * 10 + [1.0] * 20 + [0.0] * 70  # a wins 10 discordant pairs, b wins none
    d = paired_difference(a, b)
    assert d["method"] == "agresti-min" and d["discordant"] == [10, 0]
    assert d["value"] == 0.1 and 0.03 < d["ci_low"] < 0.1 < d["ci_high"] < 0.2
    assert d["mcnemar_p"] < 0.01
    same = paired_difference([1.0, 0.0] * 50, [1.0, 0.0] * 50)
    assert same["value"] == 0.0 and same["ci_low"] < 0 < same["ci_high"]  # never zero-width
    assert same["mcnemar_p"] == 1.0
    cont = paired_difference([0.5, 0.7, 0.9], [0.5, 0.5, 0.5])
    assert cont["method"] == "bootstrap"

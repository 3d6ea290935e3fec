"""The gate's decision table on reports shaped like the engine's (values chosen per case)."""

from tuneloop_gateway.promotion import GateConfig, apply_gate

GATE = GateConfig(min_uplift=0.05, min_vs_production=0.0, max_general_drop=0.05, min_json_validity=0.9)


def _target(name, score, general, json_ok, status="ok"):
    return {"name": name, "status": status, "metrics": {
        "task_score": {"value": score}, "general": {"value": general}, "json_valid": {"value": json_ok}}}


def _report(*targets):
    return {"task": {"kind": "json", "primary_metric": "json_fields"}, "targets": list(targets)}


def test_better_candidate_passes_every_check():
    ok, checks, reasons = apply_gate(_report(_target("base", 0.2, 0.5, 0.1), _target("cand", 0.8, 0.5, 1.0)),
                                     GATE, candidate="cand", base="base")
    assert ok and all(c["passed"] for c in checks)
    assert {c["check"] for c in checks} == {"uplift_vs_base", "general_suite_drop", "json_validity"}


def test_each_failing_check_is_named_with_its_value():
    cases = {
        "uplift_vs_base": _target("cand", 0.22, 0.5, 1.0),
        "general_suite_drop": _target("cand", 0.8, 0.3, 1.0),
        "json_validity": _target("cand", 0.8, 0.5, 0.5),
    }
    for name, cand in cases.items():
        ok, checks, reasons = apply_gate(_report(_target("base", 0.2, 0.5, 0.1), cand), GATE,
                                         candidate="cand", base="base")
        failed = [c["check"] for c in checks if not c["passed"]]
        assert not ok and failed == [name], (name, checks)
        assert any(r.startswith(name) and "fails" in r for r in reasons)


def test_candidate_worse_than_production_is_refused():
    rep = _report(_target("base", 0.2, 0.5, 0.1), _target("cand", 0.6, 0.5, 1.0),
                  _target("prod", 0.7, 0.5, 1.0))
    ok, checks, _ = apply_gate(rep, GATE, candidate="cand", base="base", production="prod")
    assert not ok
    assert [c["check"] for c in checks if not c["passed"]] == ["uplift_vs_production"]


def test_candidate_that_never_answered_is_refused():
    rep = _report(_target("base", 0.0, 0.0, 0.0), _target("cand", 0.0, 0.0, 0.0, status="failed"))
    ok, checks, _ = apply_gate(rep, GateConfig(-1, 0, 1, 0), candidate="cand", base="base")
    assert not ok and checks[0]["check"] == "candidate_answers"

"""Reuse of earlier generations: rebuilt only when every prompt matches and nothing failed."""

from __future__ import annotations

from tuneloop_gateway.evals.runner import Example, Target
from tuneloop_gateway.evals.service import _eval_set, _target_run_from_samples

MSGS = [[{"role": "user", "content": f"q{i}"}] for i in range(2)]
EXAMPLES = [Example(i, m, "ref") for i, m in enumerate(MSGS)]
GENERAL = [{"id": "gen-001", "question": "?", "answers": ["a"]}]


def _samples(**override):
    out = {"output": "x", "error": None, "latency_ms": 120.0, "completion_tokens": 3, **override}
    task = [{"suite": "task", "index": i, "prompt": m, "outputs": {"base": dict(out)}}
            for i, m in enumerate(MSGS)]
    return task + [{"suite": "general", "index": 0, "id": "gen-001", "outputs": {"base": dict(out)}}]


def test_rebuilds_generations_with_latency_and_tokens():
    run = _target_run_from_samples(Target("b", "u", "base"), "base", _samples(), EXAMPLES, GENERAL)
    assert run is not None and run.target.name == "b"
    assert [g.output for g in run.task + run.general] == ["x", "x", "x"]
    assert run.task[0].latency_s == 0.12 and run.general[0].completion_tokens == 3


def test_keeps_answers_and_marks_failed_generations_for_regeneration():
    t = Target("b", "u", "base")
    samples = _samples()
    samples[1]["outputs"]["base"] = {"output": "", "error": "timeout after 30s", "attempts": 5,
                                     "latency_ms": 30000.0, "completion_tokens": 0}
    run = _target_run_from_samples(t, "base", samples, EXAMPLES, GENERAL)
    assert run is not None and run.reused == 2
    assert [g.error for g in run.task] == [None, "timeout after 30s"] and run.task[0].output == "x"
    # nothing answered: nothing to reuse
    assert _target_run_from_samples(t, "base", _samples(error="timeout"), EXAMPLES, GENERAL) is None


def test_prompted_baseline_takes_task_samples_only():
    kshot = Target("base_3shot", "u", "base", shots=[{"role": "user", "content": "q"},
                                                     {"role": "assistant", "content": "a"}],
                   general=False)
    run = _target_run_from_samples(kshot, "base", _samples(), EXAMPLES, GENERAL)
    assert run is not None and len(run.task) == 2 and run.general == []


def test_refuses_changed_or_incomplete_samples():
    t = Target("b", "u", "base")
    assert _target_run_from_samples(t, "other", _samples(), EXAMPLES, GENERAL) is None
    changed = _samples()
    changed[1]["prompt"] = [{"role": "user", "content": "different"}]
    assert _target_run_from_samples(t, "base", changed, EXAMPLES, GENERAL) is None
    old = _samples()
    del old[-1]["outputs"]["base"]["latency_ms"]  # stored before general samples kept latency
    assert _target_run_from_samples(t, "base", old, EXAMPLES, GENERAL) is None
    assert _target_run_from_samples(t, "base", _samples()[:2], EXAMPLES, GENERAL) is None


def test_eval_set_identity_ignores_gate_provenance():
    assert _eval_set({"source": {"dataset_id": "ds-1"}}) == _eval_set(
        {"source": {"dataset_id": "ds-1", "job_id": "job-1", "model_id": "mv-1"}})
    assert _eval_set({"source": {"rows": 3}}) == ("rows", 3)

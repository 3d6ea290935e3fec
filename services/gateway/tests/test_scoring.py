"""The metrics, checked against values worked out by hand."""

import json

import pytest

from tuneloop_gateway.evals import scoring
from tuneloop_gateway.evals.report import detect_task, score_example
from tuneloop_gateway.evals.runner import Generation, rows_to_examples


def test_rouge_matches_hand_computed_values():
    # pred: the cat sat on the mat (6) ref: the cat is on the mat (6)
    pred, ref = "The cat sat on the mat.", "the cat is on the mat"
    assert scoring.rouge_n(pred, ref, 1) == pytest.approx(5 / 6)  # the,cat,on,the,mat
    # bigrams pred: the-cat cat-sat sat-on on-the the-mat; ref: the-cat cat-is is-on on-the the-mat
    assert scoring.rouge_n(pred, ref, 2) == pytest.approx(3 / 5)
    # LCS: the cat on the mat = 5
    assert scoring.rouge_l(pred, ref) == pytest.approx(5 / 6)
    assert scoring.rouge_l("", ref) == 0.0
    assert scoring.rouge_l("completely different words", ref) == 0.0


def test_exact_match_normalises_text_and_compares_json_as_values():
    assert scoring.exact_match("  Paris. ", "paris") == 1.0
    assert scoring.exact_match("Lyon", "Paris") == 0.0
    ref = json.dumps({"urgency": "high", "category": "bug"})
    assert scoring.exact_match('{"category": "Bug", "urgency": "high"}', ref) == 1.0
    assert scoring.exact_match('```json\n{"category": "bug", "urgency": "high"}\n```', ref) == 1.0
    assert scoring.exact_match('{"category": "bug"}', ref) == 0.0
    assert scoring.exact_match("not json", ref) == 0.0


def test_json_fields_use_rouge_for_free_text_and_exact_for_labels():
    rows = [{"messages": [{"role": "user", "content": "t"}, {"role": "assistant", "content": json.dumps(
        {"summary": "app crashes on the checkout page", "urgency": "high"})}]}]
    examples = rows_to_examples(rows)
    task = detect_task(examples)
    assert task == {"kind": "json", "primary_metric": "json_fields",
                    "fields": {"summary": "text", "urgency": "label"}}
    good = Generation(output='{"summary": "app crashes on checkout page", "urgency": "high"}')
    s = score_example(good, examples[0], task)
    assert s["json_valid"] == 1.0 and s["fields"]["urgency"] == 1.0
    assert 0.8 < s["fields"]["summary"] < 1.0
    assert s["task_score"] == pytest.approx((1.0 + s["fields"]["summary"]) / 2)
    bad = score_example(Generation(output="garbage {"), examples[0], task)
    assert bad["json_valid"] == 0.0 and bad["task_score"] == 0.0
    # an infrastructure error is not a wrong answer: no score at all
    assert score_example(Generation(output="", error="timeout"), examples[0], task) is None


def test_null_reference_equals_null_prediction():
    ref = {"order_id": None, "urgency": "high"}
    text = {"urgency"} - {"urgency"}
    assert scoring.field_scores({"order_id": None, "urgency": "high"}, ref, text) == {
        "order_id": 1.0, "urgency": 1.0}
    assert scoring.field_scores({"order_id": "A-1", "urgency": "high"}, ref, text)["order_id"] == 0.0
    assert scoring.field_scores({"urgency": "high"}, ref, text)["order_id"] == 0.0  # missing is not null
    assert scoring.field_scores(None, ref, text) == {"order_id": 0.0, "urgency": 0.0}


def test_task_detection_for_plain_text():
    short = rows_to_examples([{"instruction": "q", "output": "Paris"}])
    assert detect_task(short)["primary_metric"] == "exact_match"
    long = rows_to_examples([{"instruction": "q", "input": "x", "output": "a long summary of many words here"}])
    assert detect_task(long)["primary_metric"] == "rougeL"
    assert long[0].messages == [{"role": "user", "content": "q\n\nx"}]
    with pytest.raises(ValueError):
        detect_task(short, "json_fields")


def test_rows_to_examples_names_the_bad_row():
    with pytest.raises(ValueError, match="row 7"):
        rows_to_examples([{"messages": [{"role": "user", "content": "hi"}], "line": 7}])
    for bad in ([5], "x", [{"role": "assistant", "content": 3}], []):
        with pytest.raises(ValueError, match="row 1"):
            rows_to_examples([{"messages": bad}])
    with pytest.raises(ValueError, match="row 2"):
        rows_to_examples([{"instruction": "a", "output": "b"}, {"foo": 1}])


def test_wilson_interval():
    ci = scoring.wilson(8, 10)
    assert ci["value"] == 0.8
    assert ci["ci_low"] == pytest.approx(0.4902, abs=1e-3)
    assert ci["ci_high"] == pytest.approx(0.9433, abs=1e-3)
    assert scoring.wilson(0, 0)["n"] == 0
    assert scoring.wilson(10, 10)["ci_high"] == 1.0


def test_bootstrap_is_seeded_and_brackets_the_mean():
    vals = [0.1, 0.5, 0.9, 0.3, 0.7] * 4
    a, b = scoring.bootstrap(vals), scoring.bootstrap(vals)
    assert a == b
    assert a["ci_low"] < a["value"] == 0.5 < a["ci_high"]
    d = scoring.paired_difference([1, 1, 1, 0], [0, 0, 1, 0])
    assert d["value"] == 0.5
    c = scoring.paired_difference([0.5, 1.0, 0.25, 0.0], [0.0, 0.5, 0.25, 0.0])
    assert c["value"] == 0.25 and c["method"] == "bootstrap"


def test_answer_match_needs_whole_words():
    assert scoring.answer_match("It is Paris, of course.", ["Paris"]) == 1.0
    assert scoring.answer_match("Parisian food", ["Paris"]) == 0.0
    assert scoring.answer_match("The answer is carbon dioxide", ["carbon dioxide", "CO2"]) == 1.0

"""The general-capability suite (generated, shipped, checkable), the k-shot examples, and the
retry/pacing arithmetic of the eval runner."""

from __future__ import annotations

import json
import random
from collections import Counter

import httpx

from tuneloop_gateway.evals.general_suite import CORE_SIZE, FULL_SIZE, KINDS, check_general, generate, load_suite
from tuneloop_gateway.evals.kshot import choose_shots
from tuneloop_gateway.evals.runner import Pace, RetryPolicy, Target, backoff_delay, retry_after, rows_to_examples


def test_shipped_suite_is_the_generators_output_and_large_enough():
    shipped = load_suite(FULL_SIZE)
    assert shipped == generate()  # data/general_suite.jsonl is current
    assert len(shipped) == FULL_SIZE and len({it["id"] for it in shipped}) == len(shipped)
    assert len({it["prompt"] for it in shipped}) == len(shipped)
    core = load_suite()  # the default: the core tier, what every CPU gate has always used
    assert len(core) == CORE_SIZE >= 400 and core == shipped[:CORE_SIZE]
    assert {it["tier"] for it in core} == {"core"} and {it["tier"] for it in shipped[CORE_SIZE:]} == {"extended"}
    for tier in (core, shipped[CORE_SIZE:]):
        kinds = Counter(it["kind"] for it in tier)
        assert set(kinds) == set(KINDS) and min(kinds.values()) >= 50


def test_sizes_above_the_core_add_extended_items_and_keep_the_core():
    core = load_suite()
    bigger = load_suite(1000)
    assert len(bigger) == 1000 and bigger[:CORE_SIZE] == core and bigger == load_suite(1000)
    assert set(Counter(it["kind"] for it in bigger[CORE_SIZE:])) == set(KINDS)
    assert load_suite(10**6) == load_suite(FULL_SIZE)
    assert load_suite(200) == load_suite(200) and all(it["tier"] == "core" for it in load_suite(200))


def _right_answer(c: dict) -> str:
    """An answer that a check of this kind must accept."""
    return {
        "contains": lambda: f"It is {c['answers'][0]}.",
        "exclusive": lambda: c["answer"],
        "case_sensitive": lambda: c["text"],
        "repeat": lambda: " ".join([c["word"]] * c["times"]),
        "exact_word": lambda: c["word"].capitalize() + ".",
        "starts_with": lambda: f"{c['word'].capitalize()} is here.",
        "json_key": lambda: json.dumps({c["key"]: c["value"]}),
        "number_sequence": lambda: ", ".join(map(str, c["numbers"])),
        "bracketed": lambda: f"[{c['word']}]",
        "first_number": lambda: str(c["number"]),
    }[c["type"]]()


def test_every_item_accepts_a_right_answer_and_refuses_a_wrong_one():
    for it in load_suite(FULL_SIZE):
        right = _right_answer(it["check"])
        assert check_general(right, it) == 1.0, (it, right)
        assert check_general("I am not sure.", it) == 0.0, it
    both = next(it for it in load_suite() if it["check"]["type"] == "exclusive")
    assert check_general(" or ".join(both["check"]["options"]), both) == 0.0  # hedging is wrong


def test_subset_keeps_the_mix_of_kinds():
    sub = load_suite(100)
    assert len(sub) == 100 and set(Counter(it["kind"] for it in sub)) == set(KINDS)
    assert sub == load_suite(100)


def _rows(n):
    return [{"instruction": f"Classify ticket {i}", "output": json.dumps({"urgency": "high", "n": i})}
            for i in range(n)]


def test_kshot_examples_are_deterministic_fit_the_budget_and_never_an_eval_prompt():
    rows = _rows(50)
    evals = rows_to_examples(rows[:5])
    shots, info = choose_shots(rows, 3, evals, seed="ds-1", budget_tokens=1000, max_tokens=64)
    again, _ = choose_shots(list(reversed(rows)), 3, evals, seed="ds-1", budget_tokens=1000, max_tokens=64)
    assert shots == again and info["used"] == 3 and len(shots) == 6
    assert [m["role"] for m in shots] == ["user", "assistant"] * 3
    assert not {m["content"] for m in shots} & {ex.messages[0]["content"] for ex in evals}
    small, info = choose_shots(rows, 3, evals, seed="ds-1", budget_tokens=110, max_tokens=64)
    assert info["used"] < 3 and "fit" in info["note"]
    replay = [{"instruction": f"What is {i} plus {i}?", "output": str(2 * i), "line": -(i + 1)} for i in range(50)]
    mixed, _ = choose_shots(replay + rows, 3, evals, seed="ds-1", budget_tokens=1000, max_tokens=64)
    assert mixed == shots  # replay rows (line < 0) are never examples of the task
    none, info = choose_shots(rows, 3, evals, seed="ds-1", budget_tokens=70, max_tokens=64)
    assert none == [] and info["skipped"]
    t = Target("base_3shot", "u", "m", shots=shots, n_shots=3)
    sent = t.prompt([{"role": "system", "content": "s"}, {"role": "user", "content": "q"}])
    assert sent[0]["role"] == "system" and sent[1:-1] == shots and sent[-1]["content"] == "q"


def test_retry_after_and_backoff():
    assert retry_after(httpx.Response(429, headers={"Retry-After": "7"})) == 7.0
    assert retry_after(httpx.Response(503)) is None
    dated = retry_after(httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}))
    assert dated == 0.0  # a date in the past: retry now
    p = RetryPolicy(backoff_s=1.0, backoff_max_s=8.0)
    rng = random.Random(0)
    delays = [backoff_delay(a, p, rng=rng) for a in range(6) for _ in range(50)]
    assert all(0 <= d <= 8.0 for d in delays) and max(delays[200:]) > 4  # grows, capped
    assert backoff_delay(0, p, hint=20.0, rng=rng) == 20.0  # Retry-After is a floor


def test_pace_sizes_timeouts_from_measured_speed():
    import asyncio

    from tuneloop_gateway.evals.runner import Generation

    p = Pace(8, RetryPolicy(timeout_min_s=5, timeout_max_s=600, timeout_safety=4))
    assert p.limit == 1 and p.timeout(64, 0) == 600  # unknown speed: one request, longest timeout
    asyncio.run(p.succeeded(Generation(latency_s=2.0, completion_tokens=20)))  # 0.1 s/token
    assert p.limit == 2 and p.timeout(64, 0) == 4 * 64 * 0.1
    assert p.timeout(64, 2) == 4 * 64 * 0.1 * 4  # doubled per retry
    assert p.timeout(1, 0) == 5  # floor
    p.overloaded()
    assert p.limit == 1


def test_a_target_is_down_only_after_failed_attempts_and_time_without_answers():
    import asyncio

    from tuneloop_gateway.evals.runner import Generation

    p = Pace(4, RetryPolicy(give_up_after=2, give_up_after_s=0))
    p.overloaded()
    assert not p.down  # one failed attempt
    p.overloaded()
    assert p.down
    asyncio.run(p.succeeded(Generation(latency_s=1.0, completion_tokens=10)))
    assert not p.down and p.failed_in_a_row == 0  # an answer resets it
    patient = Pace(4, RetryPolicy(give_up_after=2, give_up_after_s=3600))
    for _ in range(10):
        patient.overloaded()
    assert not patient.down  # a short outage (an engine restart) is ridden out by the retries

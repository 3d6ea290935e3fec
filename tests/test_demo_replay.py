"""Replay rows for the demo: disjoint from the gateway's general suite, cut-off answers dropped."""

from __future__ import annotations

import re

from tuneloop.demo import _interleave
from tuneloop.examples.general_replay import REPLAY_PROMPTS, build_replay_rows, replay_prompts
from tuneloop_gateway.evals.report import load_general_suite

SUFFIX = " Answer in a few words."


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower().removesuffix(SUFFIX.lower())))


def test_replay_prompts_are_disjoint_from_the_general_suite():
    items = load_general_suite(10**6)  # core and extended tiers
    suite = [it["question"] for it in items]
    assert len(suite) >= 400
    for prompt in REPLAY_PROMPTS:
        pw = _words(prompt)
        for q in suite:
            qw = _words(q)
            jaccard = len(pw & qw) / len(pw | qw)
            assert jaccard < 0.8, f"replay prompt {prompt!r} is near the suite's {q!r}"
    # the suite's subjects that a nearby question would leak (same relation, same answer)
    leaky = ("shakespeare", "romeo", "france", "jupiter", "mars", "pacific", "nile", "photosynthesis")
    for prompt in REPLAY_PROMPTS:
        assert not any(w in prompt.lower() for w in leaky), prompt
    # the generated items name their subject (country, element, word): none is in a replay prompt
    replay_words = set().union(*(_words(p) for p in REPLAY_PROMPTS))
    for it in items:
        if it.get("subject"):
            assert not _words(it["subject"]) & replay_words, (it["id"], it["subject"])


def test_replay_prompts_sampling_and_exclude():
    assert len(set(REPLAY_PROMPTS)) == len(REPLAY_PROMPTS)
    a, b = replay_prompts(20, seed=1), replay_prompts(20, seed=1)
    assert a == b and len(a) == 20 and len(set(a)) == 20
    assert replay_prompts(20, seed=2) != a
    assert len(replay_prompts(10_000)) == len(REPLAY_PROMPTS)
    excluded = replay_prompts(10_000, exclude=["What is the capital of Spain?"])
    assert "What is the capital of Spain? Answer in a few words." not in excluded
    assert len(excluded) == len(REPLAY_PROMPTS) - 1


def test_replay_bank_is_gpu_sized_and_hand_written_prompts_come_first():
    from tuneloop.examples.general_replay import _GENERATED, _HANDWRITTEN

    assert len(REPLAY_PROMPTS) >= 600  # the GPU demo asks for 600 (half as many as its 1,200 tickets)
    small = replay_prompts(64, seed=42)
    assert set(small) <= set(_HANDWRITTEN)  # the CPU demo's replay set: short factual prompts
    big = replay_prompts(400, seed=42)
    assert len(set(big)) == 400 and set(_HANDWRITTEN) <= set(big) and set(big) & set(_GENERATED)


def test_build_replay_rows_drops_cut_off_and_empty_answers():
    answers = {"p1": ("Madrid.", "stop"), "p2": ("Once upon a time there", "length"),
               "p3": ("   ", "stop"), "p4": ("x" * 500, "stop"), "p5": ("Seven.", None)}

    def ask(prompt: str) -> tuple[str, str | None]:
        if prompt == "p6":
            raise TimeoutError("upstream timed out")
        return answers[prompt]

    rows, dropped = build_replay_rows(ask, [*answers, "p6"], concurrency=3)
    assert rows == [{"instruction": "p1", "input": "", "output": "Madrid."},
                    {"instruction": "p5", "input": "", "output": "Seven."}]
    assert {d["prompt"]: d["reason"] for d in dropped} == {
        "p2": "cut off at max_tokens", "p3": "empty answer", "p4": "answer too long",
        "p6": "request failed: upstream timed out"}


def test_interleave_spreads_replay_rows_through_the_tickets():
    tickets = [{"t": i} for i in range(128)]
    replay = [{"r": j} for j in range(64)]
    mixed = _interleave(tickets, replay)
    assert len(mixed) == 192
    assert [r for r in mixed if "t" in r] == tickets and [r for r in mixed if "r" in r] == replay
    first_half = mixed[:96]
    assert 28 <= sum("r" in r for r in first_half) <= 36
    assert _interleave(tickets, []) == tickets

"""The built-in support-ticket generator and the tiny local model builder."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tuneloop.examples.support_tickets import CATEGORIES, INSTRUCTION, URGENCIES, generate


def test_generator_deterministic_varied_and_valid() -> None:
    a, b = generate(400, seed=3), generate(400, seed=3)
    assert a == b and generate(50, seed=4) != a[:50]
    assert len({r["input"] for r in a}) == 400
    outs = [json.loads(r["output"]) for r in a]
    assert all(r["instruction"] == INSTRUCTION for r in a)
    cats, urg = Counter(o["category"] for o in outs), Counter(o["urgency"] for o in outs)
    assert set(cats) == set(CATEGORIES) and set(urg) == set(URGENCIES)
    assert min(cats.values()) > 40 and min(urg.values()) > 80


def test_tiny_model_loads_and_chats(tiny_random_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_random_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_random_dir)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    ids = tok(text, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert sum(p.numel() for p in model.parameters()) < 2_000_000

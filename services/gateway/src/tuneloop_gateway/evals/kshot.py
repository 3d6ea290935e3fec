"""The prompted baseline's examples: k rows of the train split, chosen deterministically and
fitted to a context budget.

The article's first advice is to try prompting before fine-tuning, so the gate compares a
candidate with the base *prompted with examples*, not only with the zero-shot base (which has
never seen the output format). The examples are the same for every eval of a dataset version:
rows are ordered by a hash of (seed, row content) — a seeded shuffle that does not depend on
the order they were read in — and taken in that order while they fit the budget. Rows whose
prompt is also an eval prompt are never used (that would show the model the answer), nor replay
rows (``line < 0`` in the train split: general rows, not the task).

Token counts are estimated from characters (one token per 3 characters, on the safe side for
English BPE vocabularies); the budget covers the examples, the longest eval prompt and
``max_tokens`` of answer.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from .runner import Example, rows_to_examples


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    return sum(math.ceil(len(m.get("content") or "") / 3) + 4 for m in messages)


def choose_shots(rows: list[dict[str, Any]], k: int, examples: list[Example], *, seed: str,
                 budget_tokens: int, max_tokens: int) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """``(few-shot turns, info)``: up to ``k`` train rows as user/assistant turns."""
    usable: list[tuple[str, Example]] = []
    for row in rows:
        line = row.get("line") if isinstance(row, dict) else None
        if isinstance(line, int) and line < 0:
            continue  # a replay row (general, not the task): never an example of the task
        try:
            ex = rows_to_examples([row])[0]
        except ValueError:
            continue
        key = json.dumps([ex.messages, ex.reference], sort_keys=True)
        usable.append((hashlib.sha256(f"{seed}\0{key}".encode()).hexdigest(), ex))
    eval_prompts = {json.dumps(ex.messages, sort_keys=True) for ex in examples}
    longest = max((estimate_tokens(ex.messages) for ex in examples), default=0)
    room = budget_tokens - longest - max_tokens
    shots: list[dict[str, str]] = []
    used, skipped_long = 0, 0
    for _, ex in sorted(usable, key=lambda p: p[0]):
        if used >= k:
            break
        if json.dumps(ex.messages, sort_keys=True) in eval_prompts:
            continue
        turns = [m for m in ex.messages if m["role"] != "system"]
        turns = turns + [{"role": "assistant", "content": ex.reference}]
        cost = estimate_tokens(turns)
        if cost > room:
            skipped_long += 1
            continue
        shots += turns
        room -= cost
        used += 1
    info: dict[str, Any] = {"used": used, "estimated_tokens": estimate_tokens(shots),
                            "budget_tokens": budget_tokens}
    if used < k:
        info["note"] = (f"{used} of {k} examples fit the {budget_tokens}-token budget"
                        if usable else "the train split has no usable rows")
    if not used:
        info["skipped"] = info["note"]
    return shots, info

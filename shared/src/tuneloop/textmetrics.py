"""Text metrics shared by the gateway's evals and the trainer's export check (no dependencies):
word tokens, ROUGE-L F1 and the JSON value of an answer (a Markdown code fence allowed)."""

from __future__ import annotations

import json
import re
from typing import Any

_WORD = re.compile(r"[a-z0-9]+")
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.S)


def tokens(text: str) -> list[str]:
    return _WORD.findall(str(text).lower())


def f1(overlap: float, n_pred: int, n_ref: int) -> float:
    if overlap <= 0 or n_pred == 0 or n_ref == 0:
        return 0.0
    p, r = overlap / n_pred, overlap / n_ref
    return 2 * p * r / (p + r)


def lcs(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (longest common subsequence of tokens)."""
    pt, rt = tokens(prediction), tokens(reference)
    return f1(lcs(pt, rt), len(pt), len(rt))


def parse_json(text: str) -> Any | None:
    """The JSON value in ``text`` (a surrounding Markdown code fence is allowed), else None."""
    s = str(text).strip()
    m = _FENCE.match(s)
    if m:
        s = m.group(1).strip()
    if not s or s[0] not in "{[":
        return None
    try:
        return json.loads(s)
    except ValueError:
        return None

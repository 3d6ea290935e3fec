"""Metrics, implemented here with no extra dependency: exact match, JSON validity and per-field
accuracy, ROUGE-1/2/L, the general-suite answer match, Wilson and bootstrap intervals.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

_WORD = re.compile(r"[a-z0-9]+")
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.S)


# -- text normalisation --------------------------------------------------------------------
def normalize(text: Any) -> str:
    """Lowercase, collapse whitespace, strip surrounding quotes and final punctuation."""
    s = " ".join(str(text).lower().split())
    return s.strip(" \"'`").rstrip(".!?;:,").strip()


def tokens(text: str) -> list[str]:
    return _WORD.findall(str(text).lower())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when equal after normalisation (JSON compared as parsed values)."""
    ref_json, pred_json = parse_json(reference), parse_json(prediction)
    if ref_json is not None:
        return float(pred_json is not None and _canon(pred_json) == _canon(ref_json))
    return float(normalize(prediction) == normalize(reference))


def _canon(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _canon(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canon(v) for v in value]
    if isinstance(value, str):
        return normalize(value)
    return value


# -- JSON ----------------------------------------------------------------------------------
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


def is_text_field(values: Sequence[Any]) -> bool:
    """A field is free text (scored by ROUGE-L) when its references average > 3 words."""
    strs = [v for v in values if isinstance(v, str)]
    if not strs:
        return False
    return sum(len(tokens(v)) for v in strs) / len(strs) > 3


def field_scores(prediction: Any, reference: dict, text_fields: set[str]) -> dict[str, float]:
    """Per-field scores of a parsed prediction against a reference object.

    Categorical fields: 1/0 exact (normalised); text fields: ROUGE-L F1. A missing field or
    a prediction that is not an object scores 0.
    """
    out: dict[str, float] = {}
    for key, ref in reference.items():
        pred = prediction.get(key) if isinstance(prediction, dict) else None
        if pred is None:
            out[key] = 0.0
        elif key in text_fields:
            out[key] = rouge_l(str(pred), str(ref))
        else:
            out[key] = float(_canon(pred) == _canon(ref))
    return out


# -- ROUGE ---------------------------------------------------------------------------------
def _f1(overlap: float, n_pred: int, n_ref: int) -> float:
    if overlap <= 0 or n_pred == 0 or n_ref == 0:
        return 0.0
    p, r = overlap / n_pred, overlap / n_ref
    return 2 * p * r / (p + r)


def rouge_n(prediction: str, reference: str, n: int) -> float:
    """ROUGE-N F1 over lowercase alphanumeric tokens (clipped n-gram counts)."""
    pt, rt = tokens(prediction), tokens(reference)
    pg = Counter(tuple(pt[i:i + n]) for i in range(len(pt) - n + 1))
    rg = Counter(tuple(rt[i:i + n]) for i in range(len(rt) - n + 1))
    overlap = sum((pg & rg).values())
    return _f1(overlap, sum(pg.values()), sum(rg.values()))


def _lcs(a: list[str], b: list[str]) -> int:
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
    return _f1(_lcs(pt, rt), len(pt), len(rt))


def rouge_all(prediction: str, reference: str) -> dict[str, float]:
    return {"rouge1": rouge_n(prediction, reference, 1), "rouge2": rouge_n(prediction, reference, 2),
            "rougeL": rouge_l(prediction, reference)}


# -- general suite -------------------------------------------------------------------------
def answer_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when any reference answer appears as a whole-token sequence in the prediction."""
    pt = tokens(prediction)
    joined = " " + " ".join(pt) + " "
    for ans in answers:
        at = tokens(ans)
        if at and (" " + " ".join(at) + " ") in joined:
            return 1.0
    return 0.0


# -- confidence intervals ------------------------------------------------------------------
def wilson(successes: float, n: int, z: float = 1.96) -> dict[str, float | int]:
    """Proportion with its Wilson score interval (95% by default)."""
    if n <= 0:
        return {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": 0}
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return {"value": round(p, 4), "ci_low": round(max(0.0, centre - half), 4),
            "ci_high": round(min(1.0, centre + half), 4), "n": n}


def bootstrap(values: Sequence[float], *, resamples: int = 1000, seed: int = 0,
              alpha: float = 0.05) -> dict[str, float | int]:
    """Mean with a percentile bootstrap interval (seeded: the same data gives the same CI)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": 0}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(resamples, arr.size))
    means = arr[idx].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return {"value": round(float(arr.mean()), 4), "ci_low": round(float(lo), 4),
            "ci_high": round(float(hi), 4), "n": int(arr.size)}


def paired_difference(a: Sequence[float], b: Sequence[float], **kw: Any) -> dict[str, float | int]:
    """Mean of ``a - b`` over the same examples, with a bootstrap interval."""
    return bootstrap([x - y for x, y in zip(a, b, strict=True)], **kw)


def proportion_or_mean(values: Sequence[float]) -> dict[str, float | int]:
    """Wilson for 0/1 data, bootstrap for anything continuous."""
    if all(v in (0.0, 1.0) for v in values):
        return wilson(sum(values), len(values))
    return bootstrap(values)


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else 0.0

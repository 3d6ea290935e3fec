"""Metrics, implemented here with no extra dependency: exact match, JSON validity and per-field
accuracy, ROUGE-1/2/L, the general-suite answer match, Wilson and bootstrap intervals.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from tuneloop.textmetrics import f1 as _f1
from tuneloop.textmetrics import parse_json, rouge_l, tokens  # (re-exported)



# -- text normalisation --------------------------------------------------------------------
def normalize(text: Any) -> str:
    """Lowercase, collapse whitespace, strip surrounding quotes and final punctuation."""
    s = " ".join(str(text).lower().split())
    return s.strip(" \"'`").rstrip(".!?;:,").strip()


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
def is_text_field(values: Sequence[Any]) -> bool:
    """A field is free text (scored by ROUGE-L) when its references average > 3 words."""
    strs = [v for v in values if isinstance(v, str)]
    if not strs:
        return False
    return sum(len(tokens(v)) for v in strs) / len(strs) > 3


def field_scores(prediction: Any, reference: dict, text_fields: set[str]) -> dict[str, float]:
    """Per-field scores of a parsed prediction against a reference object.

    Categorical fields: 1/0 exact (normalised); text fields: ROUGE-L F1. A reference ``null``
    scores 1 when the prediction has the field and it is ``null``. A missing field or a
    prediction that is not an object scores 0.
    """
    out: dict[str, float] = {}
    for key, ref in reference.items():
        pred = prediction.get(key) if isinstance(prediction, dict) else None
        if ref is None:  # null equals null: the model must say null (the key present) too
            out[key] = float(isinstance(prediction, dict) and key in prediction and pred is None)
        elif pred is None:
            out[key] = 0.0
        elif key in text_fields:
            out[key] = rouge_l(str(pred), str(ref))
        else:
            out[key] = float(_canon(pred) == _canon(ref))
    return out


# -- ROUGE ---------------------------------------------------------------------------------
def rouge_n(prediction: str, reference: str, n: int) -> float:
    """ROUGE-N F1 over lowercase alphanumeric tokens (clipped n-gram counts)."""
    pt, rt = tokens(prediction), tokens(reference)
    pg = Counter(tuple(pt[i:i + n]) for i in range(len(pt) - n + 1))
    rg = Counter(tuple(rt[i:i + n]) for i in range(len(rt) - n + 1))
    overlap = sum((pg & rg).values())
    return _f1(overlap, sum(pg.values()), sum(rg.values()))


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


def paired_difference(a: Sequence[float], b: Sequence[float], **kw: Any) -> dict[str, Any]:
    """Mean of ``a - b`` over the same examples with a 95% interval: for 0/1 data the
    Agresti-Min interval for matched proportions plus McNemar's exact test (``method`` says
    which), for anything continuous a seeded percentile bootstrap."""
    if a and all(v in (0.0, 1.0) for v in (*a, *b)):
        return paired_binary(a, b)
    out: dict[str, Any] = bootstrap([x - y for x, y in zip(a, b, strict=True)], **kw)
    out["method"] = "bootstrap"
    return out


def paired_binary(a: Sequence[float], b: Sequence[float], z: float = 1.96) -> dict[str, Any]:
    """Difference of matched proportions ``P(a) - P(b)``.

    Interval: Agresti & Min (2005), Wald on the 2x2 table with 0.5 added to each cell (good
    coverage even with few discordant pairs, never a zero-width interval). ``mcnemar_p``: the
    exact (binomial) McNemar test of no difference on the discordant pairs.
    """
    pairs = list(zip(a, b, strict=True))
    n = len(pairs)
    if n == 0:
        return {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": 0, "method": "agresti-min",
                "discordant": [0, 0], "mcnemar_p": 1.0}
    only_a = sum(1 for x, y in pairs if x == 1.0 and y == 0.0)
    only_b = sum(1 for x, y in pairs if x == 0.0 and y == 1.0)
    both = sum(1 for x, y in pairs if x == 1.0 and y == 1.0)
    neither = n - only_a - only_b - both
    n11, n10, n01, n00 = both + 0.5, only_a + 0.5, only_b + 0.5, neither + 0.5
    nt = n + 2.0
    d = (n10 - n01) / nt
    var = ((n10 + n01) - (n10 - n01) ** 2 / nt) / (nt * nt)
    half = z * math.sqrt(max(var, 0.0))
    del n11, n00
    return {"value": round((only_a - only_b) / n, 4), "ci_low": round(max(-1.0, d - half), 4),
            "ci_high": round(min(1.0, d + half), 4), "n": n, "method": "agresti-min",
            "discordant": [only_a, only_b], "mcnemar_p": round(mcnemar_exact(only_a, only_b), 6)}


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: binomial(b + c, 1/2) on the discordant counts."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2 * tail)


# -- decisions on intervals ----------------------------------------------------------------
EPS = 1e-9  # float noise: 0.675 - 0.625 is 0.05000000000000004, which is 0.05


def decide(ci: dict[str, Any], op: str, threshold: float) -> dict[str, Any]:
    """Decide ``value op threshold`` on a 95% interval, tolerant to float noise (``EPS``).

    ``>=``: pass when the lower bound clears the threshold, fail when the upper bound is below
    it; ``<=`` mirrored. Otherwise ``inconclusive``, with ``rows_needed``: roughly how many rows
    in all would shrink the interval (width ~ 1/sqrt(n)) to decide at the current estimate
    (None when the estimate sits on the threshold). The side of the interval that faces the
    threshold is what must shrink: Wilson intervals near 0 or 1 are lopsided (39/40 JSON-valid:
    0.975, interval 0.871 .. 0.996), and their half-width would promise fewer rows than there are.
    """
    lo, hi, value, n = float(ci["ci_low"]), float(ci["ci_high"]), float(ci["value"]), int(ci.get("n") or 0)
    if op == ">=":
        verdict = "pass" if lo >= threshold - EPS else "fail" if hi < threshold - EPS else "inconclusive"
    else:
        verdict = "pass" if hi <= threshold + EPS else "fail" if lo > threshold + EPS else "inconclusive"
    out: dict[str, Any] = {"verdict": verdict}
    if verdict == "inconclusive":
        gap = abs(value - threshold)
        side = (hi - value) if threshold > value else (value - lo)
        out["rows_needed"] = (max(n + 1, math.ceil(n * (side / gap) ** 2))
                              if gap > EPS and n and side > 0 else None)
    return out


def proportion_or_mean(values: Sequence[float]) -> dict[str, float | int]:
    """Wilson for 0/1 data, bootstrap for anything continuous."""
    if all(v in (0.0, 1.0) for v in values):
        return wilson(sum(values), len(values))
    return bootstrap(values)


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else 0.0

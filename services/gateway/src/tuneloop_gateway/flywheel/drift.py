"""How far captured prompts are from a training set, on CPU and without embeddings.

Two views, both over the *prompts* (what users send, not the answers):

- length: word-token counts (``tuneloop.textmetrics.tokens``, the same tokens the gateway's
  metrics use) of captured vs training prompts: quantiles, the two-sample Kolmogorov-Smirnov
  statistic and the population stability index over the training set's deciles.
- content: word 3-gram shingles. ``novel_ngram_share`` is the share of captured 3-grams never
  seen in a training prompt; each captured prompt's *nearest training prompt* is found through
  an inverted index of shingles (candidates from its rarest shingles, then the exact Jaccard
  similarity of the best candidates), which also answers the review queue's near-duplicate
  filter. A prompt whose nearest neighbour is below ``novel_below`` is novel.

Dataset versions are immutable, so an index is built once per version and kept (a small LRU).
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tuneloop.textmetrics import tokens

CANDIDATE_POSTINGS = 20_000  # postings visited per query at most
CANDIDATES = 12              # exact Jaccard computed for this many best candidates


def prompt_text(messages: list[dict[str, Any]]) -> str:
    """The prompt of a conversation: every non-assistant turn before the last answer."""
    msgs = list(messages)
    if msgs and msgs[-1].get("role") == "assistant":
        msgs = msgs[:-1]
    return "\n".join(text_of(m.get("content")) for m in msgs if m.get("role") != "assistant")


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def shingles(words: list[str]) -> set[int]:
    if len(words) < 3:
        return {hash(" ".join(words))} if words else set()
    return {hash((words[i], words[i + 1], words[i + 2])) for i in range(len(words) - 2)}


@dataclass
class TrainingIndex:
    """Shingle sets, an inverted index and the token lengths of a training set's prompts."""

    sets: list[set[int]]
    postings: dict[int, list[int]]
    lengths: list[int]
    vocabulary: set[str]

    @classmethod
    def build(cls, prompts: list[str]) -> "TrainingIndex":
        sets, lengths, vocab = [], [], set()
        postings: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            words = tokens(p)
            lengths.append(len(words))
            vocab.update(words)
            sh = shingles(words)
            sets.append(sh)
            for h in sh:
                postings.setdefault(h, []).append(i)
        return cls(sets, postings, sorted(lengths), vocab)

    def nearest(self, sh: set[int]) -> float:
        """Jaccard similarity of the most similar training prompt (0 when none shares one)."""
        if not sh:
            return 0.0
        counts: Counter[int] = Counter()
        visited = 0
        for h in sorted(sh, key=lambda h: len(self.postings.get(h, ()))):
            plist = self.postings.get(h)
            if not plist:
                continue
            if visited and visited + len(plist) > CANDIDATE_POSTINGS:
                break
            counts.update(plist)
            visited += len(plist)
        best = 0.0
        for i, _ in counts.most_common(CANDIDATES):
            other = self.sets[i]
            inter = len(sh & other)
            best = max(best, inter / (len(sh) + len(other) - inter))
        return best


class IndexCache:
    """Indexes of immutable dataset versions, least recently used out first."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._items: OrderedDict[str, TrainingIndex] = OrderedDict()

    def get(self, key: str) -> TrainingIndex | None:
        idx = self._items.get(key)
        if idx is not None:
            self._items.move_to_end(key)
        return idx

    def put(self, key: str, idx: TrainingIndex) -> None:
        self._items[key] = idx
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


def quantiles(sorted_values: Sequence[float], qs: tuple[float, ...] = (0.1, 0.5, 0.9)) -> dict[str, float]:
    if not sorted_values:
        return {}
    n = len(sorted_values)
    return {f"p{int(q * 100)}": float(sorted_values[min(n - 1, int(q * n))]) for q in qs}


def ks_statistic(a: list[int], b: list[int]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic of two sorted samples."""
    if not a or not b:
        return 0.0
    d = 0.0
    for x in set(a) | set(b):
        fa = bisect.bisect_right(a, x) / len(a)
        fb = bisect.bisect_right(b, x) / len(b)
        d = max(d, abs(fa - fb))
    return d


def psi(train: list[int], captured: list[int], bins: int = 10) -> float:
    """Population stability index over the training sample's quantile bins (0.1: a shift worth
    a look, 0.25: a large one, by the usual rule of thumb)."""
    if not train or not captured:
        return 0.0
    edges = sorted({train[min(len(train) - 1, int(len(train) * k / bins))] for k in range(1, bins)})

    def shares(values: list[int]) -> list[float]:
        counts = [0] * (len(edges) + 1)
        for v in values:
            counts[bisect.bisect_left(edges, v)] += 1
        return [max(c / len(values), 1e-4) for c in counts]

    p, q = shares(train), shares(captured)
    return sum((qi - pi) * math.log(qi / pi) for pi, qi in zip(p, q, strict=True))


def drift_report(index: TrainingIndex, prompts: list[str], *, novel_below: float = 0.2,
                 max_ks: float = 0.3, max_novel_share: float = 0.5) -> dict[str, Any]:
    """The drift of ``prompts`` (captured) from the indexed training prompts."""
    lengths, nearest, grams, unseen, oov, words_total = [], [], 0, 0, 0, 0
    for p in prompts:
        words = tokens(p)
        lengths.append(len(words))
        words_total += len(words)
        oov += sum(1 for w in words if w not in index.vocabulary)
        sh = shingles(words)
        grams += len(sh)
        unseen += sum(1 for h in sh if h not in index.postings)
        nearest.append(index.nearest(sh))
    lengths.sort()
    ks = ks_statistic(index.lengths, lengths)
    novel = sum(1 for s in nearest if s < novel_below)
    novel_share = novel / len(prompts) if prompts else 0.0
    reasons = []
    if ks > max_ks:
        reasons.append(f"prompt lengths moved: KS {ks:.2f} > {max_ks}")
    if novel_share > max_novel_share:
        reasons.append(f"{novel_share:.0%} of captured prompts have no training prompt with "
                       f"3-gram Jaccard >= {novel_below} (limit {max_novel_share:.0%})")
    srt = sorted(nearest)
    return {
        "object": "drift_report", "captured": len(prompts), "training_rows": len(index.sets),
        "drifted": bool(reasons) and bool(prompts), "reasons": reasons,
        "length": {"training": {**quantiles(index.lengths), "mean": _mean(index.lengths)},
                   "captured": {**quantiles(lengths), "mean": _mean(lengths)},
                   "ks": round(ks, 4), "psi": round(psi(index.lengths, lengths), 4)},
        "content": {"novel_ngram_share": round(unseen / grams, 4) if grams else 0.0,
                    "out_of_vocabulary_share": round(oov / words_total, 4) if words_total else 0.0,
                    "nearest_similarity": {**{k: round(v, 4) for k, v in quantiles(srt).items()},
                                           "mean": round(_mean(srt), 4)},
                    "novel_prompt_share": round(novel_share, 4), "novel_below": novel_below},
        "limits": {"max_ks": max_ks, "max_novel_share": max_novel_share},
    }


def _mean(values: list[float] | list[int]) -> float:
    return round(sum(values) / len(values), 3) if values else 0.0

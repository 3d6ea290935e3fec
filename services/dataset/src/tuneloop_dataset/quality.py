"""The quality report: duplicates, near duplicates, output checks, token lengths, leakage,
size warnings (the article's thresholds) and a chat-template preview.

:class:`ReportBuilder` is fed one row at a time (``add``), so it works on a stream; only
small per-row features (a digest, a MinHash, a token count) are kept.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from datasketch import MinHash, MinHashLSH

from .parsing import canonical, row_digest

_WORD = re.compile(r"\w+", re.UNICODE)
_LIST_CAP = 50
_TOKEN_BATCH = 256

SIZE_RARELY = 200
SIZE_SAFE = 1000
TARGET = (500, 5000)


def size_assessment(n_train: int) -> tuple[str, list[dict[str, str]]]:
    """The article's dataset-size advice as a level and warnings."""
    if n_train < SIZE_RARELY:
        return "too_small", [{"code": "too_few_examples", "message":
                              f"{n_train} training examples: under {SIZE_RARELY} rarely produces "
                              "meaningful specialisation; aim for 500-5000 high-quality examples"}]
    if n_train < SIZE_SAFE:
        level = "small" if n_train < TARGET[0] else "target"
        return level, [{"code": "below_safe_minimum", "message":
                        f"{n_train} training examples: {SIZE_SAFE}+ is a safer minimum "
                        "(target 500-5000 high-quality examples)"}]
    if n_train <= TARGET[1]:
        return "target", []
    return "large", [{"code": "above_target_range", "message":
                      f"{n_train} training examples: more than {TARGET[1]}; more low-quality "
                      "data is worse than fewer high-quality examples, curate if unsure"}]


def shingles(messages: list[dict[str, str]], k: int = 3) -> set[bytes]:
    words = _WORD.findall(" ".join(m["content"] for m in messages).lower())
    if len(words) < k:
        return {" ".join(words).encode()} if words else {b""}
    return {" ".join(words[i:i + k]).encode() for i in range(len(words) - k + 1)}


def looks_like_json(text: str) -> bool:
    s = text.strip()
    if s.startswith("```"):
        s = s.strip("`").removeprefix("json").strip()
    return s.startswith(("{", "["))


def json_parses(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


@dataclass
class _Tok:
    name: str
    tokenizer: Any


class ReportBuilder:
    """Accumulates per-row features; :meth:`finish` returns the report dict."""

    def __init__(self, *, tokenizer: Any = None, tokenizer_name: str | None = None,
                 tokenizer_note: str | None = None, max_seq_length: int = 2048,
                 near_threshold: float = 0.85, num_perm: int = 64, near_max_rows: int = 200_000,
                 short_chars: int = 3, preview_rows: int = 3, expected_rows: int = 0) -> None:
        self.tok = _Tok(tokenizer_name or "", tokenizer) if tokenizer is not None else None
        self.tokenizer_note = tokenizer_note
        self.max_seq_length = max_seq_length
        self.threshold = near_threshold
        self.num_perm = num_perm
        self.near_enabled = expected_rows <= near_max_rows
        self.near_max_rows = near_max_rows
        self.short_chars = short_chars
        self.preview_rows = preview_rows
        self.by_digest: dict[bytes, list[tuple[int, str]]] = defaultdict(list)
        self.prompt_digests: dict[str, dict[bytes, int]] = {"train": {}, "eval": {}}
        self.minhashes: dict[str, list[tuple[int, MinHash]]] = {"train": [], "eval": []}
        self.n = {"train": 0, "eval": 0}
        self.short: list[int] = []
        self.short_total = 0
        self.bad_json: list[int] = []
        self.bad_json_total = 0
        self.json_outputs = 0
        self.token_counts: list[int] = []
        self.truncated: list[int] = []
        self.truncated_total = 0
        self._pending: list[tuple[int, list[dict[str, str]]]] = []
        self.preview: list[dict[str, Any]] = []

    # -- feeding -----------------------------------------------------------------------
    def add(self, line: int, messages: list[dict[str, str]], split: str) -> None:
        self.n[split] += 1
        canon = canonical(messages)
        self.by_digest[row_digest(canon)].append((line, split))
        prompt = row_digest(canonical(messages[:-1]))
        self.prompt_digests[split].setdefault(prompt, line)
        answer = messages[-1]["content"]
        if len(answer.strip()) < self.short_chars:
            self.short_total += 1
            if len(self.short) < _LIST_CAP:
                self.short.append(line)
        if looks_like_json(answer):
            if json_parses(answer.strip()):
                self.json_outputs += 1
            else:
                self.bad_json_total += 1
                if len(self.bad_json) < _LIST_CAP:
                    self.bad_json.append(line)
        if self.near_enabled:
            mh = MinHash(num_perm=self.num_perm, seed=1)
            mh.update_batch(list(shingles(messages)))
            self.minhashes[split].append((line, mh))
        if split == "train" and len(self.preview) < self.preview_rows:
            self.preview.append({"line": line, "messages": messages})
        if self.tok is not None:
            self._pending.append((line, messages))
            if len(self._pending) >= _TOKEN_BATCH:
                self._flush_tokens()

    def _flush_tokens(self) -> None:
        if not self._pending or self.tok is None:
            return
        tok = self.tok.tokenizer
        texts = [render(tok, m) for _, m in self._pending]
        ids = tok(texts, add_special_tokens=False)["input_ids"]
        for (line, _), row_ids in zip(self._pending, ids):
            n = len(row_ids)
            self.token_counts.append(n)
            if n > self.max_seq_length:
                self.truncated_total += 1
                if len(self.truncated) < _LIST_CAP:
                    self.truncated.append(line)
        self._pending = []

    # -- results -----------------------------------------------------------------------
    def _exact(self) -> dict[str, Any]:
        groups = [[ln for ln, _ in rows] for rows in self.by_digest.values() if len(rows) > 1]
        extra = sum(len(g) - 1 for g in groups)
        groups.sort(key=lambda g: g[0])
        return {"rows": extra, "groups": len(groups), "examples": groups[:_LIST_CAP]}

    def _near(self) -> dict[str, Any]:
        if not self.near_enabled:
            return {"checked": False, "note": f"skipped above {self.near_max_rows} rows"}
        lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        pairs: list[list[int]] = []
        rows = 0
        all_mh = sorted(self.minhashes["train"] + self.minhashes["eval"], key=lambda x: x[0])
        lines_seen: dict[int, MinHash] = {}
        for line, mh in all_mh:
            hits = [h for h in lsh.query(mh) if lines_seen[h].jaccard(mh) >= self.threshold]
            exact_same = [h for h in hits if lines_seen[h].digest().tobytes() == mh.digest().tobytes()]
            near = [h for h in hits if h not in exact_same]
            if near:
                rows += 1
                if len(pairs) < _LIST_CAP:
                    pairs.append([min(near), line])
            key = line
            lines_seen[key] = mh
            lsh.insert(key, mh)
        return {"checked": True, "threshold": self.threshold, "rows": rows, "examples": pairs}

    def _leakage(self) -> dict[str, Any]:
        exact_pairs: list[list[int]] = []
        exact = 0
        for rows in self.by_digest.values():
            train = [ln for ln, s in rows if s == "train"]
            ev = [ln for ln, s in rows if s == "eval"]
            if train and ev:
                exact += len(ev)
                if len(exact_pairs) < _LIST_CAP:
                    exact_pairs.append([train[0], ev[0]])
        prompt_pairs = [[self.prompt_digests["train"][d], ln]
                        for d, ln in self.prompt_digests["eval"].items()
                        if d in self.prompt_digests["train"]]
        out: dict[str, Any] = {
            "exact": {"rows": exact, "examples": exact_pairs},
            "same_prompt": {"rows": len(prompt_pairs), "examples": sorted(prompt_pairs)[:_LIST_CAP]},
        }
        if not self.near_enabled or not self.minhashes["eval"]:
            out["near"] = {"checked": self.near_enabled, "rows": 0, "examples": []}
            return out
        lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        train_mh = {}
        for line, mh in self.minhashes["train"]:
            lsh.insert(line, mh)
            train_mh[line] = mh
        near_pairs = []
        for line, mh in self.minhashes["eval"]:
            hits = [h for h in lsh.query(mh) if train_mh[h].jaccard(mh) >= self.threshold]
            if hits:
                near_pairs.append([min(hits), line])
        out["near"] = {"checked": True, "threshold": self.threshold, "rows": len(near_pairs),
                       "examples": near_pairs[:_LIST_CAP]}
        return out

    def _tokens(self) -> dict[str, Any] | None:
        if self.tok is None:
            return None
        self._flush_tokens()
        counts = sorted(self.token_counts)
        if not counts:
            return None
        return {
            "tokenizer": self.tok.name,
            "max_seq_length": self.max_seq_length,
            "rows": len(counts),
            "min": counts[0], "max": counts[-1],
            "mean": round(statistics.fmean(counts), 2),
            "p50": _pct(counts, 50), "p90": _pct(counts, 90), "p95": _pct(counts, 95),
            "p99": _pct(counts, 99),
            "total": sum(counts),
            "histogram": histogram(counts, self.max_seq_length),
            "truncated": {"rows": self.truncated_total, "lines": self.truncated},
        }

    def _preview(self) -> list[dict[str, Any]]:
        out = []
        for p in self.preview:
            item: dict[str, Any] = {"line": p["line"]}
            if self.tok is not None:
                item["text"] = render(self.tok.tokenizer, p["messages"])
            else:
                item["messages"] = p["messages"]
            out.append(item)
        return out

    def finish(self, *, parse: dict[str, Any], split: dict[str, Any]) -> dict[str, Any]:
        exact = self._exact()
        near = self._near()
        leakage = self._leakage()
        tokens = self._tokens()
        level, warnings = size_assessment(self.n["train"])
        warnings = list(warnings)
        if parse.get("invalid"):
            warnings.append({"code": "invalid_rows_skipped", "message":
                             f"{parse['invalid']} invalid rows were skipped (on_invalid=skip)"})
        if exact["rows"]:
            warnings.append({"code": "exact_duplicates", "message":
                             f"{exact['rows']} rows are exact duplicates of another row"})
        if near.get("rows"):
            warnings.append({"code": "near_duplicates", "message":
                             f"{near['rows']} rows are near duplicates (Jaccard >= {self.threshold})"})
        if leakage["exact"]["rows"] or leakage["near"]["rows"]:
            warnings.append({"code": "train_eval_leakage", "message":
                             f"{leakage['exact']['rows']} eval rows also in train exactly, "
                             f"{leakage['near']['rows']} nearly: the eval score will be optimistic"})
        if self.short_total:
            warnings.append({"code": "short_outputs", "message":
                             f"{self.short_total} answers are shorter than {self.short_chars} characters"})
        if self.bad_json_total:
            warnings.append({"code": "invalid_json_outputs", "message":
                             f"{self.bad_json_total} answers look like JSON but do not parse"})
        if tokens and tokens["truncated"]["rows"]:
            warnings.append({"code": "truncated_rows", "message":
                             f"{tokens['truncated']['rows']} rows are longer than "
                             f"max_seq_length={self.max_seq_length} tokens and would be truncated"})
        if split.get("eval", 0) == 0:
            warnings.append({"code": "no_eval_split", "message":
                             "no held-out eval rows: the gateway cannot compare base and tuned"})
        elif split.get("eval", 0) < 100:
            warnings.append({"code": "small_eval_split", "message":
                             f"eval split has {split['eval']} rows; the article advises 100-200"})
        return {
            "object": "dataset.report",
            "counts": {**parse, "train": self.n["train"], "eval": self.n["eval"]},
            "size": {"level": level, "train": self.n["train"],
                     "advice": "under 200 rarely meaningful; 1000+ safer; 500-5000 high-quality is the target"},
            "duplicates": {"exact": exact, "near": near},
            "outputs": {"empty": parse.get("empty_outputs", 0),
                        "very_short": {"rows": self.short_total, "min_chars": self.short_chars,
                                       "lines": self.short},
                        "json": self.json_outputs,
                        "json_like_invalid": {"rows": self.bad_json_total, "lines": self.bad_json}},
            "tokens": tokens,
            "tokens_note": None if tokens else (self.tokenizer_note or "no tokenizer given: "
                                                "token statistics skipped"),
            "split": split,
            "leakage": leakage,
            "preview": self._preview(),
            "warnings": warnings,
        }


def render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The row exactly as training sees it (the tokenizer's chat template)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages)


def _pct(sorted_vals: list[int], p: float) -> int:
    idx = min(len(sorted_vals) - 1, max(0, math.ceil(p / 100 * len(sorted_vals)) - 1))
    return sorted_vals[idx]


def histogram(counts: list[int], max_seq_length: int, bins: int = 16) -> dict[str, Any]:
    """Equal-width bins from 0 to max(max_seq_length, longest row)."""
    top = max(max_seq_length, counts[-1] if counts else 1)
    width = max(1, math.ceil(top / bins))
    edges = [i * width for i in range(bins + 1)]
    hist = [0] * bins
    for c in counts:
        hist[min(bins - 1, c // width)] += 1
    return {"edges": edges, "counts": hist}


def text_summary(ds: dict[str, Any], report: dict[str, Any]) -> str:
    """The readable summary (``GET /v1/datasets/{id}/report?format=text``)."""
    c = report["counts"]
    lines = [f"Dataset {ds['id']} ({ds['name']}), format {ds.get('format')}",
             f"  lines {c.get('total_lines')}  valid {c.get('valid')}  invalid {c.get('invalid')}"
             f"  blank {c.get('blank_lines')}  train {c.get('train')}  eval {c.get('eval')}",
             f"  size: {report['size']['level']} ({report['size']['advice']})"]
    d = report["duplicates"]
    near = d["near"]
    lines.append(f"  duplicates: exact {d['exact']['rows']} rows"
                 + (f", near {near['rows']} rows (Jaccard >= {near['threshold']})"
                    if near.get("checked") else ", near: not checked"))
    o = report["outputs"]
    lines.append(f"  outputs: very short {o['very_short']['rows']}, valid JSON {o['json']}, "
                 f"JSON-like but invalid {o['json_like_invalid']['rows']}")
    t = report.get("tokens")
    if t:
        lines.append(f"  tokens ({t['tokenizer']}): min {t['min']} p50 {t['p50']} p95 {t['p95']} "
                     f"max {t['max']} mean {t['mean']}; truncated at {t['max_seq_length']}: "
                     f"{t['truncated']['rows']}")
        h = t["histogram"]
        peak = max(h["counts"]) or 1
        for i, n in enumerate(h["counts"]):
            if n:
                bar = "#" * max(1, round(30 * n / peak))
                lines.append(f"    {h['edges'][i]:>6}-{h['edges'][i + 1]:<6} {n:>7} {bar}")
    else:
        lines.append(f"  tokens: {report.get('tokens_note')}")
    lk = report["leakage"]
    lines.append(f"  leakage train/eval: exact {lk['exact']['rows']}, near {lk['near']['rows']}, "
                 f"same prompt {lk['same_prompt']['rows']}")
    s = report["split"]
    lines.append(f"  split: {s.get('method')} seed {s.get('seed')}: train {s.get('train')}, "
                 f"eval {s.get('eval')}")
    if report["warnings"]:
        lines.append("Warnings:")
        lines += [f"  - [{w['code']}] {w['message']}" for w in report["warnings"]]
    if report["preview"]:
        lines.append("Preview (as training sees it):")
        for p in report["preview"]:
            body = p.get("text") or json.dumps(p.get("messages"), ensure_ascii=False)
            lines.append(f"--- line {p['line']} ---")
            lines.append(body.rstrip())
    return "\n".join(lines) + "\n"

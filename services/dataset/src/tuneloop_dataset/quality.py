"""The quality report: duplicates, near duplicates, output checks, token lengths, leakage,
size warnings (the article's thresholds) and a chat-template preview.

:class:`ReportBuilder` is fed one row at a time (``add``), so it works on a stream; only
small per-row features (a digest, a MinHash, a token count) are kept.
"""

from __future__ import annotations

import json
import math
import statistics
from array import array
from dataclasses import dataclass
from typing import Any

import numpy as np

from .minhash import Signer, new_index
from .parsing import canonical, row_digest

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
        # compact per-row features (~25 bytes a row, + 4*num_perm for near-dup signatures)
        self.lines = array("q")
        self.is_eval = bytearray()
        self.digests = array("Q")  # 64-bit prefix of the row digest
        self.prompts = array("Q")  # same, of the prompt (every message but the answer)
        self.signer = Signer(num_perm)
        self.sig_buf = bytearray()
        self.token_counts = array("l")
        self.n = {"train": 0, "eval": 0}
        self.short: list[int] = []
        self.short_total = 0
        self.bad_json: list[int] = []
        self.bad_json_total = 0
        self.json_outputs = 0
        self.truncated: list[int] = []
        self.truncated_total = 0
        self._pending: list[tuple[int, list[dict[str, str]]]] = []
        self.preview: list[dict[str, Any]] = []

    # -- feeding -----------------------------------------------------------------------
    def add(self, line: int, messages: list[dict[str, str]], split: str) -> None:
        self.n[split] += 1
        self.lines.append(line)
        self.is_eval.append(split == "eval")
        self.digests.append(_u64(row_digest(canonical(messages))))
        self.prompts.append(_u64(row_digest(canonical(messages[:-1]))))
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
            self.sig_buf += self.signer.signature(messages).tobytes()
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
    def _groups(self) -> list[np.ndarray]:
        """Row indices of each group of identical rows (groups of 2+, by first line)."""
        d = np.frombuffer(self.digests, dtype=np.uint64)
        if len(d) < 2:
            return []
        order = np.argsort(d, kind="stable")
        sd = d[order]
        starts = np.flatnonzero(np.r_[True, sd[1:] != sd[:-1]])
        ends = np.r_[starts[1:], len(sd)]
        return [order[a:b] for a, b in zip(starts, ends) if b - a > 1]

    def _exact(self, groups: list[np.ndarray]) -> dict[str, Any]:
        lines = np.frombuffer(self.lines, dtype=np.int64)
        examples = sorted(sorted(int(x) for x in lines[g]) for g in groups)
        return {"rows": int(sum(len(g) - 1 for g in groups)), "groups": len(groups),
                "examples": examples[:_LIST_CAP]}

    def _sig(self, i: int) -> np.ndarray:
        return np.frombuffer(self.sig_buf, dtype=np.uint32, count=self.num_perm,
                             offset=i * self.num_perm * 4)

    def _near(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Near duplicates within the data, and eval rows near a train row (one LSH index)."""
        if not self.near_enabled:
            note = {"checked": False, "rows": 0, "examples": [],
                    "note": f"skipped above {self.near_max_rows} rows"}
            return note, dict(note)
        lsh = new_index(self.threshold, self.num_perm)
        lean, jac, th = self.signer.lean, self.signer.jaccard, self.threshold
        pairs: list[list[int]] = []
        rows = 0
        for i in range(len(self.lines)):
            sig = self._sig(i)
            m = lean(sig)
            near = [self.lines[k] for k in lsh.query(m)
                    if self.digests[k] != self.digests[i] and jac(self._sig(k), sig) >= th]
            if near:
                rows += 1
                if len(pairs) < _LIST_CAP:
                    pairs.append([min(near), self.lines[i]])
            lsh.insert(i, m)
        leak_pairs: list[list[int]] = []
        for i in range(len(self.lines)):
            if not self.is_eval[i]:
                continue
            sig = self._sig(i)
            hits = [self.lines[k] for k in lsh.query(lean(sig))
                    if not self.is_eval[k] and self.digests[k] != self.digests[i]
                    and jac(self._sig(k), sig) >= th]
            if hits:
                leak_pairs.append([min(hits), self.lines[i]])
        near_out = {"checked": True, "threshold": th, "rows": rows, "examples": pairs}
        leak_out = {"checked": True, "threshold": th, "rows": len(leak_pairs),
                    "examples": leak_pairs[:_LIST_CAP]}
        return near_out, leak_out

    def _leakage(self, groups: list[np.ndarray]) -> dict[str, Any]:
        lines = np.frombuffer(self.lines, dtype=np.int64)
        is_eval = np.frombuffer(bytes(self.is_eval), dtype=np.uint8).astype(bool)
        exact_pairs: list[list[int]] = []
        exact = 0
        for g in groups:
            ev, tr = g[is_eval[g]], g[~is_eval[g]]
            if len(ev) and len(tr):
                exact += len(ev)
                exact_pairs.append([int(lines[tr].min()), int(lines[ev].min())])
        prompts = np.frombuffer(self.prompts, dtype=np.uint64)
        train_p = prompts[~is_eval]
        flagged = np.flatnonzero(is_eval & np.isin(prompts, train_p))
        prompt_pairs = []
        for i in flagged[:_LIST_CAP]:
            j = np.flatnonzero((~is_eval) & (prompts == prompts[i]))[0]
            prompt_pairs.append([int(lines[j]), int(lines[i])])
        return {"exact": {"rows": exact, "examples": sorted(exact_pairs)[:_LIST_CAP]},
                "same_prompt": {"rows": int(len(flagged)), "examples": prompt_pairs}}

    def _tokens(self) -> dict[str, Any] | None:
        if self.tok is None:
            return None
        self._flush_tokens()
        counts = sorted(self.token_counts)  # a list of ints, only with a tokenizer
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

    def token_section(self) -> tuple[dict[str, Any] | None, str | None, list[dict[str, Any]]]:
        """(tokens, tokens_note, preview): the tokenizer-dependent part of the report."""
        tokens = self._tokens()
        note = None if tokens else (self.tokenizer_note or "no tokenizer given: token statistics skipped")
        return tokens, note, self._preview()

    def finish(self, *, parse: dict[str, Any], split: dict[str, Any]) -> dict[str, Any]:
        groups = self._groups()
        exact = self._exact(groups)
        near, near_leak = self._near()
        leakage = self._leakage(groups)
        leakage["near"] = near_leak
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


def _u64(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "little")


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

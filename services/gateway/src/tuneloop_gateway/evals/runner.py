"""Generation: run every target concurrently, each with bounded parallelism.

A target is any OpenAI-compatible endpoint (``base_url`` ending in ``/v1``) + model name.
Greedy decoding (temperature 0) so reruns compare like with like. One failed generation is
recorded on its example (and scores 0), never aborts the run; a target whose every
generation fails is reported as failed.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from .scoring import tokens


@dataclass
class Target:
    name: str
    base_url: str
    model: str
    api_key: str | None = None
    role: str | None = None

    def public(self) -> dict[str, Any]:
        """What a report shows (never the key)."""
        return {"name": self.name, "base_url": self.base_url, "model": self.model,
                "role": self.role, "authenticated": bool(self.api_key)}


@dataclass
class Example:
    index: int
    messages: list[dict[str, str]]
    reference: str
    line: int | None = None


@dataclass
class Generation:
    output: str = ""
    latency_s: float = 0.0
    completion_tokens: int = 0
    tokens_estimated: bool = False
    error: str | None = None


@dataclass
class TargetRun:
    target: Target
    task: list[Generation] = field(default_factory=list)
    general: list[Generation] = field(default_factory=list)
    wall_s: float = 0.0


class TargetClient:
    """One HTTP client per target for the duration of a run."""

    def __init__(self, target: Target, timeout: float) -> None:
        headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
        self.target = target
        self.http = httpx.AsyncClient(base_url=target.base_url.rstrip("/"), headers=headers,
                                      timeout=httpx.Timeout(timeout, connect=5.0))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def chat(self, messages: list[dict[str, str]], max_tokens: int) -> Generation:
        body = {"model": self.target.model, "messages": messages, "max_tokens": max_tokens,
                "temperature": 0.0, "stream": False}
        start = time.perf_counter()
        try:
            resp = await self.http.post("/chat/completions", json=body)
        except httpx.TimeoutException:
            return Generation(latency_s=time.perf_counter() - start, error="timeout")
        except httpx.HTTPError as exc:
            return Generation(latency_s=time.perf_counter() - start,
                              error=f"unreachable: {exc.__class__.__name__}")
        latency = time.perf_counter() - start
        if resp.status_code >= 400:
            return Generation(latency_s=latency, error=f"HTTP {resp.status_code}: {resp.text[:200]}")
        try:
            data = resp.json()
            text = data["choices"][0]["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError):
            return Generation(latency_s=latency, error=f"malformed answer: {resp.text[:200]}")
        usage = data.get("usage") or {}
        n = usage.get("completion_tokens")
        return Generation(output=text, latency_s=latency,
                          completion_tokens=int(n) if n is not None else len(tokens(text)),
                          tokens_estimated=n is None)


async def _bounded(sem: asyncio.Semaphore, coro):
    async with sem:
        return await coro


async def run_target(target: Target, examples: list[Example], general: list[list[dict]],
                     *, max_tokens: int, concurrency: int, timeout: float,
                     general_max_tokens: int = 32) -> TargetRun:
    """Generate for every task example and general-suite prompt, ``concurrency`` at a time."""
    client = TargetClient(target, timeout)
    sem = asyncio.Semaphore(concurrency)
    start = time.perf_counter()
    try:
        task = [_bounded(sem, client.chat(ex.messages, max_tokens)) for ex in examples]
        gen = [_bounded(sem, client.chat(msgs, general_max_tokens)) for msgs in general]
        results = await asyncio.gather(*task, *gen)
    finally:
        await client.aclose()
    return TargetRun(target, list(results[:len(examples)]), list(results[len(examples):]),
                     time.perf_counter() - start)


async def run_all(targets: list[Target], examples: list[Example], general: list[list[dict]],
                  **kw: Any) -> list[TargetRun]:
    """All targets at once (each bounded by its own ``concurrency``)."""
    return list(await asyncio.gather(*(run_target(t, examples, general, **kw) for t in targets)))


# -- LLM-as-judge, pairwise, both orders ----------------------------------------------------
JUDGE_PROMPT = (
    "You compare two answers to the same request. Reply with exactly one letter: A if answer A "
    "is better, B if answer B is better, or T if they are equally good.\n\n"
    "Request:\n{prompt}\n\nReference answer (for guidance):\n{reference}\n\n"
    "Answer A:\n{a}\n\nAnswer B:\n{b}\n\nBetter answer (A, B or T):"
)
_VERDICT = re.compile(r"\b(A|B|T|TIE)\b")


def parse_verdict(text: str) -> str | None:
    m = _VERDICT.search(text.strip().upper())
    if not m:
        return None
    return "T" if m.group(1) in ("T", "TIE") else m.group(1)


async def judge_pairs(judge: Target, examples: list[Example], first: list[Generation],
                      second: list[Generation], *, concurrency: int, timeout: float,
                      limit: int = 50) -> list[dict[str, Any]]:
    """Ask ``judge`` to prefer ``first`` (candidate) or ``second`` (base) in both orders.

    Each example scores 1 (candidate preferred in both orders), 0 (base in both), 0.5
    otherwise (tie or position-dependent verdicts, which cancel out the position bias).
    """
    client = TargetClient(judge, timeout)
    sem = asyncio.Semaphore(concurrency)

    def prompt(ex: Example, a: str, b: str) -> list[dict[str, str]]:
        request = "\n".join(m["content"] for m in ex.messages if m["role"] != "assistant")
        return [{"role": "user", "content": JUDGE_PROMPT.format(
            prompt=request, reference=ex.reference, a=a, b=b)}]

    async def one(ex: Example, cand: Generation, base: Generation) -> dict[str, Any]:
        ab, ba = await asyncio.gather(
            _bounded(sem, client.chat(prompt(ex, cand.output, base.output), 4)),
            _bounded(sem, client.chat(prompt(ex, base.output, cand.output), 4)))
        v1, v2 = parse_verdict(ab.output), parse_verdict(ba.output)
        wins = (v1 == "A") + (v2 == "B")
        losses = (v1 == "B") + (v2 == "A")
        score = 1.0 if wins == 2 else 0.0 if losses == 2 else 0.5
        return {"index": ex.index, "candidate_first": v1, "base_first": v2, "score": score,
                "consistent": (v1, v2) in {("A", "B"), ("B", "A"), ("T", "T")},
                "error": ab.error or ba.error}

    try:
        n = min(limit, len(examples))
        return list(await asyncio.gather(*(one(examples[i], first[i], second[i])
                                           for i in range(n))))
    finally:
        await client.aclose()


def rows_to_examples(rows: list[dict[str, Any]]) -> list[Example]:
    """Dataset rows (contract: ``messages`` with the answer last, or instruction/input/output)
    to eval examples. Raises ValueError naming the first bad row."""
    out: list[Example] = []
    for i, row in enumerate(rows):
        line = row.get("line") if isinstance(row, dict) else None
        where = f"row {line or i + 1}"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: not a JSON object")
        msgs = row.get("messages")
        if isinstance(msgs, str):
            try:
                msgs = json.loads(msgs)
            except ValueError as exc:
                raise ValueError(f"{where}: messages is not valid JSON") from exc
        if msgs is not None:
            ok = isinstance(msgs, (list, tuple)) and all(isinstance(m, dict) for m in msgs)
            msgs = [dict(m) for m in msgs] if ok else None
            if (not msgs or msgs[-1].get("role") != "assistant"
                    or any(not isinstance(m.get("content"), str) for m in msgs) or len(msgs) < 2):
                raise ValueError(f"{where}: messages must end with an assistant answer")
            prompt = [{"role": m["role"], "content": m["content"]} for m in msgs[:-1]]
            out.append(Example(i, prompt, msgs[-1]["content"], line))
            continue
        instr, output = row.get("instruction"), row.get("output")
        if not isinstance(instr, str) or not isinstance(output, str):
            raise ValueError(f"{where}: needs 'messages' or 'instruction' and 'output'")
        extra = row.get("input") or ""
        content = instr + ("\n\n" + extra if extra else "")
        out.append(Example(i, [{"role": "user", "content": content}], output, line))
    return out

"""Generation: run every target concurrently, each paced by what its engine shows it can do.

A target is any OpenAI-compatible endpoint (``base_url`` ending in ``/v1``) + model name.
Greedy decoding (temperature 0) so reruns compare like with like.

Infrastructure errors are not answers. A timeout, a connection error, a 429 or a 5xx is retried
with exponential backoff and full jitter (``Retry-After`` honoured); what still fails after the
retries stays an *error* on its generation, which the report leaves out of scoring and the gate
turns into ``inconclusive``. A 4xx other than 408/429 is not retried (it will not change).

Per-request timeouts and per-target concurrency come from the engine's measured speed
(:class:`Pace`): the first request goes alone with the longest timeout; from then on the timeout
is ``safety x max_tokens x seconds-per-token`` (measured, an EWMA over successful answers,
clamped to ``[timeout_min_s, timeout_max_s]``, doubled on each retry of a request) and the
concurrency opens up to the configured cap, halving whenever the engine times out or says it
is overloaded. A target is treated as down when its last ``give_up_after`` attempts all failed
and nothing answered for ``give_up_after_s`` seconds: its remaining requests then fail at once
(``target down``) instead of each waiting out its retries — a hung engine costs minutes, not
hours, and a short outage (a restart) is ridden out by the retries.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from .scoring import tokens

T = TypeVar("T")

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass
class Target:
    name: str
    base_url: str
    model: str
    api_key: str | None = None
    role: str | None = None
    # few-shot turns put before every task prompt (the prompted baseline); None: zero-shot
    shots: list[dict[str, str]] | None = None
    general: bool = True  # also answers the general-capability suite
    n_shots: int = 0

    def public(self) -> dict[str, Any]:
        """What a report shows (never the key)."""
        out: dict[str, Any] = {"name": self.name, "base_url": self.base_url, "model": self.model,
               "role": self.role, "authenticated": bool(self.api_key)}
        if self.shots is not None:
            out["shots"] = self.n_shots
            out["shots_fingerprint"] = shots_fingerprint(self.shots)
        return out

    def prompt(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """The messages sent for one task example (few-shot turns after any system message)."""
        if not self.shots:
            return messages
        system = [m for m in messages[:1] if m["role"] == "system"]
        return system + self.shots + messages[len(system):]


def shots_fingerprint(shots: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(shots, sort_keys=True).encode()).hexdigest()[:16]


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
    attempts: int = 1


@dataclass
class TargetRun:
    target: Target
    task: list[Generation] = field(default_factory=list)
    general: list[Generation] = field(default_factory=list)
    wall_s: float = 0.0
    reused: int = 0  # generations taken from an earlier run
    pace: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard a generation is tried before it is recorded as failed (GATEWAY_EVAL_*)."""

    retries: int = 4
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    timeout_min_s: float = 30.0
    timeout_max_s: float = 600.0
    timeout_safety: float = 4.0
    give_up_after: int = 8
    give_up_after_s: float = 120.0


class Pace:
    """Per-target concurrency and timeout, sized from the engine's measured speed."""

    def __init__(self, max_concurrency: int, policy: RetryPolicy) -> None:
        self.max = max(1, max_concurrency)
        self.limit = 1  # the first request goes alone: it measures the engine
        self.active = 0
        self.policy = policy
        self.s_per_token: float | None = None
        self.failed_in_a_row = 0  # failed attempts since the last answer
        self.last_ok = time.monotonic()
        self.backoffs = 0
        self._cond = asyncio.Condition()

    async def __aenter__(self) -> "Pace":
        async with self._cond:
            await self._cond.wait_for(lambda: self.active < self.limit)
            self.active += 1
        return self

    async def __aexit__(self, *exc: Any) -> None:
        async with self._cond:
            self.active -= 1
            self._cond.notify_all()

    def timeout(self, max_tokens: int, attempt: int) -> float:
        p = self.policy
        if self.s_per_token is None:
            return p.timeout_max_s
        t = max(p.timeout_min_s, p.timeout_safety * max_tokens * self.s_per_token)
        return min(p.timeout_max_s, t * (2 ** attempt))

    async def succeeded(self, gen: Generation) -> None:
        per_token = gen.latency_s / max(1, gen.completion_tokens)
        self.s_per_token = per_token if self.s_per_token is None else (
            0.8 * self.s_per_token + 0.2 * per_token)
        self.failed_in_a_row = 0
        self.last_ok = time.monotonic()
        async with self._cond:
            self.limit = min(self.max, self.limit * 2)
            self._cond.notify_all()

    def overloaded(self) -> None:
        """A timeout, connection error, 429 or 5xx: fewer requests in flight from now on."""
        self.limit = max(1, self.limit // 2)
        self.backoffs += 1
        self.failed_in_a_row += 1

    @property
    def down(self) -> bool:
        return (self.failed_in_a_row >= self.policy.give_up_after
                and time.monotonic() - self.last_ok >= self.policy.give_up_after_s)

    def summary(self) -> dict[str, Any]:
        return {"concurrency": self.limit, "max_concurrency": self.max,
                "s_per_token": round(self.s_per_token, 4) if self.s_per_token else None,
                "backoffs": self.backoffs}


def retry_after(resp: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), else None."""
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when else None


def backoff_delay(attempt: int, policy: RetryPolicy, hint: float | None = None,
                  rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter; a server's ``Retry-After`` is a floor."""
    cap = min(policy.backoff_max_s, policy.backoff_s * (2 ** attempt))
    delay = (rng or random).uniform(0, cap)
    if hint is not None:
        delay = max(delay, min(hint, max(policy.backoff_max_s, 60.0)))
    return delay


class TargetClient:
    """One HTTP client per target for the duration of a run."""

    def __init__(self, target: Target, timeout: float, *, policy: RetryPolicy | None = None,
                 concurrency: int = 4) -> None:
        headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
        self.target = target
        self.policy = policy or RetryPolicy(timeout_min_s=timeout, timeout_max_s=timeout)
        self.pace = Pace(concurrency, self.policy)
        self.http = httpx.AsyncClient(base_url=target.base_url.rstrip("/"), headers=headers,
                                      timeout=httpx.Timeout(timeout, connect=5.0))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def chat(self, messages: list[dict[str, str]], max_tokens: int) -> Generation:
        """One generation, retried on infrastructure errors; paced by :class:`Pace`."""
        attempt, total_start = 0, time.perf_counter()
        while True:
            async with self.pace:
                if self.pace.down:  # checked once a slot is free: the wait may have been long
                    return Generation(latency_s=time.perf_counter() - total_start, attempts=attempt,
                                      error=f"target down: its last {self.pace.failed_in_a_row} "
                                      "attempts failed and nothing answered for "
                                      f"{time.monotonic() - self.pace.last_ok:.0f}s")
                gen, retry, hint = await self._once(messages, max_tokens, attempt)
            gen.attempts = attempt + 1
            if gen.error is None:
                await self.pace.succeeded(gen)
                return gen
            if retry:
                self.pace.overloaded()
            if not retry or attempt >= self.policy.retries:
                gen.latency_s = time.perf_counter() - total_start
                return gen
            await asyncio.sleep(backoff_delay(attempt, self.policy, hint))
            attempt += 1

    async def _once(self, messages: list[dict[str, str]], max_tokens: int,
                    attempt: int) -> tuple[Generation, bool, float | None]:
        """One HTTP attempt: ``(generation, retryable, retry-after seconds)``."""
        body = {"model": self.target.model, "messages": messages, "max_tokens": max_tokens,
                "temperature": 0.0, "stream": False}
        timeout = self.pace.timeout(max_tokens, attempt)
        start = time.perf_counter()
        try:
            resp = await self.http.post("/chat/completions", json=body,
                                        timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)))
        except httpx.TimeoutException:
            return Generation(latency_s=time.perf_counter() - start,
                              error=f"timeout after {timeout:.0f}s"), True, None
        except httpx.HTTPError as exc:
            return Generation(latency_s=time.perf_counter() - start,
                              error=f"unreachable: {exc.__class__.__name__}"), True, None
        latency = time.perf_counter() - start
        if resp.status_code >= 400:
            err = Generation(latency_s=latency, error=f"HTTP {resp.status_code}: {resp.text[:200]}")
            return err, resp.status_code in RETRY_STATUS, retry_after(resp)
        try:
            data = resp.json()
            text = data["choices"][0]["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError):
            return Generation(latency_s=latency, error=f"malformed answer: {resp.text[:200]}"), True, None
        usage = data.get("usage") or {}
        n = usage.get("completion_tokens")
        return Generation(output=text, latency_s=latency,
                          completion_tokens=int(n) if n is not None else len(tokens(text)),
                          tokens_estimated=n is None), False, None


Progress = Callable[[str, bool], None]


async def _bounded(sem: asyncio.Semaphore, coro: Awaitable[T]) -> T:
    async with sem:
        return await coro


async def run_target(target: Target, examples: list[Example], general: list[list[dict]],
                     *, max_tokens: int, concurrency: int, timeout: float | None = None,
                     policy: RetryPolicy | None = None, general_max_tokens: int = 32,
                     prior: TargetRun | None = None, progress: Progress | None = None) -> TargetRun:
    """Generate every task example (with the target's few-shot turns) and, when the target
    takes it, every general-suite prompt. ``prior``: generations kept from an earlier run;
    only the ones missing or failed there are generated."""
    policy = policy or RetryPolicy(timeout_min_s=timeout or 120.0, timeout_max_s=timeout or 120.0)
    client = TargetClient(target, policy.timeout_max_s, policy=policy, concurrency=concurrency)
    general = general if target.general else []
    keep_task = prior.task if prior and len(prior.task) == len(examples) else [None] * len(examples)
    keep_gen = (prior.general if prior and len(prior.general) == len(general) else [None] * len(general))

    async def one(kept: Generation | None, msgs: list[dict], n: int) -> Generation:
        if kept is not None and kept.error is None:
            return kept
        g = await client.chat(msgs, n)
        if progress:
            progress(target.name, g.error is None)
        return g

    start = time.perf_counter()
    try:
        task = [one(k, target.prompt(ex.messages), max_tokens) for k, ex in zip(keep_task, examples)]
        gen = [one(k, msgs, general_max_tokens) for k, msgs in zip(keep_gen, general)]
        results = await asyncio.gather(*task, *gen)
    finally:
        await client.aclose()
    kept = sum(1 for k in [*keep_task, *keep_gen] if k is not None and k.error is None)
    return TargetRun(target, list(results[:len(examples)]), list(results[len(examples):]),
                     time.perf_counter() - start, reused=kept, pace=client.pace.summary())


async def run_all(targets: list[Target], examples: list[Example], general: list[list[dict]],
                  *, prior: dict[str, TargetRun] | None = None, **kw: Any) -> list[TargetRun]:
    """All targets at once (each paced on its own)."""
    prior = prior or {}
    return list(await asyncio.gather(*(run_target(t, examples, general, prior=prior.get(t.name), **kw)
                                       for t in targets)))


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

"""Replay rows against catastrophic forgetting: the base model's own answers to general prompts.

A narrow fine-tune (one JSON format, 128 rows, a high learning rate) teaches a small model to
answer *everything* in that format: the article's "catastrophic forgetting", which the
gateway's general-capability suite measures and its gate refuses. The standard remedy is
rehearsal: mix general rows into the training file. Where no general instruction data is at
hand (offline, as in the demo), the base model itself supplies it — ask it general questions
and train on its own greedy answers (self-distillation), so the adapter learns the task
without moving the model's behaviour elsewhere.

The prompts here are disjoint from the gateway's general suite (a test checks it): replaying
the suite's own questions would be training on the test set.

    rows = build_replay_rows(ask, replay_prompts(64, seed=42))
    # ask(prompt) -> (answer text, finish_reason) from the *base* model, greedy
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

# General prompts in several styles (short factual questions, word tasks, short explanations).
# Keep them short: each row costs training time on a CPU. None may appear in the gateway's
# general suite (tests/test_demo_replay.py checks question and answer overlap).
REPLAY_PROMPTS: tuple[str, ...] = (
    # geography
    "What is the capital of Spain? Answer in a few words.",
    "What is the capital of Egypt? Answer in a few words.",
    "What is the capital of Australia? Answer in a few words.",
    "What is the capital of Kenya? Answer in a few words.",
    "What is the capital of Portugal? Answer in a few words.",
    "What is the capital of Norway? Answer in a few words.",
    "What is the capital of Argentina? Answer in a few words.",
    "What is the capital of India? Answer in a few words.",
    "What is the capital of Mexico? Answer in a few words.",
    "What is the capital of Greece? Answer in a few words.",
    "Which country has the largest population? Answer in a few words.",
    "What is the tallest mountain in the world? Answer in a few words.",
    "What is the largest desert in the world? Answer in a few words.",
    "On which continent is Kenya? Answer in a few words.",
    "Which river flows through London? Answer in a few words.",
    "What is the smallest continent? Answer in a few words.",
    # numbers and arithmetic
    "What is 3 + 5? Answer in a few words.",
    "What is 9 times 6? Answer in a few words.",
    "What is 15 minus 8? Answer in a few words.",
    "What is 50 divided by 5? Answer in a few words.",
    "What is 12 plus 12? Answer in a few words.",
    "What is half of 30? Answer in a few words.",
    "How many days are in a leap year? Answer in a few words.",
    "How many seconds are in a minute? Answer in a few words.",
    "How many weeks are in a year? Answer in a few words.",
    "How many sides does a square have? Answer in a few words.",
    "How many legs does an insect have? Answer in a few words.",
    "How many continents are there? Answer in a few words.",
    "What is the next number after 99? Answer in a few words.",
    "Is 17 an odd or an even number? Answer in a few words.",
    # science
    "What gas do humans need to breathe? Answer in a few words.",
    "What is the chemical symbol for iron? Answer in a few words.",
    "What is the chemical symbol for sodium? Answer in a few words.",
    "Which planet is closest to the Sun? Answer in a few words.",
    "Which planet has the most famous rings? Answer in a few words.",
    "What is the natural satellite of the Earth called? Answer in a few words.",
    "What force pulls objects toward the Earth? Answer in a few words.",
    "What is frozen water called? Answer in a few words.",
    "Which organ do humans use to breathe? Answer in a few words.",
    "How many bones does an adult human have, roughly? Answer in a few words.",
    "What do bees make? Answer in a few words.",
    "What is the hardest natural substance? Answer in a few words.",
    # language and culture
    "What is the plural of child? Answer in a few words.",
    "What is the past tense of eat? Answer in a few words.",
    "What is the opposite of big? Answer in a few words.",
    "What is a synonym for happy? Answer in a few words.",
    "What is the last letter of the English alphabet? Answer in a few words.",
    "Who painted the Mona Lisa? Answer in a few words.",
    "Who wrote the Odyssey? Answer in a few words.",
    "What language is mainly spoken in Brazil? Answer in a few words.",
    "What color is the sky on a clear day? Answer in a few words.",
    "What color do you get by mixing red and white? Answer in a few words.",
    "Which animal is known for its long neck? Answer in a few words.",
    "What is a baby cat called? Answer in a few words.",
    "What do cows drink? Answer in a few words.",
    "Which season comes after winter? Answer in a few words.",
    # short instructions in other styles
    "Give one word that rhymes with cat.",
    "Name three primary colors.",
    "Write one short sentence about the ocean.",
    "Explain in one sentence what a computer is.",
    "Name a fruit that is yellow.",
    "Say hello in French.",
    "List two things you can find in a kitchen.",
    "Describe a dog in one sentence.",
    "Translate 'thank you' into Spanish.",
    "Name a musical instrument with strings.",
    "Give an example of a mammal that can fly.",
    "What should you do before crossing a street? Reply briefly.",
    "Suggest a name for a pet goldfish.",
    "Complete the sentence: The early bird catches the ...",
)

Ask = Callable[[str], tuple[str, str | None]]


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]+", "", text.lower()).strip()


def replay_prompts(n: int, seed: int = 42, exclude: Iterable[str] = ()) -> list[str]:
    """``n`` prompts from the bank (all of them, shuffled, when ``n`` >= the bank's size),
    leaving out any whose normalised text is in ``exclude`` (e.g. an eval suite's questions)."""
    skip = {_norm(q) for q in exclude}
    pool = [p for p in REPLAY_PROMPTS if _norm(p) not in skip
            and _norm(p.removesuffix(" Answer in a few words.")) not in skip]
    random.Random(seed).shuffle(pool)
    return pool[:max(0, n)]


def build_replay_rows(ask: Ask, prompts: list[str], *, concurrency: int = 8,
                      max_chars: int = 400) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Ask the base model each prompt; return (rows in the article's form, dropped).

    A reply that was cut off (``finish_reason == "length"``), empty, too long or whose request
    failed is dropped with its reason: training on a truncated answer would teach the model to
    stop mid-way, and one failed request should cost one row, not the whole set.
    """
    def safe_ask(prompt: str) -> tuple[str, str | None, str | None]:
        try:
            return (*ask(prompt), None)
        except Exception as exc:  # noqa: BLE001 - one failed request drops one row, not the set
            return "", None, f"request failed: {str(exc)[:200]}"

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        answers = list(pool.map(safe_ask, prompts))
    rows, dropped = [], []
    for prompt, (text, finish, error) in zip(prompts, answers, strict=True):
        text = (text or "").strip()
        reason = (error or ("cut off at max_tokens" if finish == "length" else "empty answer"
                            if not text else "answer too long" if len(text) > max_chars else None))
        if reason:
            dropped.append({"prompt": prompt, "reason": reason})
        else:
            rows.append({"instruction": prompt, "input": "", "output": text})
    return rows, dropped

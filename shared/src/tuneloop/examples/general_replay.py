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

# A GPU-sized task (1,200 tickets) needs a few hundred replay rows to keep the ~1:4 replay share
# that measured no forgetting on CPU (64 replay rows beside 128 tickets): 66 rows beside 1,200
# tickets let the general suite drop 0.395 -> 0.276 on the H200 (bench/results/demo_gpu.json).
# Open-ended templates fill the bank; their topics are everyday nouns that none of the suite's
# subjects (countries, elements, the word tasks' words) share (tests/test_demo_replay.py).
_TOPICS = (
    "the moon", "rain", "music", "friendship", "a library", "trains", "coffee", "winter",
    "a busy city", "school", "a bicycle", "cooking", "the beach", "snow", "a farm",
    "a birthday party", "a museum", "football", "clouds", "a market", "the wind", "a festival",
    "a train station", "bread", "a painting", "the night sky", "a storm", "a picnic", "tea",
    "a zoo", "sunrise", "a song", "a board game", "the sea", "a post office", "a bakery",
    "autumn leaves", "a playground", "a hot summer day", "a thunderstorm",
)
_THINGS = (
    "a calendar", "a thermometer", "a map", "a clock", "a vaccine", "an airport", "a battery",
    "a microscope", "a recipe", "a passport", "a dictionary", "a telescope", "a volcano",
    "a rainbow", "a compass", "a keyboard", "a bicycle bell", "a refrigerator", "a password",
    "a spreadsheet", "a newspaper", "a vitamin", "a satellite", "an orchestra", "a budget",
    "a lighthouse", "a glacier", "a hurricane", "a solar panel", "a web browser",
)
_ACTIVITIES = (
    "staying healthy", "learning a second language", "saving money", "sleeping well",
    "studying for an exam", "writing a clear email", "keeping a houseplant alive",
    "running a short meeting", "packing for a trip", "making friends at work", "staying focused",
    "drinking enough water", "keeping a desk tidy", "learning to cook", "starting to run",
    "reading more books", "speaking in public", "taking good photos", "remembering names",
    "cutting down on sugar", "planning a week", "keeping a journal", "learning to swim",
    "working from home", "caring for a puppy",
)
_PLACES = (
    "a classroom", "a hospital", "a supermarket", "a bathroom", "an office", "a park",
    "a car", "a bedroom", "a restaurant", "a gym", "a campsite", "a cinema", "a bus",
    "a toolbox", "a school bag", "a doctor's bag", "a first-aid kit", "a beach bag",
)
_WHYS = (
    "wear sunglasses", "drink water", "brush their teeth", "sleep at night", "read books",
    "plant trees", "wash their hands", "use umbrellas", "wear seat belts", "recycle paper",
    "keep pets", "learn history", "exercise", "save photos", "write shopping lists",
    "listen to music", "visit doctors", "take holidays", "cook at home", "lock their doors",
)
_TEMPLATES = (
    ("Write one short sentence about {}.", _TOPICS),
    ("Explain in one sentence what {} is.", _THINGS),
    ("Give one short tip for {}.", _ACTIVITIES),
    ("Name two things you might find in {}.", _PLACES),
    ("Why do people {}? Reply in one sentence.", _WHYS),
    ("Describe {} in one short sentence.", _TOPICS[:25]),
    ("Write a short question someone might ask about {}.", _TOPICS),
    ("Give three words that describe {}.", _TOPICS),
    ("What is {} used for? Reply in one sentence.", _THINGS),
    ("Suggest a title for a short story about {}.", _TOPICS),
    ("Give one reason people enjoy {}.", _TOPICS[:30]),
    # grown for 600 replay rows beside 1,200 tickets (the CPU demo's measured 1:2 share)
    ("Write a two-line poem about {}.", _TOPICS),
    ("Give one fun fact about {}.", _THINGS),
    ("What is one common mistake people make when {}?", _ACTIVITIES),
    ("Explain {} to a child in one sentence.", _THINGS),
    ("Name one thing people often bring to {}.", _PLACES),
    ("Write a one-sentence advertisement for {}.", _THINGS),
    ("What is a good first step for {}? Reply briefly.", _ACTIVITIES),
    ("Describe the sound of {} in a few words.", _TOPICS),
    ("Write a short thank-you note to a friend who helped with {}.", _ACTIVITIES),
    ("Give a one-sentence summary of why {} matters.", _THINGS),
    ("What colour do you picture when you think of {}? Reply in one sentence.", _TOPICS),
)
_HANDWRITTEN = REPLAY_PROMPTS
_GENERATED = tuple(t.format(x) for t, xs in _TEMPLATES for x in xs if t.format(x) not in _HANDWRITTEN)
REPLAY_PROMPTS = _HANDWRITTEN + _GENERATED

Ask = Callable[[str], tuple[str, str | None]]


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]+", "", text.lower()).strip()


def replay_prompts(n: int, seed: int = 42, exclude: Iterable[str] = ()) -> list[str]:
    """``n`` prompts from the bank (all of them, shuffled, when ``n`` >= the bank's size),
    leaving out any whose normalised text is in ``exclude`` (e.g. an eval suite's questions).
    The hand-written prompts come first (short factual answers, cheap on a CPU), the templated
    ones only when ``n`` asks for more."""
    skip = {_norm(q) for q in exclude}
    rng = random.Random(seed)
    out: list[str] = []
    for bank in (_HANDWRITTEN, _GENERATED):
        pool = [p for p in bank if _norm(p) not in skip
                and _norm(p.removesuffix(" Answer in a few words.")) not in skip]
        rng.shuffle(pool)
        out += pool
    return out[:max(0, n)]


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

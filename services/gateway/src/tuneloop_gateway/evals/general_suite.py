"""The general-capability suite: 400+ verifiable items, generated deterministically in code.

Kinds: ``knowledge`` (short facts), ``arithmetic``, ``instruction`` (instructions with a
checkable constraint), ``format`` (JSON, lists, brackets) and ``reasoning`` (short comparisons,
parity, orderings). Every item says how it is checked (``check``), so no judge model is needed
and the score of an answer never depends on anything but its text.

``data/general_suite.jsonl`` is this generator's output, shipped so the items can be read and
diffed (``python -m tuneloop_gateway.evals.general_suite > .../data/general_suite.jsonl``; a
test checks the file is current). It is ours (written for this project, no third-party data).

The catastrophic-forgetting check compares base and candidate on the same items (a paired
interval), so its width depends on how many items the two answer differently, and at 400+ items
it is about +-0.05 or narrower. On a slow CPU a stated subset can be used
(``GATEWAY_GENERAL_SUITE_SIZE``): :func:`load_suite` takes the items round-robin across kinds,
so any subset keeps the mix.

None of the items may be near the demo's replay prompts (``tuneloop.examples.general_replay``):
a test checks question overlap and subjects.
"""

from __future__ import annotations

import json
import random
import re
from functools import lru_cache
from importlib import resources
from typing import Any

from .scoring import answer_match, normalize, parse_json, tokens

SUFFIX = " Answer in a few words."
KINDS = ("knowledge", "arithmetic", "instruction", "format", "reasoning")

# The first 40 items (kept from the original suite, ids gen-001..gen-040).
CLASSIC: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What is the capital of France?", ("Paris",)),
    ("What is the capital of Japan?", ("Tokyo",)),
    ("What is the capital of Italy?", ("Rome",)),
    ("What is the capital of Canada?", ("Ottawa",)),
    ("What is the capital of Germany?", ("Berlin",)),
    ("How many days are in a week?", ("7", "seven")),
    ("How many months are in a year?", ("12", "twelve")),
    ("How many hours are in a day?", ("24", "twenty-four", "twenty four")),
    ("What is 2 + 2?", ("4", "four")),
    ("What is 7 times 8?", ("56", "fifty-six", "fifty six")),
    ("What is 10 minus 3?", ("7", "seven")),
    ("What is 100 divided by 4?", ("25", "twenty-five", "twenty five")),
    ("What is the square root of 81?", ("9", "nine")),
    ("Which planet is the largest in our solar system?", ("Jupiter",)),
    ("Which planet is known as the Red Planet?", ("Mars",)),
    ("What star is at the center of our solar system?", ("Sun", "the Sun")),
    ("At what temperature in degrees Celsius does water boil at sea level?", ("100",)),
    ("At what temperature in degrees Celsius does water freeze?", ("0", "zero")),
    ("What is the chemical symbol for water?", ("H2O",)),
    ("What is the chemical symbol for gold?", ("Au",)),
    ("What gas do plants absorb from the air for photosynthesis?", ("carbon dioxide", "CO2")),
    ("What is the largest ocean on Earth?", ("Pacific",)),
    ("What is the longest river in Africa?", ("Nile",)),
    ("On which continent is Brazil?", ("South America",)),
    ("In which direction does the sun rise?", ("east",)),
    ("What color do you get by mixing blue and yellow?", ("green",)),
    ("What is the opposite of hot?", ("cold",)),
    ("What is the plural of mouse?", ("mice",)),
    ("What is the past tense of go?", ("went",)),
    ("Which animal is known as the king of the jungle?", ("lion",)),
    ("How many legs does a spider have?", ("8", "eight")),
    ("How many sides does a triangle have?", ("3", "three")),
    ("What is the freezing point of water in Fahrenheit?", ("32",)),
    ("Who wrote Romeo and Juliet?", ("Shakespeare", "William Shakespeare")),
    ("What language is mainly spoken in Spain?", ("Spanish",)),
    ("What is the main programming language of this sentence: print('hello') in Python?", ("Python",)),
    ("What is the first letter of the English alphabet?", ("A",)),
    ("How many minutes are in an hour?", ("60", "sixty")),
    ("What is the boiling point of water in Fahrenheit?", ("212",)),
    ("Which organ pumps blood through the human body?", ("heart",)),
)

CAPITALS = (
    ("Russia", "Moscow"), ("China", "Beijing"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"), ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Hungary", "Budapest"),
    ("Ireland", "Dublin"), ("the Netherlands", "Amsterdam"), ("Belgium", "Brussels"),
    ("Switzerland", "Bern"), ("the Czech Republic", "Prague"), ("Turkey", "Ankara"),
    ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"),
    ("Indonesia", "Jakarta"), ("the Philippines", "Manila"), ("South Korea", "Seoul"),
    ("Peru", "Lima"), ("Chile", "Santiago"), ("Colombia", "Bogota"), ("Venezuela", "Caracas"),
    ("Cuba", "Havana"), ("Nigeria", "Abuja"), ("Ghana", "Accra"), ("Ethiopia", "Addis Ababa"),
    ("Morocco", "Rabat"), ("Saudi Arabia", "Riyadh"), ("Pakistan", "Islamabad"),
    ("Bangladesh", "Dhaka"), ("Ukraine", "Kyiv|Kiev"), ("Romania", "Bucharest"),
    ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"), ("Croatia", "Zagreb"), ("Iceland", "Reykjavik"),
    ("New Zealand", "Wellington"), ("Malaysia", "Kuala Lumpur"), ("Afghanistan", "Kabul"),
    ("Lebanon", "Beirut"), ("Syria", "Damascus"), ("Jordan", "Amman"), ("Qatar", "Doha"),
    ("Nepal", "Kathmandu"), ("Uruguay", "Montevideo"), ("Ecuador", "Quito"), ("Cyprus", "Nicosia"),
)

ELEMENTS = (
    ("oxygen", "O"), ("hydrogen", "H"), ("carbon", "C"), ("nitrogen", "N"), ("helium", "He"),
    ("silver", "Ag"), ("copper", "Cu"), ("lead", "Pb"), ("potassium", "K"), ("calcium", "Ca"),
    ("zinc", "Zn"), ("tin", "Sn"), ("mercury", "Hg"), ("neon", "Ne"), ("chlorine", "Cl"),
    ("sulfur", "S"), ("magnesium", "Mg"), ("aluminium", "Al"), ("platinum", "Pt"),
    ("nickel", "Ni"), ("fluorine", "F"), ("phosphorus", "P"), ("lithium", "Li"),
)

OPPOSITES = (
    ("up", "down"), ("fast", "slow"), ("open", "closed|shut"), ("deep", "shallow"), ("wet", "dry"),
    ("empty", "full"), ("thick", "thin"), ("loud", "quiet|soft"), ("heavy", "light"),
    ("cheap", "expensive|costly"), ("left", "right"), ("win", "lose"), ("north", "south"),
    ("inside", "outside"), ("buy", "sell"),
)

# Words for instruction/format items (none appears in a replay prompt; a test checks it).
WORDS = (
    "garden", "window", "pencil", "bridge", "candle", "rocket", "ladder", "basket", "marble",
    "castle", "forest", "island", "mirror", "pillow", "blanket", "carpet", "anchor", "button",
    "feather", "helmet", "jacket", "kettle", "lantern", "magnet", "needle", "paddle", "pepper",
    "puzzle", "ribbon", "shovel", "tunnel", "valley", "wallet", "zipper", "bucket", "cactus",
    "dragon", "engine", "falcon", "glove", "hammer", "igloo", "jungle", "kayak", "lemon",
    "meadow", "nickel", "oyster", "parrot", "quilt", "rabbit", "saddle", "tiger", "umbrella",
    "velvet", "walnut", "yogurt", "zebra", "bottle", "canyon", "pebble", "ember", "fossil",
    "ginger", "harbor", "iceberg", "jigsaw", "koala", "lizard", "mango", "napkin", "olive",
    "pirate", "quartz", "radish", "salmon", "teapot", "violet", "waffle", "yacht",
)
NAMES = ("Alice", "Omar", "Lena", "Ravi", "Mia", "Tomas", "Keiko", "Pablo", "Sara", "Yusuf",
         "Nina", "Igor", "Chloe", "Dev", "Ines")
JSON_KEYS = ("color", "city", "animal", "fruit", "status", "size", "shape", "tool", "metal", "sport")
JSON_VALUES = ("blue", "Oslo", "otter", "plum", "active", "large", "circle", "saw", "copper", "tennis")

# Arithmetic pairs the replay prompts use (never asked again here).
_REPLAY_ARITH = {("+", 3, 5), ("*", 9, 6), ("-", 15, 8), ("/", 50, 5), ("+", 12, 12)}


def _alts(answer: str) -> list[str]:
    return answer.split("|")


def _item(kind: str, question: str, check: dict[str, Any], *, subject: str | None = None,
          suffix: bool = False) -> dict[str, Any]:
    out = {"kind": kind, "question": question, "prompt": question + (SUFFIX if suffix else ""),
           "check": check}
    if subject:
        out["subject"] = subject
    if check.get("type") == "contains":
        out["answers"] = check["answers"]
    return out


def generate() -> list[dict[str, Any]]:
    """All items, in a fixed order, with stable ids ``gen-001``..."""
    rng = random.Random(20261202)
    items: list[dict[str, Any]] = []
    # knowledge
    for q, ans in CLASSIC:
        kind = "arithmetic" if re.search(r"\d+ ?(\+|times|minus|divided)|square root", q) else "knowledge"
        items.append(_item(kind, q, {"type": "contains", "answers": list(ans)}, suffix=True))
    for country, city in CAPITALS:
        items.append(_item("knowledge", f"What is the capital city of {country}?",
                           {"type": "contains", "answers": _alts(city)},
                           subject=country.removeprefix("the "), suffix=True))
    for name, sym in ELEMENTS:
        items.append(_item("knowledge", f"Which chemical element has the symbol {sym}? Name it.",
                           {"type": "contains", "answers": [name] + (["aluminum"] if name == "aluminium" else [])},
                           subject=name, suffix=True))
    for word, opp in OPPOSITES:
        items.append(_item("knowledge", f"Give the antonym of the word '{word}'.",
                           {"type": "contains", "answers": _alts(opp)}, subject=word, suffix=True))
    # arithmetic
    ops = (("+", "plus", lambda a, b: a + b, (11, 99), (11, 99)),
           ("-", "minus", lambda a, b: a - b, (40, 99), (11, 39)),
           ("*", "multiplied by", lambda a, b: a * b, (3, 19), (3, 12)),
           ("/", "divided by", None, (2, 12), (3, 12)))
    for sym, word, fn, ra, rb in ops:
        seen: set[tuple[int, int]] = set()
        while len(seen) < 25:
            a, b = rng.randint(*ra), rng.randint(*rb)
            if sym == "/":
                a, b = a * b, b  # exact division
            if (a, b) in seen or (sym, a, b) in _REPLAY_ARITH:
                continue
            seen.add((a, b))
            value = a // b if sym == "/" or fn is None else fn(a, b)
            items.append(_item("arithmetic", f"Compute {a} {word} {b}.",
                               {"type": "contains", "answers": [str(value)]}, suffix=True))
    # instruction following (checkable constraints)
    words = list(WORDS)
    rng.shuffle(words)
    for w in words[:20]:
        items.append(_item("instruction", f"Write the word {w} in capital letters.",
                           {"type": "case_sensitive", "text": w.upper()}, subject=w))
    for w in words[20:40]:
        items.append(_item("instruction", f"Repeat the word {w} three times, separated by spaces.",
                           {"type": "repeat", "word": w, "times": 3}, subject=w))
    for w in words[40:60]:
        items.append(_item("instruction", f"Reply with only the word {w} and nothing else.",
                           {"type": "exact_word", "word": w}, subject=w))
    for w in words[60:80]:
        items.append(_item("instruction", f"Write a short sentence that begins with the word "
                           f"'{w.capitalize()}'.", {"type": "starts_with", "word": w}, subject=w))
    # format following
    for i in range(20):
        k, v = JSON_KEYS[i % 10], JSON_VALUES[(i * 3 + i // 10) % 10]
        items.append(_item("format", f"Reply with a JSON object that has one key, \"{k}\", whose "
                           f"value is the string \"{v}\". Reply with the JSON only.",
                           {"type": "json_key", "key": k, "value": v}))
    starts = rng.sample(range(20, 95), 20)
    for a in starts:
        items.append(_item("format", f"List the whole numbers from {a} to {a + 4}, separated by commas.",
                           {"type": "number_sequence", "numbers": list(range(a, a + 5))}))
    for w in words[:20]:
        items.append(_item("format", f"Write the word {w} inside square brackets, like [this].",
                           {"type": "bracketed", "word": w}, subject=w))
    # short reasoning
    for n in rng.sample(range(20, 999), 20):
        items.append(_item("reasoning", f"Is the number {n} even or odd? Answer with one word.",
                           {"type": "exclusive", "options": ["even", "odd"],
                            "answer": "even" if n % 2 == 0 else "odd"}))
    for _ in range(20):
        a, b = rng.sample(range(100, 999), 2)
        items.append(_item("reasoning", f"Which number is larger, {a} or {b}? Answer with the number only.",
                           {"type": "first_number", "number": max(a, b)}))
    for _ in range(15):
        a, b = rng.sample(range(10, 99), 2)
        items.append(_item("reasoning", f"Is {a} greater than {b}? Answer yes or no.",
                           {"type": "exclusive", "options": ["yes", "no"], "answer": "yes" if a > b else "no"}))
    for i in range(15):
        x, y, z = rng.sample(NAMES, 3)
        adj, most, least = (("taller", "tallest", "shortest"), ("older", "oldest", "youngest"),
                            ("faster", "fastest", "slowest"))[i % 3]
        ask_most = i % 2 == 0
        items.append(_item("reasoning", f"{x} is {adj} than {y}. {y} is {adj} than {z}. Who is the "
                           f"{most if ask_most else least}? Answer with a name.",
                           {"type": "exclusive", "options": [x, y, z], "answer": x if ask_most else z}))
    for it in items:
        it["tier"] = "core"
    items += _extended({it["prompt"] for it in items})
    for i, it in enumerate(items, 1):
        it["id"] = f"gen-{i:03d}"
    return [{"id": it.pop("id"), **it} for it in items]


CORE_SIZE = 438  # the first items: the default suite (``general_suite_size`` unset)
FULL_SIZE = 3000  # core + extended: what a GPU answers in seconds

# Unit facts for the extended tier's knowledge items (none is taught by a replay prompt).
_UNITS = (("metres", "centimetres", 100), ("kilograms", "grams", 1000), ("hours", "minutes", 60),
          ("days", "hours", 24), ("dozens", "items", 12), ("years", "months", 12),
          ("kilometres", "metres", 1000))
_EXTENDED_COUNTS = {"knowledge": 350, "arithmetic": 560, "instruction": 320, "format": 440}


def _extended(taken: set[str]) -> list[dict[str, Any]]:
    """The extended tier: the same kinds of checks over fresh parameters, so that a GPU can run a
    suite whose forgetting interval is about +-0.02 (a 0.03 drop is decidable against 0.05).

    Drawn from its own seeded generator, after the core items, so the core (and every subset a
    CPU uses) is unchanged. No prompt repeats a core prompt."""
    rng = random.Random(20261203)
    out: list[dict[str, Any]] = []

    def add(kind: str, question: str, check: dict[str, Any], **kw: Any) -> None:
        it = _item(kind, question, check, **kw)
        if it["prompt"] not in taken:
            taken.add(it["prompt"])
            it["tier"] = "extended"
            out.append(it)

    def upto(kind: str) -> bool:
        return sum(it["kind"] == kind for it in out) < _EXTENDED_COUNTS.get(kind, 10**9)

    # knowledge: reverse capitals, element symbols, unit facts
    for country, city in CAPITALS:
        add("knowledge", f"Which country has {city.split('|')[0]} as its capital city?",
            {"type": "contains", "answers": [country.removeprefix("the ")]},
            subject=country.removeprefix("the "), suffix=True)
    for name, sym in ELEMENTS:
        add("knowledge", f"What is the chemical symbol of {name}? Give the symbol.",
            {"type": "case_sensitive", "text": sym}, subject=name)
    while upto("knowledge"):
        big, small, factor = rng.choice(_UNITS)
        n = rng.randint(2, 60)
        add("knowledge", f"How many {small} are in {n} {big}?",
            {"type": "contains", "answers": [str(n * factor)]}, suffix=True)
    # arithmetic: fresh operand pairs of the core's four operations
    ops = (("plus", lambda a, b: (a, b, a + b), (11, 999), (11, 999)),
           ("minus", lambda a, b: (a + b, b, a), (11, 499), (11, 499)),
           ("multiplied by", lambda a, b: (a, b, a * b), (3, 40), (3, 25)),
           ("divided by", lambda a, b: (a * b, b, a), (2, 40), (3, 15)))
    while upto("arithmetic"):
        word, fn, ra, rb = ops[len(out) % 4]
        a, b, value = fn(rng.randint(*ra), rng.randint(*rb))
        add("arithmetic", f"Compute {a} {word} {b}.", {"type": "contains", "answers": [str(value)]},
            suffix=True)
    # instruction following: every word under every template the core used a slice of
    for w in WORDS:
        add("instruction", f"Write the word {w} in capital letters.",
            {"type": "case_sensitive", "text": w.upper()}, subject=w)
        add("instruction", f"Repeat the word {w} three times, separated by spaces.",
            {"type": "repeat", "word": w, "times": 3}, subject=w)
        add("instruction", f"Reply with only the word {w} and nothing else.",
            {"type": "exact_word", "word": w}, subject=w)
        add("instruction", f"Write a short sentence that begins with the word '{w.capitalize()}'.",
            {"type": "starts_with", "word": w}, subject=w)
        add("instruction", f"Repeat the word {w} two times, separated by spaces.",
            {"type": "repeat", "word": w, "times": 2}, subject=w)
    # format following
    for k in JSON_KEYS:
        for v in JSON_VALUES:
            add("format", f"Reply with a JSON object that has one key, \"{k}\", whose value is the "
                f"string \"{v}\". Reply with the JSON only.", {"type": "json_key", "key": k, "value": v})
    for w in WORDS:
        add("format", f"Write the word {w} inside square brackets, like [this].",
            {"type": "bracketed", "word": w}, subject=w)
    while upto("format"):
        a = rng.randint(100, 9990)
        add("format", f"List the whole numbers from {a} to {a + 4}, separated by commas.",
            {"type": "number_sequence", "numbers": list(range(a, a + 5))})
    # short reasoning, to the full size
    i = 0
    while len(taken) < FULL_SIZE:
        fam, i = i % 4, i + 1
        if fam == 0:
            n = rng.randint(1000, 9999)
            add("reasoning", f"Is the number {n} even or odd? Answer with one word.",
                {"type": "exclusive", "options": ["even", "odd"], "answer": "even" if n % 2 == 0 else "odd"})
        elif fam == 1:
            a, b = rng.sample(range(1000, 9999), 2)
            add("reasoning", f"Which number is larger, {a} or {b}? Answer with the number only.",
                {"type": "first_number", "number": max(a, b)})
        elif fam == 2:
            a, b = rng.sample(range(100, 999), 2)
            add("reasoning", f"Is {a} greater than {b}? Answer yes or no.",
                {"type": "exclusive", "options": ["yes", "no"], "answer": "yes" if a > b else "no"})
        else:
            x, y, z = rng.sample(NAMES, 3)
            adj, most, least = rng.choice((("taller", "tallest", "shortest"), ("older", "oldest", "youngest"),
                                           ("faster", "fastest", "slowest")))
            ask_most = rng.random() < 0.5
            add("reasoning", f"{x} is {adj} than {y}. {y} is {adj} than {z}. Who is the "
                f"{most if ask_most else least}? Answer with a name.",
                {"type": "exclusive", "options": [x, y, z], "answer": x if ask_most else z})
    return out


def check_general(output: str, item: dict[str, Any]) -> float:
    """1.0 when ``output`` satisfies the item's check, else 0.0."""
    c = item.get("check") or {"type": "contains", "answers": item.get("answers", [])}
    kind = c["type"]
    if kind == "contains":
        return answer_match(output, c["answers"])
    if kind == "exclusive":
        found = [o for o in c["options"] if answer_match(output, [o])]
        return float(found == [c["answer"]])
    if kind == "case_sensitive":
        return float(re.search(rf"(?<![A-Za-z]){re.escape(c['text'])}(?![A-Za-z])", output) is not None)
    if kind == "repeat":
        w = tokens(c["word"])
        return float(" ".join(w * c["times"]) in " ".join(tokens(output)))
    if kind == "exact_word":
        return float(normalize(output) == c["word"])
    if kind == "starts_with":
        t = tokens(output)
        return float(bool(t) and t[0] == c["word"])
    if kind == "json_key":
        obj = parse_json(output)
        return float(isinstance(obj, dict) and normalize(obj.get(c["key"], "")) == normalize(c["value"]))
    if kind == "number_sequence":
        nums = [int(x) for x in re.findall(r"-?\d+", output)]
        want = c["numbers"]
        return float(any(nums[i:i + len(want)] == want for i in range(len(nums))))
    if kind == "bracketed":
        return float(f"[{c['word']}]" in output.lower())
    if kind == "first_number":
        nums = re.findall(r"\d+", output)
        return float(bool(nums) and int(nums[0]) == c["number"])
    raise ValueError(f"unknown check {kind!r}")


@lru_cache(maxsize=1)
def _shipped() -> tuple[dict[str, Any], ...]:
    text = resources.files("tuneloop_gateway.data").joinpath("general_suite.jsonl").read_text()
    return tuple(json.loads(line) for line in text.splitlines() if line.strip())


def load_suite(limit: int | None = None) -> list[dict[str, Any]]:
    """The core suite (unset ``limit``), fewer core items taken round-robin across kinds, or —
    ``limit`` above the core — the core plus that many more extended items, round-robin too.
    Stable order; a subset never changes when the extended tier grows."""
    every = [dict(it) for it in _shipped()]
    core = [it for it in every if it.get("tier", "core") == "core"]
    if not limit or limit == len(core):
        return core
    if limit > len(core):
        extra = [it for it in every if it.get("tier") == "extended"]
        return core + _round_robin(extra, min(limit - len(core), len(extra)))
    return _round_robin(core, limit)


def _round_robin(items: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    if limit >= len(items):
        return items
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for it in items:
        by_kind.setdefault(it["kind"], []).append(it)
    picked: list[dict[str, Any]] = []
    queues = [by_kind[k] for k in KINDS if k in by_kind]
    i = 0
    while len(picked) < limit:
        for q in queues:
            if i < len(q) and len(picked) < limit:
                picked.append(q[i])
        i += 1
    order = {it["id"]: n for n, it in enumerate(items)}
    return sorted(picked, key=lambda it: order[it["id"]])


if __name__ == "__main__":  # regenerate data/general_suite.jsonl
    for it in generate():
        print(json.dumps(it, ensure_ascii=False))

"""The article's example task: summarise a support ticket and classify its urgency.

Rows are in the article's form::

    {"instruction": "Summarize this support ticket and classify its urgency.",
     "input": "Subject: App keeps crashing...",
     "output": "{\"summary\": \"...\", \"urgency\": \"high\", \"category\": \"bug\"}"}

The generator is seeded and varied: category and urgency are decided independently and
expressed through the ticket's wording (problem description, business impact), with shared
filler sentences, so a model must read the ticket to answer. The summary is derived from the
ticket's problem, so ROUGE against it is meaningful.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

INSTRUCTION = "Summarize this support ticket and classify its urgency."
URGENCIES = ("high", "medium", "low")

# category -> list of (subject, problem sentence, summary)
_PROBLEMS: dict[str, list[tuple[str, str, str]]] = {
    "bug": [
        ("App keeps crashing", "the app crashes every time I open the {page} page",
         "app crashes when opening the {page} page"),
        ("Error on {page}", "I get an error 500 when I click save on the {page} page",
         "error 500 when saving on the {page} page"),
        ("Button does nothing", "the submit button on the {page} page does nothing on {device}",
         "submit button not working on the {page} page on {device}"),
        ("Page never loads", "the {page} page spins forever and never loads on {device}",
         "{page} page never finishes loading on {device}"),
        ("Data not saving", "changes I make on the {page} page are lost after refresh",
         "changes on the {page} page are lost after refresh"),
    ],
    "billing": [
        ("Charged twice", "I was charged twice for my {plan} subscription this month",
         "double charge for the {plan} subscription"),
        ("Wrong invoice amount", "my invoice shows the wrong amount for the {plan} plan",
         "incorrect invoice amount for the {plan} plan"),
        ("Refund request", "I cancelled the {plan} plan but was still billed and want a refund",
         "billed after cancelling the {plan} plan, wants refund"),
        ("Card declined", "my card is declined when I try to pay for the {plan} plan",
         "card declined when paying for the {plan} plan"),
    ],
    "account": [
        ("Cannot log in", "I cannot log in to my account, the password reset email never arrives",
         "cannot log in, password reset email not received"),
        ("Locked out", "my account was locked after too many attempts on {device}",
         "account locked after failed login attempts on {device}"),
        ("Change email address", "I need to change the email address on my account",
         "wants to change account email address"),
        ("Two-factor problem", "the two-factor code from my phone is always rejected",
         "two-factor authentication code rejected"),
        ("Delete my account", "please delete my account and all my data",
         "requests account and data deletion"),
    ],
    "feature": [
        ("Feature request: dark mode", "it would be great to have a dark mode in the {page} page",
         "requests dark mode for the {page} page"),
        ("Export to CSV", "please add a way to export the {page} data to CSV",
         "requests CSV export of {page} data"),
        ("Integration request", "we would like an integration with {tool}",
         "requests an integration with {tool}"),
        ("Bulk edit", "it would save us time to bulk edit items on the {page} page",
         "requests bulk editing on the {page} page"),
    ],
    "shipping": [
        ("Order not arrived", "my order #{order} has not arrived after {days} days",
         "order #{order} not delivered after {days} days"),
        ("Wrong item delivered", "I received the wrong item in order #{order}",
         "wrong item delivered in order #{order}"),
        ("Damaged package", "the package for order #{order} arrived damaged",
         "order #{order} arrived damaged"),
    ],
}

_IMPACT = {
    "high": [
        "This is blocking our whole team and we are losing sales.",
        "Urgent: production is down for all our customers.",
        "We have a launch tomorrow and cannot work at all.",
        "This is critical, nobody in the company can work.",
    ],
    "medium": [
        "It is annoying but we found a workaround for now.",
        "Please look at it this week if possible.",
        "It slows us down but we can still work.",
        "Some of our users are affected, not all of them.",
    ],
    "low": [
        "No rush, just wanted to let you know.",
        "Whenever you have time, it is not important.",
        "Low priority, only a small inconvenience.",
        "Not a big deal, take your time.",
    ],
}

_GREETINGS = ["Hi,", "Hello support,", "Hi team,", "Hello,", "Dear support,", "Hey,"]
_FILLER = [
    "I have been a customer for {years} years.",
    "I tried clearing the cache already.",
    "Our account is under the {plan} plan.",
    "I am using {device}.",
    "Thanks for your help.",
    "Let me know if you need more details.",
    "My colleague {name} noticed it first.",
    "",
]
_SIGN = ["Thanks, {name}", "Best, {name}", "Regards, {name}", "{name}", "Cheers, {name}"]
_SLOTS = {
    "page": ["checkout", "settings", "dashboard", "reports", "profile", "search", "cart", "orders"],
    "device": ["an iPhone", "Android", "Chrome on Windows", "Safari on a Mac", "Firefox", "an iPad"],
    "plan": ["Pro", "Basic", "Team", "Enterprise", "Starter"],
    "tool": ["Slack", "Salesforce", "Zapier", "Jira", "HubSpot"],
    "name": ["Anna", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jon"],
    "years": ["two", "three", "five", "many"],
}

CATEGORIES = tuple(_PROBLEMS)


def _fill(rng: random.Random, text: str, slots: dict[str, str]) -> str:
    return text.format(**slots)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def make_ticket(rng: random.Random) -> dict[str, str]:
    """One row of the support-ticket task."""
    category = rng.choice(CATEGORIES)
    urgency = rng.choice(URGENCIES)
    subject, problem, summary = rng.choice(_PROBLEMS[category])
    slots = {k: rng.choice(v) for k, v in _SLOTS.items()}
    slots["order"] = str(rng.randint(10000, 99999))
    slots["days"] = str(rng.randint(5, 30))
    body = [rng.choice(_GREETINGS), _cap(_fill(rng, problem, slots)) + "."]
    filler = _fill(rng, rng.choice(_FILLER), slots)
    impact = rng.choice(_IMPACT[urgency])
    body += [impact, filler] if rng.random() < 0.5 else [filler, impact]
    body.append(_fill(rng, rng.choice(_SIGN), slots))
    ticket = f"Subject: {_fill(rng, subject, slots)}\n" + " ".join(s for s in body if s)
    out_summary = "User reports " + _fill(rng, summary, slots) if category != "feature" else \
        "User " + _fill(rng, summary, slots)
    output = json.dumps({"summary": out_summary, "urgency": urgency, "category": category})
    return {"instruction": INSTRUCTION, "input": ticket, "output": output}


def generate(n: int, seed: int = 42) -> list[dict[str, str]]:
    """``n`` rows, deterministic for a given seed, with no exact duplicate inputs."""
    return list(iter_tickets(n, seed))


def iter_tickets(n: int, seed: int = 42) -> Iterator[dict[str, str]]:
    rng = random.Random(seed)
    seen: set[str] = set()
    tries = 0
    while len(seen) < n:
        row = make_ticket(rng)
        tries += 1
        if row["input"] in seen:
            if tries > n * 50:
                raise ValueError(f"cannot generate {n} distinct tickets")
            continue
        seen.add(row["input"])
        yield row


def write_jsonl(path: str, n: int, seed: int = 42) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in iter_tickets(n, seed):
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def corpus_text(n: int = 2000, seed: int = 7) -> list[str]:
    """Unpaired ticket text (inputs and outputs, shuffled) for pretraining tiny test models."""
    rows = generate(n, seed)
    texts = [r["input"] for r in rows] + [r["output"] for r in rows]
    random.Random(seed).shuffle(texts)
    return texts


if __name__ == "__main__":  # pragma: no cover
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    for r in generate(n):
        print(json.dumps(r))

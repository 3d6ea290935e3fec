"""Masking of secrets and personal data in captured traffic, applied *before* anything is stored.

Each finding is replaced by a placeholder naming its kind (``[EMAIL]``, ``[CARD]``...), so a
reviewer still sees the shape of the conversation and a model trained on it learns to keep the
placeholder, never the value. What is masked, and what deliberately is not:

- secrets: private-key blocks, JWTs, ``Bearer <token>``, our own keys (``tlk-...``), OpenAI
  (``sk-...``), Anthropic, Hugging Face (``hf_...``), GitHub (``ghp_...``, ``github_pat_...``),
  Slack (``xox?-...``), AWS access key ids (``AKIA...``), Google API keys (``AIza...``), and the
  value of ``password=`` / ``api_key:`` / ``secret=`` style assignments.
- emails; card numbers (13-19 digits, spaces or dashes allowed, only when the Luhn check
  passes: order numbers and timestamps are not cards); US social security numbers
  (``123-45-6789`` form); IBANs (only when the mod-97 check passes).
- phone numbers: an international number (``+`` then 8-15 digits, separators allowed) or a
  national one written with separators (``(555) 123-4567``, ``555-123-4567``, ``020 7946
  0958``). A bare run of digits is *not* a phone number (it is far more often an id, an amount
  or a year), nor is a date (``2026-12-02``), a time or a version (``1.2.3``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

Check = Callable[[str], bool]


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a digit string (what every payment card number satisfies)."""
    total, double = 0, False
    for ch in reversed(digits):
        d = ord(ch) - 48
        if double:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        double = not double
    return total % 10 == 0


def _card_ok(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    if not 13 <= len(digits) <= 19 or len(set(digits)) == 1:
        return False
    return luhn_ok(digits)


def _iban_ok(match: str) -> bool:
    s = re.sub(r"\s", "", match).upper()
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    number = "".join(str(int(c, 36)) for c in moved)
    return int(number) % 97 == 1


def _phone_ok(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    if match.lstrip().startswith("+"):
        return 8 <= len(digits) <= 15
    return 10 <= len(digits) <= 13


# order matters: secrets first (a key may contain digit runs), then the structured numbers
_RULES: list[tuple[str, re.Pattern[str], Check | None, int]] = [
    ("PRIVATE_KEY", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)",
                               re.S), None, 0),
    ("JWT", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), None, 0),
    ("SECRET", re.compile(r"(?i)\b(bearer)\s+([A-Za-z0-9._~+/=-]{16,})"), None, 2),
    ("API_KEY", re.compile(
        r"\b(?:tlk-[A-Za-z0-9_-]{16,}|sk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}|hf_[A-Za-z0-9]{30,}"
        r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}|xox[abprs]-[A-Za-z0-9-]{10,}"
        r"|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35})"), None, 0),
    ("SECRET", re.compile(
        r"(?i)\b(password|passwd|pwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token|token)"
        r"([\"']?\s*[:=]\s*[\"']?)([^\s\"',;]{6,})"), None, 3),
    ("EMAIL", re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}"
                         r"(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}\b"), None, 0),
    ("IBAN", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"), _iban_ok, 0),
    ("CARD", re.compile(r"(?<![\d+-])\d(?:[ -]?\d){12,18}(?![\d-])"), _card_ok, 0),
    ("SSN", re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])"), None, 0),
    ("PHONE", re.compile(
        r"(?<![\w+])(?<!\d[.-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}"
        r"(?!\w|[.-]\d)|(?<![\w+])\+\d{8,15}\b"), _phone_ok, 0),
]
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$|^\d{1,2}[./-]\d{1,2}[./-]\d{2,4}$")


def mask(text: str) -> tuple[str, Counter[str]]:
    """``text`` with every finding replaced by ``[KIND]``, and how many of each kind."""
    found: Counter[str] = Counter()
    for kind, pattern, check, group in _RULES:
        def repl(m: re.Match[str], kind: str = kind, check: Check | None = check,
                 group: int = group) -> str:
            whole = m.group(0)
            if check is not None and not check(whole):
                return whole
            if kind == "PHONE" and _DATE.match(whole.strip()):
                return whole
            found[kind] += 1
            if group:  # keep the label ("password=", "Bearer "), mask the value only
                return whole[:m.start(group) - m.start(0)] + f"[{kind}]" + whole[m.end(group) - m.start(0):]
            return f"[{kind}]"
        text = pattern.sub(repl, text)
    return text, found


def mask_messages(messages: list[dict]) -> tuple[list[dict], Counter[str]]:
    """Chat messages with their text content masked (list-of-parts content too)."""
    total: Counter[str] = Counter()
    out = []
    for m in messages:
        m = dict(m)
        content = m.get("content")
        if isinstance(content, str):
            m["content"], found = mask(content)
            total += found
        elif isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    part = dict(part)
                    part["text"], found = mask(part["text"])
                    total += found
                parts.append(part)
            m["content"] = parts
        out.append(m)
    return out, total

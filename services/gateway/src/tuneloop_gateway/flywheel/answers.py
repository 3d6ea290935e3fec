"""The answer a captured row is trained on: the reviewer's edit, else the user's corrected
answer, else the model's own answer (only when nobody said it was wrong: a thumbs-down without
a correction or an edit has none, so it cannot be accepted as is)."""

from __future__ import annotations

from ..db import Capture


def training_answer(row: Capture) -> str | None:
    if row.edited_output is not None:
        return row.edited_output
    if row.correction is not None:
        return row.correction
    return None if row.rating == "down" else row.output

"""The second task's generator: deterministic, varied, and every answer is in its message."""

import json

from tuneloop.examples.orders import WORDS, generate


def test_orders_are_deterministic_varied_and_answerable():
    rows = generate(300, seed=3)
    assert rows == generate(300, seed=3) and rows != generate(300, seed=4)
    outs = [json.loads(r["output"]) for r in rows]
    assert {o["express"] for o in outs} == {True, False}
    assert len({o["product"] for o in outs}) >= 12 and len({o["city"] for o in outs}) >= 12
    assert len({r["input"] for r in rows}) > 290
    for r, o in zip(rows, outs):
        assert set(o) == {"product", "quantity", "city", "express"}
        assert o["city"] in r["input"]
        assert str(o["quantity"]) in r["input"] or WORDS.get(o["quantity"], "?") in r["input"]

"""Request validation of the OpenAI surface (no processes: pure function checks)."""

from __future__ import annotations

import pytest

from tuneloop.errors import InvalidRequest
from tuneloop_inference.api.openai import _usage_from_tail, validate


def chat(**kw):  # noqa: ANN003, ANN201
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw}


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    (chat(temperature=3), "temperature"),
    (chat(temperature="hot"), "temperature"),
    (chat(max_tokens=0), "max_tokens"),
    (chat(max_tokens=True), "max_tokens"),
    (chat(top_p=1.5), "top_p"),
    (chat(n=0), "n"),
    (chat(stop=["a", "b", "c", "d", "e"]), "stop"),
    (chat(stop=[""]), "stop"),
    (chat(stream="yes"), "stream"),
])
def test_bad_chat_params_are_400_with_param(body: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        validate("chat", body)
    assert err.value.status == 400
    assert err.value.param == param


def test_valid_chat_passes_and_max_completion_tokens_maps_to_max_tokens() -> None:
    body = validate("chat", chat(max_completion_tokens=7, temperature=0.5, stop="\n", n=2))
    assert body["max_tokens"] == 7 and "max_completion_tokens" not in body


def test_completions_prompt_rules() -> None:
    assert validate("completions", {"model": "m", "prompt": ["one"]})["prompt"] == "one"
    with pytest.raises(InvalidRequest) as err:
        validate("completions", {"model": "m", "prompt": ["a", "b"]})
    assert err.value.param == "prompt"
    with pytest.raises(InvalidRequest):
        validate("completions", {"model": "m", "prompt": 5})


def test_usage_is_read_from_the_last_sse_event() -> None:
    tail = (b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
            b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
            b"data: [DONE]\n\n")
    assert _usage_from_tail(tail) == {"prompt_tokens": 3, "completion_tokens": 2}
    assert _usage_from_tail(b"data: [DONE]\n\n") is None


def test_stop_sequence_is_removed_from_a_stream_however_it_is_chunked() -> None:
    import json

    from tuneloop_inference.engines.transformers import StopStripper

    def event(text=None, finish=None):  # noqa: ANN001, ANN202
        choice = {"delta": {} if text is None else {"content": text}, "index": 0}
        if finish:
            choice["finish_reason"] = finish
        return b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"

    stream = (event() + event("Hel") + event("lo") + event(" wor") + event("ld\n")
              + event(None, "stop") + b"data: [DONE]\n\n")
    for size in (1, 5, len(stream)):
        strip = StopStripper(["\n"])
        out = b"".join(strip.feed(stream[i:i + size]) for i in range(0, len(stream), size))
        out += strip.flush()
        events = [json.loads(e[6:]) for e in out.split(b"\n\n") if e.startswith(b"data: {")]
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
        assert text == "Hello world"
        assert events[-1]["choices"][0]["finish_reason"] == "stop"
        assert out.endswith(b"data: [DONE]\n\n")


def test_unknown_fields_reach_the_engine_unchanged() -> None:
    """protocol.py names only what it checks: tools, response_format, vLLM's own sampling
    fields and fields of a message pass through as sent (types and values kept)."""
    extra = {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
             "response_format": {"type": "json_object"}, "top_k": 5, "min_p": 0.1,
             "logprobs": True, "metadata": {"nested": [1, {"x": None}]}}
    message = {"role": "tool", "content": None, "tool_call_id": "c1", "name": "f"}
    body = validate("chat", {"model": "m", "messages": [message], "temperature": 1, **extra})
    assert {k: body[k] for k in extra} == extra
    assert body["messages"] == [message] and body["temperature"] == 1
    assert isinstance(body["temperature"], int)  # an integer stays one on the way to the engine
    assert "max_tokens" not in body and "stop" not in body  # nothing the client did not send


@pytest.mark.parametrize("body, param", [
    ({"model": "m", "messages": [], "temperature": 9}, "messages"),      # API order, not schema
    ({"model": 5, "messages": "x", "stream": "y"}, "model"),
    ({"model": "m", "messages": ["not an object"]}, "messages.0.role"),
    (chat(seed=2**64), "seed"),
    (chat(temperature=float("nan")), "temperature"),
    (chat(n="2"), "n"),                                                  # strict: no coercion
])
def test_first_bad_field_is_the_one_named(body: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        validate("chat", body)
    assert err.value.param == param and err.value.status == 400


def test_a_body_that_is_not_an_object_is_400() -> None:
    for body in ([], "x", 3, None):
        with pytest.raises(InvalidRequest) as err:
            validate("chat", body)
        assert str(err.value) == "request body must be a JSON object"

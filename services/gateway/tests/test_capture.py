"""Capture and feedback through the real gateway in front of a real engine (the session's base
engine: vLLM CPU on a tiny local model, conftest.py), with the official OpenAI SDK: opt-in per key and model, masking
before storage, streamed answers assembled, feedback by response id, the review queue,
retention, and a capture failure that never reaches the user."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx
import openai
import pytest

from tuneloop.contracts import Capture, Page
from tuneloop.testing import ServiceProcess
from tuneloop_gateway.auth import Principal
from tuneloop_gateway.flywheel.capture import CaptureRecorder
from tuneloop_gateway.flywheel.masking import mask
from tuneloop_gateway.settings import GatewaySettings

ADMIN = "tlk-capture-admin-key-0123456789abcdef"
H = {"Authorization": f"Bearer {ADMIN}"}
PII = ("My email is jane.doe@example.com, card 4111 1111 1111 1111, phone +1 415 555 0132. "
       "Why was I charged twice?")


@pytest.fixture(scope="module")
def engine(engines):
    """The tiny base's engine, shared with the other gateway tests (one start, not two)."""
    return engines["base"]


def _gateway(engine, data, **env):
    return ServiceProcess("tuneloop_gateway", env={
        "TUNELOOP_DATA_DIR": str(data), "GATEWAY_BOOTSTRAP_ADMIN_KEY": ADMIN,
        "GATEWAY_INFERENCE_URL": engine.url, "GATEWAY_RECONCILE_INTERVAL_S": "0", **env},
        log_path=data / "gateway.log")


@pytest.fixture(scope="module")
def gw(engine, tmp_path_factory):
    data = tmp_path_factory.mktemp("cap-gw")
    with _gateway(engine, data, GATEWAY_CAPTURE_MODELS=engine.model,
                  GATEWAY_CAPTURE_MAX_ROWS="6") as proc:
        yield proc


def _key(gw, capture: bool) -> str:
    r = httpx.post(gw.url + "/v1/keys", headers=H, json={"name": "app", "scopes": ["inference"],
                                                         "capture": capture})
    assert r.status_code == 201 and r.json()["capture"] is capture, r.text
    return r.json()["key"]


def _sdk(gw, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=120)


def _captures(gw, **params) -> dict:
    r = httpx.get(gw.url + "/v1/captures", headers=H, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def _by_response(gw, response_id: str) -> dict:
    """The capture of one answer: the feedback route waits for the write queue, the list does
    not, so poll the list briefly (the write happens after the answer, by design)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        hits = [c for c in _captures(gw, limit=500)["data"] if c["response_id"] == response_id]
        if hits:
            return hits[0]
        time.sleep(0.2)
    raise AssertionError(f"no capture of {response_id}")


def _feedback(gw, key: str, response_id: str, body: dict, kind: str = "chat/completions"):
    return httpx.post(f"{gw.url}/v1/{kind}/{response_id}/feedback",
                      headers={"Authorization": f"Bearer {key}"}, json=body)


def test_capture_masks_before_storage_and_feedback_by_response_id(gw, engine):
    key = _key(gw, capture=True)
    sdk = _sdk(gw, key)
    reply = sdk.chat.completions.create(model=engine.model, max_tokens=12, temperature=0,
                                        messages=[{"role": "user", "content": PII}])
    # feedback through the OpenAI SDK's own request path (no SDK method exists for it)
    fb = sdk.post(f"/chat/completions/{reply.id}/feedback", cast_to=httpx.Response,
                  body={"rating": "down", "correction": "Refund sent to jane.doe@example.com."})
    assert fb.status_code == 200
    body = fb.json()
    assert body["rating"] == "down" and body["correction"] == "Refund sent to [EMAIL]."

    row = _by_response(gw, reply.id)
    prompt = row["messages"][0]["content"]
    assert "jane.doe@example.com" not in prompt and "4111" not in prompt and "555 0132" not in prompt
    assert prompt.startswith("My email is [EMAIL], card [CARD], phone [PHONE].")
    assert row["masked"]["EMAIL"] == 1 and row["masked"]["CARD"] == 1
    assert row["output"] == mask(reply.choices[0].message.content)[0]
    assert row["served_model"] == reply.model and row["model"] == engine.model
    assert row["prompt_tokens"] == reply.usage.prompt_tokens
    assert row["completion_tokens"] == reply.usage.completion_tokens
    assert row["latency_s"] > 0 and row["stream"] is False and row["status"] == "pending"
    assert row["feedback"]["rating"] == "down"
    assert row["training_answer"] == "Refund sent to [EMAIL]."
    # the evals' task metrics on the answer: JSON validity, agreement with the correction
    assert row["metrics"]["json_valid"] is False and 0 <= row["metrics"]["agreement"] < 1
    assert row["id"] in {c["id"] for c in _captures(gw, json_valid="false", limit=500)["data"]}
    assert row["id"] not in {c["id"] for c in _captures(gw, json_valid="true", limit=500)["data"]}
    one = httpx.get(f"{gw.url}/v1/captures/{row['id']}", headers=H).json()
    assert Capture.model_validate(one).feedback.rating == "down"
    # nothing of the raw values anywhere in the stored database files (WAL included)
    files = list(Path(gw.env["TUNELOOP_DATA_DIR"]).glob("gateway.db*"))
    assert files and all(b"jane.doe@example.com" not in f.read_bytes() for f in files)


def test_streamed_answer_is_assembled(gw, engine):
    key = _key(gw, capture=True)
    stream = _sdk(gw, key).chat.completions.create(
        model=engine.model, max_tokens=10, stream=True, temperature=0,
        messages=[{"role": "user", "content": "Say hello to bob@corp.example"}])
    ids, text = set(), ""
    for chunk in stream:
        ids.add(chunk.id)
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    (rid,) = ids
    row = _by_response(gw, rid)
    assert row["stream"] is True and row["output"] == mask(text)[0]
    assert row["messages"][0]["content"] == "Say hello to [EMAIL]"
    r = _feedback(gw, key, rid, {"rating": "up"})
    assert r.status_code == 200 and r.json()["rating"] == "up"


def test_completions_endpoint_and_its_feedback(gw, engine):
    key = _key(gw, capture=True)
    out = _sdk(gw, key).completions.create(model=engine.model, prompt="Tickets: ", max_tokens=5)
    r = _feedback(gw, key, out.id, {"rating": "up", "comment": "fine"}, kind="completions")
    assert r.status_code == 200, r.text
    row = _by_response(gw, out.id)
    assert row["endpoint"] == "completions" and row["messages"] == [
        {"role": "user", "content": "Tickets: "}]


def test_not_captured_without_the_keys_opt_in(gw, engine):
    key = _key(gw, capture=False)
    reply = _sdk(gw, key).chat.completions.create(
        model=engine.model, max_tokens=4, messages=[{"role": "user", "content": "not for capture"}])
    r = _feedback(gw, key, reply.id, {"rating": "up"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "response_not_found"
    assert not [c for c in _captures(gw, limit=500)["data"] if c["response_id"] == reply.id]


def test_a_key_can_opt_in_later_and_models_must_be_listed(gw, engine):
    key = _key(gw, capture=False)
    kid = next(k["id"] for k in httpx.get(gw.url + "/v1/keys", headers=H).json()["data"]
               if k["prefix"] == key[:12])
    r = httpx.patch(f"{gw.url}/v1/keys/{kid}", headers=H, json={"capture": True})
    assert r.status_code == 200 and r.json()["capture"] is True
    reply = _sdk(gw, key).chat.completions.create(
        model=engine.model, max_tokens=4, messages=[{"role": "user", "content": "now captured"}])
    assert _feedback(gw, key, reply.id, {"rating": "up"}).status_code == 200
    bad = httpx.patch(f"{gw.url}/v1/keys/{kid}", headers=H, json={"capture": "yes please"})
    assert bad.status_code in (400, 422) and "error" in bad.json()
    # the alias opt-in: a model that GATEWAY_CAPTURE_MODELS does not list is never captured
    rec = CaptureRecorder(GatewaySettings(capture_models=["support-bot"]), None, None)
    who = Principal("key-1", "app", ("inference",), None, capture=True)
    assert rec.begin(who, "chat", b'{"model": "support-bot", "messages": []}') is not None
    assert rec.begin(who, "chat", b'{"model": "other", "messages": []}') is None
    assert rec.begin(Principal("key-2", "app", ("inference",), None), "chat",
                     b'{"model": "support-bot", "messages": []}') is None
    assert CaptureRecorder(GatewaySettings(), None, None).begin(
        who, "chat", b'{"model": "support-bot"}') is None   # nothing listed: capture is off


@pytest.mark.parametrize(("body", "code"), [
    ({"rating": "meh"}, None), ({}, None), ({"rating": "up", "extra": 1}, None),
    ({"correction": ""}, None), ({"rating": "up", "correction": "x" * 100_001}, None)])
def test_feedback_is_validated(gw, body, code):
    r = _feedback(gw, ADMIN, "chatcmpl-whatever", body)
    assert r.status_code in (400, 422), r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}


def test_feedback_only_on_own_answers(gw, engine):
    mine, other = _key(gw, capture=True), _key(gw, capture=True)
    reply = _sdk(gw, mine).chat.completions.create(
        model=engine.model, max_tokens=4, messages=[{"role": "user", "content": "mine"}])
    r = _feedback(gw, other, reply.id, {"rating": "down"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "response_not_found"
    assert _feedback(gw, ADMIN, reply.id, {"rating": "up"}).status_code == 200  # admin may
    assert _feedback(gw, "tlk-not-a-key-000000000000000", reply.id, {"rating": "up"}).status_code == 401


def test_review_queue_and_retention(gw, engine):
    key = _key(gw, capture=True)
    sdk = _sdk(gw, key)
    ids = []
    for i in range(3):
        reply = sdk.chat.completions.create(model=engine.model, max_tokens=4,
                                            messages=[{"role": "user", "content": f"review {i}"}])
        ids.append(reply.id)
    _feedback(gw, key, ids[0], {"rating": "up"})
    _feedback(gw, key, ids[1], {"rating": "down"})
    caps = [_by_response(gw, rid)["id"] for rid in ids]
    page = Page[Capture].model_validate(_captures(gw, limit=2))   # the contract, paged
    assert len(page.data) == 2 and page.has_more and page.total > 2
    down = _captures(gw, rating="down", limit=500)["data"]
    assert caps[1] in [c["id"] for c in down] and all(c["feedback"]["rating"] == "down" for c in down)
    assert caps[2] in [c["id"] for c in _captures(gw, rating="none", limit=500)["data"]]

    r = httpx.post(gw.url + "/v1/captures/review", headers=H, json={"accept": [caps[1]]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "capture_needs_answer"
    r = httpx.post(gw.url + "/v1/captures/review", headers=H, json={
        "accept": [caps[0]], "edit": [{"id": caps[1], "output": "A better answer, ann@x.org"}],
        "reject": [caps[2]]})
    assert r.status_code == 200 and r.json()["accepted"] == 1 and r.json()["edited"] == 1, r.text
    got = httpx.get(f"{gw.url}/v1/captures/{caps[1]}", headers=H).json()
    assert got["status"] == "accepted" and got["training_answer"] == "A better answer, [EMAIL]"
    assert {c["id"] for c in _captures(gw, status="accepted")["data"]} >= {caps[0], caps[1]}
    r = httpx.post(gw.url + "/v1/captures/review", headers=H, json={"accept": ["cap-0000000000"]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "capture_not_found"
    r = httpx.post(gw.url + "/v1/captures/review", headers=H, json={"accept": ["../etc"]})
    assert r.status_code in (400, 422)
    r = httpx.get(gw.url + "/v1/captures", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 403   # the queue is admin-only

    # retention: GATEWAY_CAPTURE_MAX_ROWS=6, this module made more than that
    assert _captures(gw, limit=500)["total"] <= 6
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'tuneloop_gateway_captures_total{outcome="recorded"}' in metrics
    assert 'tuneloop_gateway_captures_total{outcome="expired"}' in metrics


def test_a_failed_capture_is_counted_never_returned(engine, tmp_path):
    # (this gateway masks in a thread of its own process: the other path of the writer)
    with _gateway(engine, tmp_path, GATEWAY_CAPTURE_MODELS=engine.model,
                  GATEWAY_CAPTURE_MASK_SUBPROCESS="false") as gw:
        key = _key(gw, capture=True)
        with sqlite3.connect(tmp_path / "gateway.db") as db:   # break the table under it
            db.execute("ALTER TABLE gateway_captures RENAME TO gone")
        reply = _sdk(gw, key).chat.completions.create(
            model=engine.model, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content is not None
        deadline, failed = time.monotonic() + 30, 0.0
        while failed < 1 and time.monotonic() < deadline:   # the write happens after the answer
            metrics = httpx.get(gw.url + "/metrics").text
            failed = sum(float(ln.split()[-1]) for ln in metrics.splitlines()
                         if ln.startswith('tuneloop_gateway_captures_total{outcome="failed"}'))
            time.sleep(0.2)
        assert failed >= 1
        assert 'tuneloop_gateway_captures_total{outcome="recorded"}' not in metrics

"""The flywheel's first half, whole, on CPU with real processes: production traffic through the
gateway with the OpenAI SDK (captured for an opted-in key, masked), feedback by response id,
the drift report and the near-duplicate filter against the training version, review, a new
dataset version whose lineage names the captured requests, and a retraining job on it (one
call) that calls the gateway back like any job, so the same gate decides.

Inference here is ``transformers serve`` on a tiny local model behind the gateway (the
inference service is not needed for capture); dataset and trainer are the real services."""

from __future__ import annotations

import secrets
import time

import httpx
import openai
import pytest

from tuneloop.examples.support_tickets import generate
from tuneloop.testing import ServiceProcess
from tuneloop.testing.engines import TransformersServe
from tuneloop_gateway.flywheel.drift import TrainingIndex, drift_report

pytestmark = pytest.mark.slow

ADMIN = "tlk-flywheel-admin-key-0123456789abcdef"
H = {"Authorization": f"Bearer {ADMIN}"}


def _chat(r: dict) -> dict:
    return {"messages": [{"role": "user", "content": r["instruction"] + "\n\n" + r["input"]},
                         {"role": "assistant", "content": r["output"]}]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_base_dir):
    var = tmp_path_factory.mktemp("flywheel")
    engine = TransformersServe(tiny_base_dir, log_path=var / "logs" / "engine.log")
    common = {"TUNELOOP_DATA_DIR": str(var), "TUNELOOP_LOG_JSON": "false", "HF_HUB_OFFLINE": "1",
              "TUNELOOP_SERVICE_AUTH": "true", "TUNELOOP_SERVICE_TOKEN": secrets.token_urlsafe(24)}
    started = []

    def start(proc):
        started.append(proc)
        return proc.start()
    try:
        start(engine)
        dataset = start(ServiceProcess("tuneloop_dataset", env=common,
                                       log_path=var / "logs" / "dataset.log"))
        trainer = start(ServiceProcess("tuneloop_trainer", env={
            **common, "TUNELOOP_DATASET_URL": dataset.url, "TRAINER_POLL_INTERVAL_S": "0.3"},
            log_path=var / "logs" / "trainer.log", startup_timeout=120))
        gateway = start(ServiceProcess("tuneloop_gateway", env={
            **common, "GATEWAY_BOOTSTRAP_ADMIN_KEY": ADMIN, "TUNELOOP_DATASET_URL": dataset.url,
            "TUNELOOP_TRAINER_URL": trainer.url, "GATEWAY_INFERENCE_URL": engine.url,
            "GATEWAY_RECONCILE_INTERVAL_S": "0", "GATEWAY_CAPTURE_MODELS": engine.model},
            log_path=var / "logs" / "gateway.log"))
        yield {"gateway": gateway, "engine": engine, "base_dir": tiny_base_dir}
    finally:
        for proc in reversed(started):
            proc.stop(timeout=60)


def _wait_capture(gw: str, response_id: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        data = httpx.get(gw + "/v1/captures", headers=H, params={"limit": 500}).json()["data"]
        hit = [c for c in data if c["response_id"] == response_id]
        if hit:
            return hit[0]
        time.sleep(0.2)
    raise AssertionError(f"{response_id} was not captured")


def test_traffic_feedback_review_new_version_with_lineage_then_retrain(stack):
    gw, model = stack["gateway"].url, stack["engine"].model
    rows = generate(80, seed=7)
    base = httpx.post(gw + "/v1/datasets", headers=H, timeout=300, json={
        "rows": [_chat(r) for r in rows[:60]], "eval_size": 12, "name": "tickets"}).json()
    assert base["status"] == "ready", base
    key = httpx.post(gw + "/v1/keys", headers=H, json={
        "name": "support-app", "scopes": ["inference"], "capture": True}).json()["key"]
    sdk = openai.OpenAI(base_url=gw + "/v1", api_key=key, max_retries=0, timeout=120)

    # production traffic: new tickets (one with PII), one prompt copied from the training set
    train_rows = httpx.get(f"{gw}/v1/datasets/{base['id']}/rows", headers=H,
                           params={"split": "train", "limit": 1}).json()["data"]
    copied = train_rows[0]["messages"][0]["content"]
    fresh = [r["instruction"] + "\n\n" + r["input"] for r in rows[60:63]]
    fresh[0] += "\nReach me at pat@example.org or 415-555-0199."
    replies = [sdk.chat.completions.create(model=model, max_tokens=16, temperature=0,
                                           messages=[{"role": "user", "content": p}])
               for p in [*fresh, copied]]
    up, corrected, down, dup = replies
    fb = lambda r, body: sdk.post(f"/chat/completions/{r.id}/feedback",  # noqa: E731
                                  cast_to=httpx.Response, body=body)
    assert fb(up, {"rating": "up"}).status_code == 200
    good = rows[61]["output"]
    assert fb(corrected, {"rating": "down", "correction": good}).status_code == 200
    assert fb(down, {"rating": "down"}).status_code == 200
    caps = {name: _wait_capture(gw, r.id) for name, r in
            zip(("up", "corrected", "down", "dup"), replies, strict=True)}
    assert "[EMAIL]" in caps["up"]["messages"][0]["content"]
    assert "[PHONE]" in caps["up"]["messages"][0]["content"]

    # the queue, filtered by feedback and by nearness to the training set
    down_ids = {c["id"] for c in httpx.get(gw + "/v1/captures", headers=H,
                                           params={"rating": "down"}).json()["data"]}
    assert down_ids == {caps["corrected"]["id"], caps["down"]["id"]}
    near = httpx.get(gw + "/v1/captures", headers=H, params={
        "similar_to": base["id"], "min_similarity": 0.95}).json()
    assert [c["id"] for c in near["data"]] == [caps["dup"]["id"]], near
    assert near["data"][0]["similarity"] == 1.0
    novel = httpx.get(gw + "/v1/captures", headers=H, params={
        "similar_to": base["id"], "max_similarity": 0.95}).json()
    assert caps["dup"]["id"] not in {c["id"] for c in novel["data"]} and novel["total"] == 3

    # drift of the captured prompts from the training prompts (they are the same task)
    drift = httpx.get(gw + "/v1/captures/drift", headers=H, params={"dataset_id": base["id"]}).json()
    assert drift["object"] == "drift_report" and drift["captured"] == 4, drift
    assert drift["training_rows"] == base["counts"]["train"]
    assert drift["content"]["nearest_similarity"]["p90"] == 1.0   # the copied prompt
    assert set(drift["length"]) == {"training", "captured", "ks", "psi"}

    # review: keep the thumbs-up and the corrected one, fix the thumbs-down, drop the duplicate
    r = httpx.post(gw + "/v1/captures/review", headers=H, json={
        "accept": [caps["up"]["id"], caps["corrected"]["id"]], "reject": [caps["dup"]["id"]],
        "edit": [{"id": caps["down"]["id"], "output": rows[62]["output"]}]})
    assert r.status_code == 200, r.text
    pub = httpx.post(gw + "/v1/captures/publish", headers=H, timeout=300, json={
        "base_dataset_id": base["id"], "name": "tickets-from-production"})
    assert pub.status_code == 201, pub.text
    v2 = pub.json()["dataset"]
    accepted = sorted([caps["up"]["id"], caps["corrected"]["id"], caps["down"]["id"]])
    assert sorted(v2["source"]["lineage"]["captures"]) == accepted
    assert v2["source"]["lineage"]["parent_dataset_id"] == base["id"]
    assert set(v2["source"]["lineage"]["responses"]) == {up.id, corrected.id, down.id}
    assert v2["counts"]["train"] == base["counts"]["train"] + 3
    assert v2["counts"]["eval"] == base["counts"]["eval"]   # the held-out rows are kept
    v2_rows = httpx.get(f"{gw}/v1/datasets/{v2['id']}/rows", headers=H,
                        params={"split": "train", "limit": 500}).json()["data"]
    answers = [m["messages"][-1]["content"] for m in v2_rows]
    assert good in answers and rows[62]["output"] in answers
    assert not any("pat@example.org" in m["messages"][0]["content"] for m in v2_rows)
    listed = httpx.get(gw + "/v1/captures", headers=H, params={"dataset_id": v2["id"]}).json()
    assert sorted(c["id"] for c in listed["data"]) == accepted
    again = httpx.post(gw + "/v1/captures/publish", headers=H, json={"base_dataset_id": base["id"]})
    assert again.status_code == 422 and again.json()["error"]["code"] == "no_accepted_captures"

    # retrain in one call: more traffic, accepted, on top of v2 -> v3 + a job gated like any other
    extra = sdk.chat.completions.create(model=model, max_tokens=8, messages=[
        {"role": "user", "content": rows[63]["instruction"] + "\n\n" + rows[63]["input"]}])
    fb(extra, {"rating": "down", "correction": rows[63]["output"]})
    cap = _wait_capture(gw, extra.id)
    assert httpx.post(gw + "/v1/captures/review", headers=H,
                      json={"accept": [cap["id"]]}).status_code == 200
    bad = httpx.post(gw + "/v1/captures/retrain", headers=H, json={"base_dataset_id": v2["id"]})
    assert bad.status_code in (400, 422) and "error" in bad.json()   # base_model is required
    rt = httpx.post(gw + "/v1/captures/retrain", headers=H, timeout=300, json={
        "base_dataset_id": v2["id"], "base_model": str(stack["base_dir"]), "backend": "peft",
        "hyperparameters": {"num_train_epochs": 1, "max_seq_length": 256},
        "gate_alias": "support-bot"})
    assert rt.status_code == 201, rt.text
    out = rt.json()
    v3, job = out["dataset"], out["job"]
    assert v3["source"]["lineage"] == {"parent_dataset_id": v2["id"], "captures": [cap["id"]],
                                       "responses": [extra.id]}
    assert job["dataset_id"] == v3["id"] and job["gate_alias"] == "support-bot"
    assert job["callback_url"].endswith("/internal/training-events")   # -> the gate
    assert job["status"] in ("validating", "queued", "running")
    # lineage from the job back to the requests: job -> v3 -> (v2 -> captures) + its captures
    seen = httpx.get(f"{gw}/v1/jobs/{job['id']}", headers=H).json()
    assert seen["dataset_id"] == v3["id"]
    httpx.post(f"{gw}/v1/jobs/{job['id']}/cancel", headers=H)   # the gate is not this test's


def test_drift_report_tells_the_same_task_from_another():
    """The drift statistics on their own: held-out tickets are close to the training tickets;
    long off-topic prompts are not (length and content both move)."""
    rows = generate(120, seed=3)
    index = TrainingIndex.build([r["instruction"] + "\n\n" + r["input"] for r in rows[:100]])
    same = drift_report(index, [r["instruction"] + "\n\n" + r["input"] for r in rows[100:]])
    other = drift_report(index, [
        f"Write a detailed essay number {i} about the history of medieval agriculture in Europe, "
        "covering crop rotation, the heavy plough, the manor system, famine years, trade fairs, "
        "guilds and the slow change of tools and seasons, with dates and a bibliography." * 2
        for i in range(20)])
    assert same["drifted"] is False and other["drifted"] is True
    assert same["length"]["ks"] < other["length"]["ks"]
    assert same["content"]["nearest_similarity"]["mean"] > other["content"]["nearest_similarity"]["mean"]
    assert other["content"]["novel_prompt_share"] == 1.0
    assert same["content"]["novel_ngram_share"] < other["content"]["novel_ngram_share"]
    assert len(other["reasons"]) == 2

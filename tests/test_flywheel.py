"""The whole flywheel on CPU with the four real services, through the gateway with the OpenAI
SDK: production traffic on an alias (captured for an opted-in key, masked), feedback by
response id, the drift report and the near-duplicate filter against the training version,
review, a new dataset version whose lineage names the captured requests, a retraining job on it
(one call), the job's model as a canary at a weighted share of the alias's live traffic with
zero failed requests, its promotion, and the lineage from the promoted model back to the
captured requests. Then the canary's other paths on the same stack: the shadow mirror, the
automatic rollback of a failing candidate (still zero failed requests), and a key bound to one
alias, with per-key token metering.

Inference serves a tiny local model (``INFERENCE_ENGINE=transformers``: seconds to start, so
the candidate's own engine is cheap); the promotion is the alias flip, not the gate, whose
verdicts (a tiny model trained for one epoch cannot show an uplift) are tested in
tests/test_gateway_promotion.py."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from typer.testing import CliRunner

from tuneloop.cli import app as cli
from tuneloop.examples.support_tickets import generate
from tuneloop.testing.stack import four_services
from tuneloop_gateway.flywheel.drift import TrainingIndex, drift_report

pytestmark = pytest.mark.slow

ADMIN = "tlk-flywheel-admin-key-0123456789abcdef"
INFERENCE_ADMIN = "inference-admin-key-flywheel"
H = {"Authorization": f"Bearer {ADMIN}"}
ALIAS = "support-bot"


def _chat(r: dict) -> dict:
    return {"messages": [{"role": "user", "content": r["instruction"] + "\n\n" + r["input"]},
                         {"role": "assistant", "content": r["output"]}]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_base_dir):
    var = tmp_path_factory.mktemp("flywheel")
    with four_services(var, tiny_base_dir, admin_key=ADMIN, inference_admin_key=INFERENCE_ADMIN,
                       env={"inference": {"INFERENCE_ENGINE": "transformers"},
                            # the canary decides this test's promotion, not the job's gate
                            "gateway": {"GATEWAY_RECONCILE_INTERVAL_S": "0",
                                        "GATEWAY_AUTO_PROMOTE": "false",
                                        "GATEWAY_CAPTURE_MODELS": ALIAS}}) as s:
        r = httpx.post(s["gateway"].url + "/v1/promotions", headers=H,
                       json={"alias": ALIAS, "model": "base", "note": "production starts on base"})
        assert r.status_code == 201, r.text
        yield {**s, "base_dir": tiny_base_dir, "state": {}}


def _wait_capture(gw: str, response_id: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        data = httpx.get(gw + "/v1/captures", headers=H, params={"limit": 500}).json()["data"]
        hit = [c for c in data if c["response_id"] == response_id]
        if hit:
            return hit[0]
        time.sleep(0.2)
    raise AssertionError(f"{response_id} was not captured")


def test_traffic_feedback_review_retrain_canary_promotion_with_lineage(stack):
    gw, model = stack["gateway"].url, ALIAS
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
    mv = _wait_job(gw, job["id"])["model_id"]

    # the new model as a canary: half of the alias's live traffic, zero failed requests
    c = httpx.post(gw + "/v1/canaries", headers=H, timeout=600, json={
        "alias": ALIAS, "model": mv, "weight": 0.5, "max_latency_ratio": 5})
    assert c.status_code == 201, c.text
    canary = c.json()
    assert (canary["status"], canary["stable"], canary["candidate"]) == ("running", "base", mv)
    prompts = [r["instruction"] + "\n\n" + r["input"] for r in rows[64:80]]
    answers = _traffic(sdk, prompts)
    assert [a for a in answers if " <- " in a] == []
    served = [a for a in answers if a == mv]
    assert 0 < len(served) < len(answers), answers   # both arms answered
    live = httpx.get(f"{gw}/v1/canaries/{canary['id']}", headers=H).json()
    cmp_ = live["comparison"]
    assert cmp_["candidate"]["requests"] == len(served), cmp_
    assert cmp_["stable"]["requests"] == len(answers) - len(served)
    assert cmp_["candidate"]["errors"] == cmp_["stable"]["errors"] == 0
    assert cmp_["candidate"]["latency_p95_s"] > 0 and cmp_["stable"]["latency_p95_s"] > 0
    # feedback on a candidate answer reaches the live comparison (captured traffic)
    rated = sdk.chat.completions.create(model=model, max_tokens=8, messages=[
        {"role": "user", "content": prompts[0]}])
    arm = _wait_capture(gw, rated.id)["canary"]
    assert arm["id"] == canary["id"] and arm["arm"] == ("candidate" if rated.model == mv else "stable")
    fb(rated, {"rating": "up"})
    quality = httpx.get(f"{gw}/v1/canaries/{canary['id']}", headers=H).json()["comparison"]["quality"]
    assert quality[arm["arm"]]["up"] == 1 and quality[arm["arm"]]["up_share"] == 1.0

    # promotion while traffic flows: the alias flips to the candidate; no request fails
    during: list = []
    flowing = threading.Thread(target=lambda: during.extend(_traffic(sdk, prompts[:8], workers=2)))
    flowing.start()
    p = httpx.post(f"{gw}/v1/canaries/{canary['id']}/promote", headers=H, timeout=600, json={})
    flowing.join()
    assert p.status_code == 200, p.text
    done = p.json()
    assert done["status"] == "promoted" and done["promotion"]["status"] == "promoted"
    assert done["promotion"]["candidate"] == mv and done["promotion"]["model_id"] == mv
    assert done["promotion"]["evidence"]["canary"]["comparison"]["candidate"]["requests"] > 0
    assert [a for a in during if " <- " in a] == []
    assert {a for a in _traffic(sdk, prompts[:2])} == {mv}   # the alias serves it now

    # lineage: promoted model -> job -> v3 -> its captures + parent v2 -> its captures, whose
    # response ids are the answers the SDK got
    lineage = httpx.get(f"{gw}/v1/models/{mv}", headers=H).json()
    assert lineage["job_id"] == job["id"] and lineage["dataset_id"] == v3["id"]
    assert done["promotion"]["id"] in [d["id"] for d in lineage["promotions"]]
    v3_seen = httpx.get(f"{gw}/v1/datasets/{v3['id']}", headers=H).json()["source"]["lineage"]
    v2_seen = httpx.get(f"{gw}/v1/datasets/{v3_seen['parent_dataset_id']}",
                        headers=H).json()["source"]["lineage"]
    assert v3_seen["responses"] == [extra.id]
    assert set(v2_seen["responses"]) == {up.id, corrected.id, down.id}
    stack["state"].update(mv=mv, key=key, sdk=sdk)


def _wait_job(gw: str, job_id: str) -> dict:
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        job = httpx.get(f"{gw}/v1/jobs/{job_id}", headers=H).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            assert job["status"] == "succeeded", job
            return job
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not finish")


def _traffic(sdk: openai.OpenAI, prompts: list[str], workers: int = 4) -> list:
    """Each prompt once through the alias (every third one streamed), a few at a time: the
    served model of each answer, or the exception the SDK raised (repr, with its cause)."""
    out: list = [None] * len(prompts)

    def one(i: int) -> None:
        try:
            msgs = [{"role": "user", "content": prompts[i]}]
            if i % 3 == 2:
                chunks = list(sdk.chat.completions.create(model=ALIAS, max_tokens=8, stream=True,
                                                          messages=msgs))
                assert chunks and chunks[-1].choices[-1].finish_reason
                out[i] = chunks[0].model
            else:
                out[i] = sdk.chat.completions.create(model=ALIAS, max_tokens=8, messages=msgs).model
        except Exception as exc:  # a failed request is what the test counts (with its cause:
            out[i] = f"{exc!r} <- {exc.__cause__!r}"  # the SDK's "Connection error." hides it)
    for start in range(0, len(prompts), workers):
        batch = [threading.Thread(target=one, args=(i,))
                 for i in range(start, min(start + workers, len(prompts)))]
        for t in batch:
            t.start()
        for t in batch:
            t.join()
    return out


def _admin_inference(stack) -> httpx.Client:
    return httpx.Client(base_url=stack["inference"].url, timeout=600,
                        headers={"Authorization": f"Bearer {INFERENCE_ADMIN}"})


def test_shadow_canary_records_the_candidates_answers_without_returning_them(stack):
    state = stack["state"]
    if "mv" not in state:
        pytest.skip("needs the promoted model of the whole-flywheel test")
    gw, mv, sdk = stack["gateway"].url, state["mv"], state["sdk"]
    started = _cli(gw, "canary", "start", ALIAS, "base", "--shadow")   # the CLI, as an operator
    assert started["mode"] == "shadow" and started["status"] == "running"
    cid = started["id"]
    again = httpx.post(gw + "/v1/canaries", headers=H, json={"alias": ALIAS, "model": "base"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "canary_exists"
    prompts = [f"Subject: order {i} arrived broken\n\nThe box was crushed." for i in range(4)]
    assert _traffic(sdk, prompts) == [mv] * 4          # every answer from the stable model
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        shadows = [c_ for c_ in httpx.get(gw + "/v1/captures", headers=H, params={
            "limit": 500}).json()["data"] if (c_.get("canary") or {}).get("arm") == "shadow"]
        if len(shadows) == 4:
            break
        time.sleep(0.3)
    assert len(shadows) == 4 and {c_["served_model"] for c_ in shadows} == {"base"}
    assert {c_["canary"]["id"] for c_ in shadows} == {cid}
    view = httpx.get(f"{gw}/v1/canaries/{cid}", headers=H).json()
    assert view["comparison"]["shadow"]["requests"] == 4
    assert view["comparison"]["shadow"]["errors"] == 0
    assert view["comparison"]["stable"]["requests"] == 4
    assert _cli(gw, "canary", "show", cid)["comparison"]["shadow"]["requests"] == 4
    rb = _cli(gw, "canary", "rollback", cid, "--reason", "seen enough")
    assert rb["status"] == "rolled_back" and rb["events"][-1]["event"] == "rolled_back"
    assert {c_["id"] for c_ in _cli(gw, "captures", "list", "--limit", "500")["data"]} >= \
        {c_["id"] for c_ in shadows}


def _cli(gw: str, *args: str) -> dict:
    res = CliRunner().invoke(cli, ["--json", *args], env={
        "TUNELOOP_URL": gw, "TUNELOOP_API_KEY": ADMIN, "COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_a_failing_candidate_is_rolled_back_with_zero_failed_requests(stack):
    """The candidate's engine goes away mid-canary: its share of the requests is answered by
    the stable model, and after ``min_requests`` failures the canary rolls itself back."""
    state = stack["state"]
    if "mv" not in state:
        pytest.skip("needs the promoted model of the whole-flywheel test")
    gw, mv, sdk = stack["gateway"].url, state["mv"], state["sdk"]
    with _admin_inference(stack) as inf:
        dep = inf.post("/admin/deployments", params={"wait": "true"}, json={
            "name": "spare", "path": str(stack["base_dir"])}).json()
        assert dep["state"] == "ready", dep
        c = httpx.post(gw + "/v1/canaries", headers=H, json={
            "alias": ALIAS, "model": "spare", "weight": 0.5, "min_requests": 3}).json()
        assert c["status"] == "running", c
        assert inf.delete(f"/admin/deployments/{dep['id']}").status_code == 200
    answers = _traffic(sdk, [f"Subject: refund {i}\n\nWhere is my refund?" for i in range(16)])
    assert answers == [mv] * 16                         # zero failed requests
    view = httpx.get(f"{gw}/v1/canaries/{c['id']}", headers=H).json()
    assert view["status"] == "rolled_back", view
    cand = view["comparison"]["candidate"]
    assert cand["errors"] == cand["fallbacks"] >= 3
    assert "error rate" in view["events"][-1]["detail"]
    metrics = httpx.get(gw + "/metrics").text
    assert 'tuneloop_gateway_canary_requests_total{arm="candidate",outcome="fallback"}' in metrics
    assert 'tuneloop_gateway_canary_decisions_total{reason="limit",status="rolled_back"} 1.0' \
        in metrics


def test_a_key_bound_to_an_alias_and_its_metered_tokens(stack):
    gw = stack["gateway"].url
    made = httpx.post(gw + "/v1/keys", headers=H, json={"name": "tenant-a", "scopes": ["inference"],
                                                        "models": [ALIAS]}).json()
    sdk = openai.OpenAI(base_url=gw + "/v1", api_key=made["key"], max_retries=0, timeout=120)
    msgs = [{"role": "user", "content": "Subject: login fails\n\nI cannot sign in."}]
    out = sdk.chat.completions.create(model=ALIAS, max_tokens=8, messages=msgs)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        sdk.chat.completions.create(model="base", max_tokens=8, messages=msgs)
    assert denied.value.body["code"] == "model_not_allowed"
    streamed = list(sdk.chat.completions.create(model=ALIAS, max_tokens=8, messages=msgs,
                                                temperature=0, stream=True,
                                                stream_options={"include_usage": True}))
    usage = [c.usage for c in streamed if c.usage]
    # the SDK's default: no include_usage. Metered all the same (the vLLM path, where the usage
    # chunk is taken out again: tests/test_tenant_adapters.py)
    plain = list(sdk.chat.completions.create(model=ALIAS, max_tokens=8, messages=msgs,
                                             temperature=0, stream=True))
    assert plain and all(c.choices for c in plain)   # no usage-only chunk it did not ask for
    assert plain[-1].choices[0].finish_reason in ("stop", "length")
    metrics = httpx.get(gw + "/metrics").text
    kid = made["id"]
    assert len(usage) == 1
    want = out.usage.completion_tokens + 2 * usage[0].completion_tokens   # greedy: same answer
    assert f'tuneloop_gateway_key_tokens_total{{key_id="{kid}",kind="completion"}} {float(want)}' \
        in metrics, [m for m in metrics.splitlines() if kid in m]
    assert f'tuneloop_gateway_key_requests_total{{key_id="{kid}"}} 3.0' in metrics   # not the 403
    freed = httpx.patch(f"{gw}/v1/keys/{kid}", headers=H, json={"unbind": True}).json()
    assert freed["models"] is None


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

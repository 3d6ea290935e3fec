"""Through a real gateway process to real OpenAI-compatible engines (vLLM's CPU build, as the
inference service runs it; conftest.py) serving tiny local models: the OpenAI SDK (plain +
streaming), upstream failures, a full eval report of base vs tuned vs damaged, and the gate's
verdict on that real report."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tuneloop.testing.engines import cpu_engine
from tuneloop_gateway.promotion import GateConfig, apply_gate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def admin(gateway):
    with httpx.Client(base_url=gateway.url, timeout=600,
                      headers={"Authorization": f"Bearer {gateway.admin_key}"}) as c:
        yield c


@pytest.fixture(scope="module")
def inference_key(admin):
    r = admin.post("/v1/keys", json={"name": "sdk", "scopes": ["inference"]})
    assert r.status_code == 201
    return r.json()["key"]


def test_openai_sdk_chat_plain_and_streaming(gateway, engines, inference_key):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=inference_key, max_retries=0)
    model = engines["base"].model
    msgs = [{"role": "user", "content": "Summarize this support ticket and classify its urgency."}]
    plain = client.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=0)
    assert plain.object == "chat.completion" and plain.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model=model, messages=msgs, max_tokens=12,
                                                 temperature=0, stream=True))
    assert len(chunks) >= 3 and all(c.object == "chat.completion.chunk" for c in chunks)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain.choices[0].message.content  # greedy: same text either way
    # the same request sent directly to the engine gives the same answer (pass-through)
    direct = openai.OpenAI(base_url=engines["base"].base_url, api_key="x", max_retries=0)
    assert direct.chat.completions.create(model=model, messages=msgs, max_tokens=12,
                                          temperature=0).choices[0].message.content == streamed
    # a wrong key never reaches the engine
    bad = openai.OpenAI(base_url=gateway.url + "/v1", api_key="tlk-nope-000000000000", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=model, messages=msgs, max_tokens=2)


def test_engine_errors_come_back_in_the_envelope(gateway, inference_key):
    h = {"Authorization": f"Bearer {inference_key}"}
    # vLLM lists its model; transformers serve (the fallback) answers 500 text/plain on
    # /v1/models for a pinned local folder: either way the client gets the envelope
    r = httpx.get(gateway.url + "/v1/models", headers=h, timeout=60)
    if r.status_code != 200:
        assert r.status_code == 502 and r.json()["error"]["code"] == "bad_gateway"
    # a 4xx of the engine (wrong model name) keeps its status, wrapped in our envelope
    r = httpx.post(gateway.url + "/v1/chat/completions", headers=h, timeout=60,
                   json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]})
    assert 400 <= r.status_code < 500 and "error" in r.json()


def test_eval_base_vs_tuned_vs_damaged_full_report_and_gate(admin, engines, ticket_rows):
    rows = ticket_rows[260:276]
    targets = [{"name": n, "base_url": engines[n].base_url, "model": engines[n].model, "role": r}
               for n, r in (("base", "base"), ("tuned", "candidate"), ("damaged", "other"))]
    r = admin.post("/v1/evals", json={"name": "tiny", "rows": rows, "targets": targets,
                                      "train_rows": ticket_rows[:40],
                                      "concurrency": 2, "max_tokens": 64, "wait": True})
    assert r.status_code == 200, r.text
    run = r.json()
    assert run["status"] == "succeeded", run["error"]
    rep = run["report"]
    assert rep["task"]["kind"] == "json" and rep["task"]["primary_metric"] == "json_fields"
    assert rep["task"]["fields"] == {"summary": "text", "urgency": "label", "category": "label"}
    # the prompted baseline runs beside the zero-shot base: same model, 3 train rows as examples
    assert [t["name"] for t in rep["targets"]] == ["base", "base_3shot", "tuned", "damaged"]
    kshot = rep["targets"][1]
    assert kshot["role"] == "base_kshot" and kshot["shots"] == 3 and kshot["model"] == engines["base"].model
    assert run["config"]["kshot"]["target"] == "base_3shot" and rep["complete"] and rep["failed_requests"] == []
    m = {t["name"]: t["metrics"] for t in rep["targets"]}
    for name, met in m.items():
        for metric in ("task_score", "exact_match", "json_valid", "rouge1", "rouge2", "rougeL"):
            ci = met[metric]
            assert ci["ci_low"] <= ci["value"] <= ci["ci_high"], (name, metric, ci)
        assert set(met["fields"]) == {"summary", "urgency", "category"}
        assert met["latency_ms"]["p50"] > 0 and met["tokens_per_s"] > 0 and met["errors"] == 0
        if name == "base_3shot":
            assert met["general"] is None  # the few-shot prompt is for the task only
        else:
            assert met["general"]["n"] == rep["n_general"] >= 30
            assert met["general"]["ci_low"] <= met["general"]["value"] <= met["general"]["ci_high"]
    # the k-shot prompt really was sent: the same greedy model answers differently with it
    task_samples = admin.get(f"/v1/evals/{run['id']}/samples", params={"suite": "task", "limit": 100}).json()["data"]
    assert any(x["outputs"]["base_3shot"]["output"] != x["outputs"]["base"]["output"] for x in task_samples)
    assert m["tuned"]["json_valid"]["value"] >= 0.9
    assert m["damaged"]["json_valid"]["value"] == 0.0
    assert m["tuned"]["task_score"]["value"] > m["base"]["task_score"]["value"] + 0.3
    assert m["tuned"]["fields"]["category"]["value"] > m["base"]["fields"]["category"]["value"]
    up = {(c["target"], c["vs"]): c for c in rep["comparisons"]}
    assert up["tuned", "base"]["uplift"]["ci_low"] > 0 and up["damaged", "base"]["uplift"]["value"] <= 0
    assert ("tuned", "base_3shot") in up and "general_drop" not in up["tuned", "base_3shot"]
    assert rep["advice"][0].startswith("Base 'base' scores")
    assert any("prompted with 3 examples" in a for a in rep["advice"])
    assert "tuned" in rep["table"] and "json valid" in rep["table"]
    assert max(len(line) for line in rep["table"].splitlines()) <= 80

    # stored and queryable, with per-example outputs side by side
    again = admin.get(f"/v1/evals/{run['id']}").json()
    assert again["report"] == rep
    assert run["id"] in [e["id"] for e in admin.get("/v1/evals").json()["data"]]
    s = admin.get(f"/v1/evals/{run['id']}/samples", params={"suite": "task", "limit": 5}).json()
    assert s["total"] == len(rows) and len(s["data"]) == 5 and s["has_more"]
    first = s["data"][0]
    assert first["reference"] == rows[0]["output"]
    assert set(first["outputs"]) == {"base", "base_3shot", "tuned", "damaged"}
    assert json.loads(first["outputs"]["tuned"]["output"])["urgency"] in ("high", "medium", "low")
    g = admin.get(f"/v1/evals/{run['id']}/samples", params={"suite": "general", "limit": 1}).json()
    assert g["data"][0]["suite"] == "general" and "correct" in g["data"][0]["outputs"]["base"]

    # the gate on this real report: the tuned model passes, the damaged one is refused
    gate = GateConfig(min_uplift=0.05, min_vs_production=0.0, max_general_drop=0.05,
                      min_json_validity=0.9)
    decision, checks, _ = apply_gate(rep, gate, candidate="tuned", base="base")
    assert decision != "fail", checks
    decision, checks, reasons = apply_gate(rep, gate, candidate="damaged", base="base")
    verdicts = {c["check"]: c["verdict"] for c in checks}
    assert decision == "fail" and verdicts["json_validity"] == "fail"
    assert verdicts["uplift_vs_base"] != "pass"  # 16 rows: 'fail' or, honestly, 'inconclusive'


def test_eval_from_uploaded_file_with_pairwise_judge(admin, engines, ticket_rows):
    lines = "\n".join(json.dumps(r) for r in ticket_rows[280:284]).encode()
    config = {"targets": [{"name": "base", "base_url": engines["base"].base_url, "model": engines["base"].model},
                          {"name": "tuned", "base_url": engines["tuned"].base_url, "model": engines["tuned"].model}],
              "general_suite": False, "max_tokens": 48, "wait": True,
              "judge": {"base_url": engines["tuned"].base_url, "model": engines["tuned"].model,
                        "max_examples": 2}}
    r = admin.post("/v1/evals", files={"file": ("eval.jsonl", lines)}, data={"config": json.dumps(config)})
    assert r.status_code == 200, r.text
    run = r.json()
    assert run["status"] == "succeeded" and run["config"]["source"] == {"file": "eval.jsonl", "rows": 4}
    rep = run["report"]
    assert rep["n_examples"] == 4 and rep["n_general"] == 0
    j = rep["judge"]
    assert j["candidate"] == "tuned" and j["base"] == "base" and j["preference"]["n"] == 2
    assert j["orders"] == ["candidate_first", "base_first"]
    samples = admin.get(f"/v1/evals/{run['id']}/samples").json()["data"]
    judged = [x for x in samples if "judge" in x]
    assert len(judged) == 2 and all(x["judge"]["score"] in (0.0, 0.5, 1.0) for x in judged)
    # keys given for targets are never stored
    assert "api_key" not in json.dumps(run["config"])


def _wait_for_answers(admin, eval_id: str, target: str, n: int) -> None:
    """Poll the run's progress until ``target`` has ``n`` generations done."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        run = admin.get(f"/v1/evals/{eval_id}").json()
        assert run["status"] == "running", f"the run ended before {target} was killed: {run['status']}"
        if run["progress"][target]["done"] >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"{target} never answered")


def test_engine_killed_mid_eval_gives_incomplete_run_and_inconclusive_gate(admin, engines, tiny_models,
                                                                           ticket_rows, tmp_path):
    """A real engine killed (SIGKILL) while it is being evaluated: its remaining requests fail
    after their retries, they are listed and never scored, the run is 'incomplete' and the
    gate on it says 'inconclusive' — never 'rejected'."""
    victim = cpu_engine(tiny_models["tuned"], log_path=tmp_path / "victim.log").start()
    try:
        rows = ticket_rows[200:300]
        targets = [{"name": "base", "base_url": engines["base"].base_url, "model": engines["base"].model},
                   {"name": "victim", "base_url": victim.base_url, "model": victim.model}]
        r = admin.post("/v1/evals", json={"rows": rows, "targets": targets, "general_suite": False,
                                          "kshot": 0, "concurrency": 2, "max_tokens": 48})
        assert r.status_code == 202, r.text
        eval_id = r.json()["id"]
        _wait_for_answers(admin, eval_id, "victim", 1)
        victim.kill()
        run = admin.get(f"/v1/evals/{eval_id}").json()
        while run["status"] == "running":
            time.sleep(0.5)
            run = admin.get(f"/v1/evals/{eval_id}").json()
    finally:
        victim.stop()
    assert run["status"] == "incomplete", run["error"]
    rep = run["report"]
    by = {t["name"]: t for t in rep["targets"]}
    assert by["base"]["status"] == "ok" and by["victim"]["status"] in ("incomplete", "failed")
    failed = rep["failed_requests"]
    assert rep["complete"] is False and rep["n_failed_requests"] == len(failed) > 0
    assert {f["target"] for f in failed} == {"victim"}
    assert any(f["attempts"] > 1 for f in failed)  # retried before giving up
    assert all(f["error"].startswith(("unreachable", "target down", "timeout", "HTTP 5")) for f in failed)
    answered = len(rows) - len(failed)
    # failed generations are not scored as wrong answers: the victim's metrics cover its answers only
    assert by["victim"]["metrics"]["task_score"]["n"] == answered
    comp = next(c for c in rep["comparisons"] if c["target"] == "victim")
    assert comp["uplift"]["n"] == answered
    assert any("failed after retries" in a for a in rep["advice"])
    samples = admin.get(f"/v1/evals/{eval_id}/samples", params={"limit": 500}).json()["data"]
    lost = [x for x in samples if x["outputs"]["victim"]["error"]]
    assert len(lost) == len(failed) and all(x["outputs"]["victim"]["task_score"] is None for x in lost)
    gate = GateConfig(min_uplift=0.05, min_vs_production=0.0, max_general_drop=0.05, min_json_validity=0.9)
    decision, checks, reasons = apply_gate(rep, gate, candidate="victim", base="base")
    assert decision == "inconclusive"
    assert checks[0]["check"] == "all_requests_answered" and checks[0]["value"] == len(failed)


def test_replay_rows_are_the_base_models_own_answers_to_prompts_outside_the_suite(admin, engines):
    from tuneloop_gateway.evals.report import load_general_suite

    r = admin.post("/v1/replay-rows", json={"model": engines["base"].model, "n": 6, "max_tokens": 24})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["asked"] == 6 and len(out["data"]) + len(out["dropped"]) == 6
    suite = {it["question"] for it in load_general_suite()}
    for row in out["data"]:
        assert set(row) == {"instruction", "input", "output"} and row["output"].strip()
        assert row["instruction"].removesuffix(" Answer in a few words.") not in suite
    assert all(d["reason"] for d in out["dropped"])
    # greedy: asked again, the base gives the same rows
    assert admin.post("/v1/replay-rows", json={"model": engines["base"].model, "n": 6,
                                               "max_tokens": 24}).json()["data"] == out["data"]
    bad = admin.post("/v1/replay-rows", json={"model": "no-such-model", "n": 2})
    assert bad.status_code == 503 and bad.json()["error"]["code"] == "replay_model_unavailable"

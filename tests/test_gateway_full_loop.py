"""The whole loop through the gateway with all four real services: the official OpenAI SDK
uploads a training file and creates a fine-tuning job; the trainer trains a LoRA on a tiny local
base (CPU), merges and exports it, calls the gateway back; the gateway deploys the candidate on
inference, evaluates base vs candidate on the held-out file + general suite, applies the gate,
and records the decision, visible in the model version's lineage."""

from __future__ import annotations

import io
import json
import time

import httpx
import openai
import pytest

from tuneloop.testing.stack import four_services

pytestmark = pytest.mark.slow

ADMIN = "tlk-loop-admin-key-0123456789abcdef"
INFERENCE_ADMIN = "inference-admin-key-loop"


def _chat(r: dict) -> dict:
    return {"messages": [{"role": "user", "content": r["instruction"] + "\n\n" + r["input"]},
                         {"role": "assistant", "content": r["output"]}]}


@pytest.fixture(scope="module")
def loop(tmp_path_factory, tiny_base_dir):
    var = tmp_path_factory.mktemp("loop")
    with four_services(var, tiny_base_dir, admin_key=ADMIN, inference_admin_key=INFERENCE_ADMIN, env={
            "gateway": {"GATEWAY_RECONCILE_INTERVAL_S": "5", "GATEWAY_EVAL_MAX_TOKENS": "64",
                        "GATEWAY_EVAL_CONCURRENCY": "2", "GATEWAY_GENERAL_SUITE_SIZE": "40"}}) as s:
        yield {**s, "var": var, "base_dir": tiny_base_dir}


def test_openai_fine_tuning_through_gateway_then_gated_promotion(loop, ticket_rows):
    gw = loop["gateway"].url
    sdk = openai.OpenAI(base_url=gw + "/v1", api_key=ADMIN, max_retries=0, timeout=600)
    train = "\n".join(json.dumps(_chat(r)) for r in ticket_rows[:240]).encode()
    valid = "\n".join(json.dumps(_chat(r)) for r in ticket_rows[284:300]).encode()
    f_train = sdk.files.create(file=("train.jsonl", io.BytesIO(train)), purpose="fine-tune")
    f_valid = sdk.files.create(file=("valid.jsonl", io.BytesIO(valid)), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(
        model=str(loop["base_dir"]), training_file=f_train.id, validation_file=f_valid.id,
        hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 10,
                         "max_seq_length": 256, "warmup_steps": 2, "logging_steps": 2},
        extra_body={"tuneloop": {"backend": "peft",
                                 "export": {"verify_prompts": 2, "verify_max_new_tokens": 16}}})
    assert job.id in [j.id for j in sdk.fine_tuning.jobs.list().data]
    admin_h = {"Authorization": f"Bearer {ADMIN}"}
    # the article: evaluate the base first (on the job's eval split, while the job trains)
    dataset_id = httpx.get(f"{gw}/v1/jobs/{job.id}", headers=admin_h).json()["dataset_id"]
    base_eval = httpx.post(f"{gw}/v1/evals", headers=admin_h, timeout=900, json={
        "dataset_id": dataset_id, "general_suite": True, "wait": True,
        "targets": [{"name": "base", "model": "base", "role": "base"}]}).json()
    assert base_eval["status"] == "succeeded", base_eval
    assert base_eval["report"]["reused_generations"] == {}
    assert base_eval["config"]["targets"][0]["weights"].startswith("base@")
    # an inference key cannot create jobs
    inf = httpx.post(gw + "/v1/keys", json={"name": "i", "scopes": ["inference"]},
                     headers={"Authorization": f"Bearer {ADMIN}"}).json()["key"]
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=gw + "/v1", api_key=inf, max_retries=0).fine_tuning.jobs.list()

    deadline = time.monotonic() + 1500
    while time.monotonic() < deadline:
        job = sdk.fine_tuning.jobs.retrieve(job.id)
        if job.status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(2)
    assert job.status == "succeeded", job
    native = httpx.get(f"{gw}/v1/jobs/{job.id}", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    model_id = native["model_id"]
    assert native["callback_url"].endswith("/internal/training-events")

    # the trainer's callback (or the reconcile loop) makes the gateway decide, with evidence
    decision = None
    while time.monotonic() < deadline:
        found = httpx.get(f"{gw}/v1/promotions", params={"job_id": job.id},
                          headers={"Authorization": f"Bearer {ADMIN}"}).json()["data"]
        if found and found[0]["status"] in ("promoted", "rejected", "inconclusive", "failed"):
            decision = found[0]
            break
        time.sleep(2)
    assert decision is not None, "no gate decision"
    # 16 held-out rows may be too few to decide on intervals: inconclusive is an honest verdict
    assert decision["status"] in ("promoted", "rejected", "inconclusive"), decision
    assert decision["model_id"] == model_id and decision["eval_id"]
    checks = {c["check"] for c in decision["evidence"]["checks"]}
    assert {"uplift_vs_base", "uplift_vs_base_kshot", "general_suite_drop", "json_validity"} <= checks
    # the CPU engine (vLLM) attached the candidate as a runtime LoRA adapter of the served base:
    # no second engine for the evaluation
    swap = decision["evidence"]["swap"]
    assert swap["candidate_via"] == "adapter" and swap["adapter_of"] == "base", swap
    run = httpx.get(f"{gw}/v1/evals/{decision['eval_id']}",
                    headers={"Authorization": f"Bearer {ADMIN}"}).json()
    print(f"gate decision: {decision['status']}\n" + "\n".join(decision["reasons"]) + "\n"
          + run["report"]["table"])  # shown with -s: what the tiny LoRA achieved
    assert run["report"]["n_examples"] == 16 and run["report"]["advice"][0].startswith("Base")
    # the gate did not generate the base (zero-shot and k-shot) again: same weights, prompts,
    # eval set and settings (greedy)
    kshot = base_eval["config"]["kshot"]["target"]
    assert kshot == run["config"]["kshot"]["target"] and kshot.startswith("base_")
    assert run["report"]["reused_generations"] == {"base": base_eval["id"], kshot: base_eval["id"]}
    assert run["report"]["regenerated"] == {"base": 0, kshot: 0}

    def outputs(eval_id: str, target: str) -> list:
        data = httpx.get(f"{gw}/v1/evals/{eval_id}/samples", params={"limit": 500},
                         headers=admin_h).json()["data"]
        return [(x["suite"], x["index"], x["outputs"][target]["output"]) for x in data
                if target in x["outputs"]]  # the k-shot baseline answers the task only

    assert outputs(run["id"], "base") == outputs(base_eval["id"], "base")
    cand = next(t for t in run["report"]["targets"] if t["role"] == "candidate")
    assert cand["metrics"]["generations"] == 16 + 40
    assert "weights" in next(t for t in run["config"]["targets"] if t["name"] == cand["name"])
    # asked not to reuse, the base is generated afresh (and scores the same: greedy)
    fresh = httpx.post(f"{gw}/v1/evals", headers=admin_h, timeout=900, json={
        "dataset_id": dataset_id, "general_suite": True, "wait": True, "reuse_generations": False,
        "targets": [{"name": "base", "model": "base", "role": "base"}]}).json()
    assert fresh["status"] == "succeeded" and fresh["report"]["reused_generations"] == {}
    assert outputs(fresh["id"], kshot) == outputs(base_eval["id"], kshot)  # greedy: same answers
    assert fresh["config"]["reuse_generations"] is False
    # lineage through the gateway carries the decision
    lineage = httpx.get(f"{gw}/v1/models/{model_id}", headers={"Authorization": f"Bearer {inf}"}).json()
    assert lineage["dataset_id"] == native["dataset_id"]
    assert [p["id"] for p in lineage["promotions"]] == [decision["id"]]
    if decision["status"] == "promoted":
        out = openai.OpenAI(base_url=gw + "/v1", api_key=inf, max_retries=0).chat.completions.create(
            model="production", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert out.choices[0].message is not None

"""Real jobs end to end: real dataset + trainer processes on real ports, real job processes
training a tiny local model with the peft backend on CPU (marked slow)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import pytest

from trainer_testlib import (FAST_EXPORT, FAST_HP, Receiver, Stack, events, wait_event, wait_for,
                             wait_status)

pytestmark = pytest.mark.slow


def _create(url: str, dataset_id: str, base: Path, **kw) -> dict:
    body = {"dataset_id": dataset_id, "base_model": str(base), "backend": "peft",
            "hyperparameters": FAST_HP, "export": FAST_EXPORT, **kw}
    r = httpx.post(f"{url}/v1/jobs", json=body, timeout=60)
    assert r.status_code == 201, r.text
    return r.json()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


def test_job_end_to_end(stack: Stack, tiny_base_dir: Path, small_dataset: str, receiver: Receiver):
    t = stack.trainer("e2e")
    job = _create(t.url, small_dataset, tiny_base_dir, callback_url=receiver.url, suffix="tickets")
    assert job["status"] == "queued" and job["model_id"] is None
    ds = httpx.get(f"{stack.dataset.url}/v1/datasets/{small_dataset}").json()
    assert job["id"] in ds["in_use_by"]  # leased while the job exists

    done = wait_status(t.url, job["id"])
    assert done["status"] == "succeeded", done["error"]
    evs = events(t.url, job["id"])
    states = [e["data"]["status"] for e in evs if e["type"] == "state"]
    assert states == ["queued", "running", "succeeded"]
    types = [e["type"] for e in evs]
    for needed in ("train_begin", "metrics", "eval", "checkpoint", "train_end", "export",
                   "export_check", "done"):
        assert needed in types, needed
    assert [e["data"]["code"] for e in evs if e["type"] == "warning"][:1] == ["too_few_rows"]
    losses = [e["data"]["loss"] for e in evs if e["type"] == "metrics"]
    assert len(losses) >= 4 and losses[-1] < losses[0] * 0.8, losses  # it learns
    m = [e["data"] for e in evs if e["type"] == "metrics"][-1]
    assert m["total_steps"] == 24 and m["tokens_per_s"] > 0 and m["eta_s"] is not None
    ckpts = [e["data"]["name"] for e in evs if e["type"] == "checkpoint"]
    assert ckpts == ["checkpoint-12", "checkpoint-24"]  # one per epoch

    mv = httpx.get(f"{t.url}/v1/models/{done['model_id']}").json()
    assert mv["job_id"] == job["id"] and mv["dataset_id"] == small_dataset
    assert mv["base_model"] == str(tiny_base_dir) and len(mv["base_revision"]["sha256"]) == 64
    assert mv["config"]["hyperparameters"]["learning_rate"] == FAST_HP["learning_rate"]
    eval_evs = [e["data"] for e in evs if e["type"] == "eval"]
    best = min(eval_evs, key=lambda d: d["eval_loss"])
    assert mv["metrics"]["best_eval_loss"] == best["eval_loss"]
    assert mv["metrics"]["best_checkpoint"] == f"checkpoint-{best['step']}"
    assert mv["metrics"]["final_train_loss"] < mv["metrics"]["first_train_loss"]
    check = next(c for c in mv["export_checks"] if c["kind"] == "merged_vs_trained")
    assert check["passed"] and check["prompts"] == 2 and check["decisive_tokens"] > 0
    plan = next(e["data"] for e in evs if e["type"] == "plan")  # defaults chosen, with reasons
    chosen = {c["setting"] for c in plan["chosen"]}
    assert "torch_threads" in chosen and "learning_rate" not in chosen  # explicit setting wins
    assert mv["metrics"]["train_tokens_per_s"] > 0
    merged = stack.artifacts / mv["artifacts"]["merged"]["key"]
    assert mv["artifacts"]["merged"]["bytes"] > 0 and (stack.artifacts / mv["artifacts"]["adapter"]["key"]
                                                       / "adapter_config.json").exists()
    assert {"model.safetensors", "tokenizer.json", "generation_config.json", "config.json"} <= \
        {p.name for p in merged.iterdir()}
    assert (stack.artifacts / "jobs" / job["id"] / "checkpoints").is_dir()

    # the merged model reloads with plain transformers and answers
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(merged)
    tok = AutoTokenizer.from_pretrained(merged)
    assert model.dtype == torch.bfloat16 and tok.chat_template
    ids = tok.apply_chat_template([{"role": "user", "content": "Summarize this support ticket and "
                                    "classify its urgency.\n\nSubject: Charged twice"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]

    # callback delivered (after one 503: retried), listing for reconciliation, lease released
    wait_for(lambda: receiver.bodies, 30, what="callback")
    assert receiver.bodies == [{"event": "training_job.succeeded", "job_id": job["id"],
                                "model_id": done["model_id"]}]
    cb = wait_event(t.url, job["id"], "callback")["data"]
    assert cb["delivered"] and cb["attempts"] == 2
    evs = events(t.url, job["id"])
    listed = httpx.get(f"{t.url}/v1/jobs", params={"status": "succeeded"}).json()["data"]
    assert [j["id"] for j in listed] == [job["id"]]
    assert job["id"] not in httpx.get(f"{stack.dataset.url}/v1/datasets/{small_dataset}").json()["in_use_by"]
    metrics = httpx.get(f"{t.url}/metrics").text
    assert 'tuneloop_trainer_jobs{state="succeeded"} 1.0' in metrics
    assert 'tuneloop_trainer_jobs_finished_total{state="succeeded"} 1.0' in metrics
    assert "tuneloop_trainer_queue_depth 0.0" in metrics

    # SSE replays every event in order and ends after the final state
    with httpx.stream("GET", f"{t.url}/v1/jobs/{job['id']}/events/stream", timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    streamed = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert [e["seq"] for e in streamed] == [e["seq"] for e in events(t.url, job["id"])]
    assert json.loads(lines[-1][6:]) == {"status": "succeeded"}
    page = httpx.get(f"{t.url}/v1/jobs/{job['id']}/events", params={"after": 2, "limit": 3}).json()
    assert [e["seq"] for e in page["data"]] == [3, 4, 5] and page["has_more"]

    # the typed client other services use
    async def through_client() -> None:
        from tuneloop.clients.base import ServiceError
        from tuneloop.clients.trainer import TrainerClient

        async with TrainerClient(t.url) as tr:
            assert (await tr.wait(job["id"], timeout=5))["model_id"] == done["model_id"]
            assert [j["id"] for j in (await tr.list_jobs(status="succeeded"))["data"]] == [job["id"]]
            assert (await tr.get_model(done["model_id"]))["job_id"] == job["id"]
            streamed = [ev["seq"] async for ev in tr.stream_events(job["id"], after=5)]
            assert streamed == [e["seq"] for e in evs if e["seq"] > 5]
            with pytest.raises(ServiceError) as exc:
                await tr.create_job("ds-0123456789abcdef", str(tiny_base_dir))
            assert exc.value.status == 404 and exc.value.code == "dataset_not_found"

    import asyncio

    asyncio.run(through_client())

    # a finished job can be deleted; its model version stays
    assert httpx.delete(f"{t.url}/v1/jobs/{job['id']}").json()["deleted"] is True
    assert httpx.get(f"{t.url}/v1/jobs/{job['id']}").status_code == 404
    assert httpx.get(f"{t.url}/v1/models/{done['model_id']}").status_code == 200


def test_openai_sdk_fine_tuning(stack: Stack, tiny_base_dir: Path, ticket_rows, tmp_path: Path):
    from openai import ConflictError, OpenAI

    t = stack.trainer("openai")
    client = OpenAI(base_url=f"{t.url}/v1", api_key="unused", max_retries=0)
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ticket_rows[60:100]))
    f = client.files.create(file=path.open("rb"), purpose="fine-tune")
    assert f.id.startswith("file-") and f.purpose == "fine-tune" and f.bytes == path.stat().st_size
    assert [x.id for x in client.files.list().data] == [f.id]
    vpath = tmp_path / "valid.jsonl"
    vpath.write_text("".join(json.dumps(r) + "\n" for r in ticket_rows[100:110]))
    v = client.files.create(file=vpath.open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        training_file=f.id, validation_file=v.id, model=str(tiny_base_dir), suffix="sdk", seed=7,
        hyperparameters={"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 10,
                         "max_seq_length": 256, "warmup_steps": 2, "logging_steps": 2},
        extra_body={"tuneloop": {"backend": "peft", "export": {**FAST_EXPORT, "gguf": ["q8_0"]}}})
    assert job.status in ("queued", "running") and job.training_file == f.id and job.seed == 7
    assert job.validation_file == v.id

    def finished():
        j = client.fine_tuning.jobs.retrieve(job.id)
        return j if j.status in ("succeeded", "failed", "cancelled") else None

    j = wait_for(finished, 300, what="openai job")
    assert j.status == "succeeded", j.error
    assert j.fine_tuned_model and j.fine_tuned_model.startswith("mv-")
    assert j.hyperparameters.n_epochs == 1 and j.hyperparameters.batch_size == 4
    assert job.id in [x.id for x in client.fine_tuning.jobs.list(limit=10).data]
    evs = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert evs[0].message.startswith("model version") and evs[-1].message == "job validated and queued"
    assert any(e.type == "metrics" for e in evs)
    older = client.fine_tuning.jobs.list_events(job.id, after=evs[1].id, limit=2).data
    assert [e.id for e in older] == [e.id for e in evs[2:4]]
    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert ckpts and ckpts[0].fine_tuning_job_id == job.id and ckpts[0].metrics.valid_loss is not None
    mv = httpx.get(f"{t.url}/v1/models/{j.fine_tuned_model}").json()
    assert (mv["metrics"]["train_rows"], mv["metrics"]["eval_rows"]) == (40, 10)  # validation_file = eval
    gguf = next(c for c in mv["export_checks"] if c["kind"] == "gguf:q8_0")
    assert gguf["passed"] is False and "GGUF converter not available" in gguf["detail"]
    assert mv["artifacts"]["gguf"] == [{"quant": "q8_0", "error": gguf["detail"]}]
    assert not (stack.artifacts / "models" / j.fine_tuned_model / "gguf").exists()  # never faked
    with pytest.raises(ConflictError):
        client.fine_tuning.jobs.cancel(job.id)  # 409: already finished


def test_crash_fails_only_that_job_then_cancel(stack: Stack, tiny_base_dir: Path, small_dataset: str):
    t = stack.trainer("crash")
    long_hp = {**FAST_HP, "num_train_epochs": 40}
    a = _create(t.url, small_dataset, tiny_base_dir, hyperparameters=long_hp)
    b = _create(t.url, small_dataset, tiny_base_dir, hyperparameters=long_hp)
    start = wait_event(t.url, a["id"], "process_start")
    wait_event(t.url, a["id"], "metrics")
    assert httpx.get(f"{t.url}/v1/jobs/{b['id']}").json()["status"] == "queued"  # FIFO, one at a time
    os.kill(start["data"]["pid"], signal.SIGKILL)  # crash/OOM-kill of the job process
    failed = wait_status(t.url, a["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "out_of_memory_or_killed" and "SIGKILL" in failed["error"]["message"]
    assert httpx.get(f"{t.url}/health").status_code == 200  # the service stays up

    running = wait_status(t.url, b["id"], ("running",))
    assert running["status"] == "running"
    q = _create(t.url, small_dataset, tiny_base_dir)  # queued behind b: cancels at once
    c = httpx.post(f"{t.url}/v1/jobs/{q['id']}/cancel").json()
    assert c["status"] == "cancelled" and c["started_at"] is None
    b_pid = wait_event(t.url, b["id"], "process_start")["data"]["pid"]
    r = httpx.post(f"{t.url}/v1/jobs/{b['id']}/cancel")
    assert r.status_code == 200 and r.json()["cancel_requested"] is True
    cancelled = wait_status(t.url, b["id"])
    assert cancelled["status"] == "cancelled" and cancelled["model_id"] is None
    wait_for(lambda: not _alive(b_pid), 15, what="job process gone")
    assert httpx.post(f"{t.url}/v1/jobs/{b['id']}/cancel").json()["error"]["code"] == "job_not_cancellable"
    assert [e["type"] for e in events(t.url, q["id"])] == ["state", "state"]  # never ran


def test_restart_resumes_from_checkpoint(stack: Stack, tiny_base_dir: Path, small_dataset: str):
    t = stack.trainer("resume")
    hp = {**FAST_HP, "num_train_epochs": 1, "max_steps": 12, "eval_strategy": "steps",
          "eval_steps": 4, "early_stopping_patience": 0}
    job = _create(t.url, small_dataset, tiny_base_dir, hyperparameters=hp)
    first = wait_event(t.url, job["id"], "checkpoint")
    pid = wait_event(t.url, job["id"], "process_start")["data"]["pid"]
    t.stop()  # service stops mid-training; its job process goes with it
    wait_for(lambda: not _alive(pid), 30, what="job process stopped with the service")
    t.start()  # same data dir and DB: the job is re-queued and resumes
    done = wait_status(t.url, job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2
    evs = events(t.url, job["id"])
    requeued = [e for e in evs if e["type"] == "state" and e["data"].get("reason") == "service_restart"]
    assert len(requeued) == 1
    resumed = [e["data"] for e in evs if e["type"] == "resumed"]
    assert resumed and int(resumed[0]["checkpoint"].split("-")[1]) >= first["data"]["step"]
    begins = [e["data"]["step"] for e in evs if e["type"] == "train_begin"]
    assert begins[0] == 0 and begins[-1] >= first["data"]["step"]  # did not start over
    assert [e["data"]["name"] for e in evs if e["type"] == "checkpoint"][-1] == "checkpoint-12"
    assert httpx.get(f"{t.url}/v1/models/{done['model_id']}").json()["metrics"]["global_step"] == 12


def test_dry_run_estimates_without_starting(stack: Stack, tiny_base_dir: Path, small_dataset: str):
    """Know before you spend: rows, tokens, the settings the job would choose (with reasons),
    steps, predicted peak memory and time, whether it fits — and no job."""
    t = stack.trainer("dry")
    body = {"dataset_id": small_dataset, "base_model": str(tiny_base_dir), "backend": "peft",
            "hyperparameters": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2},
            "dry_run": True}
    r = httpx.post(f"{t.url}/v1/jobs", json=body, timeout=120)
    assert r.status_code == 200, r.text
    est = r.json()
    assert est["object"] == "training_job.estimate" and est["backend"] == "peft"
    assert est["rows"] == {"train": 48, "eval": 12} and est["tokens"]["train"] > 48 * 20
    assert est["steps"]["per_epoch"] == 6 and est["steps"]["total"] == 12  # 48 rows / 8, 2 epochs
    chosen = {c["setting"]: c for c in est["chosen"]}
    assert chosen["num_train_epochs"]["value"] == 2 and "CPU" in chosen["num_train_epochs"]["why"]
    assert "per_device_train_batch_size" not in chosen  # explicit settings win
    assert est["hyperparameters"]["per_device_train_batch_size"] == 4
    assert est["memory"]["fits"] is True and est["memory"]["peak_bytes"] > 0
    assert est["time"]["train_seconds"] > 0 and est["time"]["basis"]
    assert httpx.get(f"{t.url}/v1/jobs").json()["data"] == []  # nothing queued
    bad = httpx.post(f"{t.url}/v1/jobs", json={**body, "dataset_id": "ds-0123456789abcdef"}, timeout=60)
    assert bad.status_code == 404 and bad.json()["error"]["code"] == "dataset_not_found"

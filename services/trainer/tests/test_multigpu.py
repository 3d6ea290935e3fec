"""Multi-GPU jobs: the torchrun launch command, GPU hand-out, validation (fast), and a real
2-process DDP job on CPU over gloo (slow): it finishes, exports a merged model that reloads,
and only rank 0 reported."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tuneloop.storage import ArtifactStore
from tuneloop_trainer.app import create_app
from tuneloop_trainer.executors.local import LocalExecutor
from tuneloop_trainer.launch import job_command, pick_gpus
from tuneloop_trainer.settings import TrainerSettings
from tuneloop_trainer.training import JobError, ddp_options, multi_gpu_backend
from trainer_testlib import FAST_EXPORT, FAST_HP, Stack, events, wait_for, wait_status

JOB = "job-0123456789abcdef"


def test_launch_command_is_torchrun_only_for_several_gpus():
    assert job_command("py", JOB, "/a") == ["py", "-m", "tuneloop_trainer.run_job", JOB, "--store", "/a"]
    assert job_command("py", JOB, "/a", gpus=4, parent_pid=7) == [
        "py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
        "-m", "tuneloop_trainer.run_job", JOB, "--store", "/a", "--parent-pid", "7"]
    with pytest.raises(ValueError):
        job_command("py", JOB, "/a", gpus=0)


def test_gpu_pool_hand_out():
    assert pick_gpus(["0", "1", "2", "3"], {"1"}, 2) == ["0", "2"]
    assert pick_gpus(["0", "1", "2", "3"], {"1"}, 3) == ["0", "2", "3"]
    assert pick_gpus(["0", "1"], {"1"}, 2) is None
    assert pick_gpus(["3", "2"], set(), 1) == ["3"]  # pool order, not numeric


def test_backend_and_ddp_options_per_world_size():
    assert multi_gpu_backend("auto", 1) == "auto" and multi_gpu_backend("unsloth", 1) == "unsloth"
    assert multi_gpu_backend("auto", 2) == "peft" and multi_gpu_backend("peft", 8) == "peft"
    with pytest.raises(JobError) as e:
        multi_gpu_backend("unsloth", 2)
    assert e.value.code == "multi_gpu_unsupported"
    assert ddp_options(1, True) == {}
    assert ddp_options(2, True) == {"ddp_backend": "nccl", "ddp_find_unused_parameters": False}
    assert ddp_options(2, False) == {"ddp_backend": "gloo", "use_cpu": True,
                                     "ddp_find_unused_parameters": False}


def test_local_executor_starts_torchrun_with_its_own_gpus(tmp_path: Path):
    """A 2-GPU job gets two GPUs of the pool in CUDA_VISIBLE_DEVICES and runs two ranks under
    torchrun (each fails here: no spec.json); the GPUs come back when it ends."""
    wrapper = tmp_path / "python"  # records what the executor launched, then runs it
    wrapper.write_text(f'#!/bin/sh\necho "$CUDA_VISIBLE_DEVICES|$*" >> {tmp_path}/calls\n'
                       f'exec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    ex = LocalExecutor(TrainerSettings(data_dir=tmp_path, gpu_ids=["0", "1", "2"],
                                       job_python=str(wrapper)),
                       ArtifactStore(str(tmp_path / "store")))

    async def scenario() -> None:
        a = await ex.start("job-00000000000000m1", 2)
        assert a["gpu"] == "0,1" and a["gpus"] == 2
        calls = wait_for(lambda: (tmp_path / "calls").is_file() and
                         (tmp_path / "calls").read_text().splitlines(), 30, what="launch")
        assert calls[0].startswith("0,1|-m torch.distributed.run --standalone --nproc_per_node=2 "
                                   "-m tuneloop_trainer.run_job job-00000000000000m1 --store ")
        assert ex.free_gpus() == 1
        with pytest.raises(RuntimeError, match="no free GPU"):
            await ex.start("job-00000000000000m2", 2)
        b = await ex.start("job-00000000000000m3", 1)
        assert b["gpu"] == "2" and ex.free_gpus() == 0
        end = None
        for _ in range(1200):
            end = end or await ex.poll("job-00000000000000m1", a)
            if end is not None:
                break
            await asyncio.sleep(0.2)
        assert end is not None and end.returncode != 0
        log = ex.log_path("job-00000000000000m1").read_text()
        assert log.count("spec.json") >= 2  # both ranks ran the entrypoint
        assert ex.free_gpus() == 2  # its two are back; the 1-GPU job (not polled yet) holds one
        await ex.close()

    asyncio.run(scenario())


@pytest.fixture
def client(stack: Stack, tmp_path: Path) -> Iterator[TestClient]:
    s = TrainerSettings(data_dir=tmp_path / "var", artifact_url=str(stack.artifacts),
                        dataset_url=stack.dataset.url, log_json=False, log_level="WARNING",
                        gpu_ids=["0", "1"])
    with TestClient(create_app(s)) as c:
        yield c


def _err(resp, status: int, code: str, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] == code and (param is None or err["param"] == param), err
    return err


def test_gpus_validation(client: TestClient, tiny_random_dir: Path, small_dataset: str):
    body = {"dataset_id": small_dataset, "base_model": str(tiny_random_dir), "backend": "peft",
            "hyperparameters": FAST_HP}
    for bad in (0, -1, 65, "two", 1.5):
        _err(client.post("/v1/jobs", json={**body, "gpus": bad}), 400, "invalid_request", "gpus")
    _err(client.post("/v1/jobs", json={**body, "gpus": 2, "backend": "unsloth"}), 400,
         "multi_gpu_unsupported", "backend")
    _err(client.post("/v1/jobs", json={**body, "gpus": 3}), 422, "not_enough_gpus", "gpus")
    assert client.get("/v1/jobs").json()["data"] == []  # nothing was queued


def test_gpus_validation_openai_surface(client: TestClient, tiny_random_dir: Path, stack: Stack):
    up = client.post("/v1/files", files={"file": ("t.jsonl", _rows_jsonl(40))},
                     data={"purpose": "fine-tune"})
    assert up.status_code in (200, 201), up.text
    ft = {"model": str(tiny_random_dir), "training_file": up.json()["id"]}
    _err(client.post("/v1/fine_tuning/jobs", json={**ft, "tuneloop": {"gpus": "2"}}), 400,
         "invalid_gpus", "gpus")
    _err(client.post("/v1/fine_tuning/jobs", json={**ft, "tuneloop": {"gpus": 2, "backend": "unsloth"}}),
         400, "multi_gpu_unsupported", "backend")
    _err(client.post("/v1/fine_tuning/jobs", json={**ft, "tuneloop": {"gpus": 4}}), 422,
         "not_enough_gpus", "gpus")


def _rows_jsonl(n: int) -> bytes:
    import json

    rows = [{"messages": [{"role": "user", "content": f"Ticket {i}: printer {i % 7} jams"},
                          {"role": "assistant", "content": f"urgency: {'high' if i % 2 else 'low'}"}]}
            for i in range(n)]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.mark.slow
def test_two_process_ddp_job_on_cpu(stack: Stack, tiny_base_dir: Path, small_dataset: str):
    """Real torchrun, 2 ranks, gloo: the job finishes, half the optimizer steps of one process
    (each rank sees half of every epoch), one writer of events, merged model reloads."""
    t = stack.trainer("ddp", TRAINER_JOB_ENV='{"OMP_NUM_THREADS": "1"}')
    body = {"dataset_id": small_dataset, "base_model": str(tiny_base_dir), "backend": "auto",
            "gpus": 2, "hyperparameters": {**FAST_HP, "num_train_epochs": 1},
            "export": FAST_EXPORT}
    r = httpx.post(f"{t.url}/v1/jobs", json=body, timeout=60)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["gpus"] == 2
    done = wait_status(t.url, job["id"], timeout=900)
    assert done["status"] == "succeeded", (done["error"], (stack.artifacts / "jobs" / job["id"] /
                                                           "process.log").read_text()[-3000:])
    assert done["resolved_backend"] == "peft"  # auto -> peft under DDP
    evs = events(t.url, job["id"])
    types = [e["type"] for e in evs]
    starts = [e["data"] for e in evs if e["type"] == "process_start"]
    assert len(starts) == 1 and starts[0]["rank"] == 0 and starts[0]["world_size"] == 2
    for once in ("train_begin", "train_end", "export", "done"):
        assert types.count(once) == 1, (once, types)
    assert "error" not in types
    running = next(e["data"] for e in evs if e["type"] == "state" and e["data"]["status"] == "running")
    assert running["gpus"] == 2
    # 48 train rows, batch 4: 12 steps/epoch in one process; 6 per rank with 2 ranks
    begin = next(e["data"] for e in evs if e["type"] == "train_begin")
    assert begin["total_steps"] == 6
    assert [e["data"]["name"] for e in evs if e["type"] == "checkpoint"] == ["checkpoint-6"]
    end = next(e["data"] for e in evs if e["type"] == "train_end")
    # really DDP (gradients all-reduced), not two processes each training half the data alone
    assert end["world_size"] == 2 and end["parallel"] == "DistributedDataParallel"
    # tokens/s counts both ranks: (about) every train row's tokens, not one rank's half
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base_dir)
    train = load_from_disk(str(stack.artifacts / "datasets" / small_dataset / "hf"))["train"]

    def n_tokens(messages: list) -> int:
        ids = tok.apply_chat_template(messages, tokenize=True)
        return min(len(ids["input_ids"] if hasattr(ids, "keys") else ids), FAST_HP["max_seq_length"])

    expected = sum(n_tokens(r["messages"]) for r in train)
    assert 0.9 * expected <= end["num_tokens"] <= 1.1 * expected, (end["num_tokens"], expected)

    mv = httpx.get(f"{t.url}/v1/models/{done['model_id']}").json()
    assert mv["config"]["gpus"] == 2
    check = next(c for c in mv["export_checks"] if c["kind"] == "merged_vs_trained")
    assert check["passed"]
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = stack.artifacts / mv["artifacts"]["merged"]["key"]
    model = AutoModelForCausalLM.from_pretrained(merged)
    tok = AutoTokenizer.from_pretrained(merged)
    ids = tok.apply_chat_template([{"role": "user", "content": "Subject: Charged twice"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]

"""Tensor parallelism and GPU placement: the allocator and the engine command lines (fast), the
controller's validation, and a real service whose vLLM engine is a stand-in (no GPU here: a
``vllm`` on PATH that records its arguments and CUDA_VISIBLE_DEVICES, then runs the CPU
engine): a tensor-parallel-2 deployment swapped under load drops nothing, and a swap that would
not fit next to the serving engine is refused while the old version keeps answering."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import httpx
import pytest

from tuneloop.db import Database
from tuneloop.errors import InvalidRequest
from tuneloop.storage import ArtifactStore
from tuneloop.testing import ServiceProcess
from tuneloop_inference.app import MIGRATIONS
from tuneloop_inference.controller import Controller
from tuneloop_inference.deployments import gpu_pool
from tuneloop_inference.engines import EngineError, make_engine
from tuneloop_inference.metrics import InferenceMetrics
from tuneloop_inference.placement import GpuAllocator, PlacementError
from tuneloop_inference.settings import InferenceSettings

ADMIN_KEY = "test-admin-key"          # as in conftest.py
V1 = "mv-0000000000000001"
V2 = "mv-0000000000000002"
MESSAGES = [{"role": "user", "content": "My invoice is wrong, please help."}]


async def _under_load(url: str, action, workers: int = 6):  # noqa: ANN001, ANN202
    """``workers`` OpenAI-SDK clients on alias 'bot' (half streaming) while ``action`` (a
    blocking admin call) runs, and well past it. Returns (result, record, errors, t_done)."""
    import time

    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    stop, record, errors = asyncio.Event(), [], []

    async def worker(i: int) -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                if i % 2:
                    stream = await client.chat.completions.create(
                        model="bot", messages=MESSAGES, max_tokens=8, stream=True)
                    model = {c.model async for c in stream}.pop()
                else:
                    resp = await client.chat.completions.create(model="bot", messages=MESSAGES,
                                                                max_tokens=8)
                    assert resp.usage.completion_tokens >= 1
                    model = resp.model
                record.append((t0, model))
            except Exception as exc:  # every failure is a test failure, recorded
                errors.append(repr(exc))

    load = asyncio.gather(*(worker(i) for i in range(workers)))
    while len(record) < 6 and not errors:  # the load is flowing before the action starts
        await asyncio.sleep(0.05)
    result = await asyncio.to_thread(action)
    t_done = time.monotonic()
    n = len(record)
    while len(record) < n + 12 and not errors:  # and keeps going well past the flip
        await asyncio.sleep(0.05)
    stop.set()
    await load
    await client.close()
    return result, record, errors, t_done


# --------------------------------------------------------------------------- allocator
def test_tp2_swap_fits_two_engines_at_045_on_two_gpus():
    a = GpuAllocator(["0", "1"], budget=0.95)
    assert a.place("blue", 2, 0.45) == ["0", "1"]
    assert a.place("green", 2, 0.45) == ["0", "1"]  # both sides of the swap coexist
    assert a.used() == {"0": 0.9, "1": 0.9}
    with pytest.raises(PlacementError) as e:
        a.place("third", 1, 0.45)
    assert e.value.code == "insufficient_gpu_capacity" and "GPU 0: 0.90" in str(e.value)
    a.release("blue")  # the drained blue engine stopped
    assert a.used() == {"0": 0.45, "1": 0.45} and a.can_place(2, 0.45)


def test_refuses_what_does_not_fit_and_never_more_gpus_than_there_are():
    a = GpuAllocator(["0", "1"], budget=0.95)
    a.place("blue", 2, 0.6)
    assert not a.can_place(2, 0.6)  # a 0.6 TP=2 swap cannot hold both sides: refused
    with pytest.raises(PlacementError) as e:
        a.check(4, 0.1)
    assert e.value.code == "not_enough_gpus"
    assert a.place("blue", 2, 0.3) == ["0", "1"]  # re-placing an owner replaces its placement
    assert a.used() == {"0": 0.3, "1": 0.3}


def test_single_gpu_engines_go_to_the_least_used_gpu():
    a = GpuAllocator(["2", "3", "5"], budget=0.95)
    assert a.place("a", 1, 0.4) == ["2"]
    assert a.place("b", 1, 0.4) == ["3"]
    assert a.place("c", 2, 0.4) == ["2", "5"]  # 5 is empty, then 2 and 3 tie: pool order
    assert a.describe()["used"] == {"2": 0.8, "3": 0.4, "5": 0.4}


def test_gpu_pool_sources(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert gpu_pool(InferenceSettings(data_dir=tmp_path, gpu_ids=["1"])) == ["1"]
    assert gpu_pool(InferenceSettings(data_dir=tmp_path)) == ["4", "5"]


# --------------------------------------------------------------------------- engines
def test_vllm_command_and_env_for_tensor_parallel(tmp_path: Path):
    s = InferenceSettings(data_dir=tmp_path, gpu_memory_utilization=0.45)
    e = make_engine("vllm", name="mv-x", model_dir="/m", settings=s, log_path=tmp_path / "l",
                    tensor_parallel_size=2, gpus=["0", "1"])
    cmd = e.command()
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2"
    assert cmd[cmd.index("--gpu-memory-utilization") + 1] == "0.45"
    assert e.env()["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert e.describe()["gpus"] == ["0", "1"] and e.describe()["tensor_parallel_size"] == 2
    one = make_engine("vllm", name="mv-y", model_dir="/m", settings=s, log_path=tmp_path / "l",
                      gpus=["1"])
    assert "--tensor-parallel-size" not in one.command() and one.env()["CUDA_VISIBLE_DEVICES"] == "1"


def test_cpu_engine_rejects_tensor_parallel(tmp_path: Path, tiny_random_dir: Path):
    s = InferenceSettings(data_dir=tmp_path, engine="transformers")
    with pytest.raises(EngineError) as e:
        make_engine("transformers", name="x", model_dir="/m", settings=s, log_path=tmp_path / "l",
                    tensor_parallel_size=2)
    assert e.value.code == "tensor_parallel_unsupported"
    db = Database(f"sqlite:///{tmp_path / 'inference.db'}")
    db.migrate(MIGRATIONS, version_table="alembic_version_inference")
    ctl = Controller(s, db, ArtifactStore(str(tmp_path / "artifacts")), InferenceMetrics())
    try:
        assert ctl.gpus is None
        with pytest.raises(InvalidRequest) as err:
            asyncio.run(ctl.deployments.create(name="big", path=str(tiny_random_dir),
                                               tensor_parallel_size=2))
        assert err.value.code == "tensor_parallel_unsupported"
        assert asyncio.run(ctl.repo.find_by_name("big")) is None  # nothing was registered
    finally:
        db.dispose()


# --------------------------------------------------------------------------- real service
STANDIN = '''#!{python}
"""Stand-in for `vllm serve` on a machine without GPUs: records what the controller launched
(arguments, CUDA_VISIBLE_DEVICES), then runs tuneloop's CPU engine on the same port/name."""
import json, os, sys
args = sys.argv[1:]
opts = {{args[i]: args[i + 1] for i in range(2, len(args) - 1) if args[i].startswith("--")}}
with open({log!r}, "a") as fh:
    fh.write(json.dumps({{"argv": args, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}}) + "\\n")
os.execv(sys.executable, [sys.executable, "-m", "tuneloop_inference.engines.transformers_serve",
         "--model-dir", args[1], "--served-model-name", opts["--served-model-name"],
         "--host", opts["--host"], "--port", opts["--port"]])
'''


@pytest.fixture(scope="module")
def tp_service(tmp_path_factory: pytest.TempPathFactory, tiny_random_dir: Path,
               second_model_dir: Path):
    root = tmp_path_factory.mktemp("tp")
    for mv, src in ((V1, tiny_random_dir), (V2, second_model_dir)):
        shutil.copytree(src, root / "artifacts" / "models" / mv / "merged")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "vllm").write_text(STANDIN.format(python=sys.executable, log=str(root / "launches")))
    (bin_dir / "vllm").chmod(0o755)
    import os

    proc = ServiceProcess(
        "tuneloop_inference",
        env={"TUNELOOP_DATA_DIR": str(root), "INFERENCE_ADMIN_KEY": ADMIN_KEY,
             "INFERENCE_ENGINE": "vllm", "INFERENCE_GPU_IDS": '["0","1"]',
             "INFERENCE_GPU_MEMORY_UTILIZATION": "0.45", "PATH": f"{bin_dir}:{os.environ['PATH']}",
             "INFERENCE_REPLICA_ID": "replica-tp", "INFERENCE_HEALTH_INTERVAL_S": "0.5",
             "INFERENCE_RECONCILE_INTERVAL_S": "1", "TUNELOOP_LOG_JSON": "false"},
        log_path=root / "service.log", health_path="/ready", startup_timeout=240).start()
    proc.root = root  # type: ignore[attr-defined]
    yield proc
    proc.stop(timeout=60)


def _launches(root: Path) -> list[dict]:
    return [json.loads(x) for x in (root / "launches").read_text().splitlines()]


@pytest.mark.slow
def test_tp2_deployment_swapped_under_load_drops_nothing(tp_service, tiny_random_dir: Path):
    admin = httpx.Client(base_url=tp_service.url, timeout=300,
                         headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    r = admin.post("/admin/deployments", params={"wait": "true"},
                   json={"model_id": V1, "tensor_parallel_size": 2})
    assert r.status_code == 201, r.text
    dep = r.json()
    assert dep["state"] == "ready" and dep["tensor_parallel_size"] == 2
    assert dep["local"]["gpus"] == ["0", "1"]
    assert admin.put("/admin/aliases/bot", json={"model": V1}).status_code == 200

    result, record, errors, t_done = asyncio.run(_under_load(
        tp_service.url, lambda: admin.put("/admin/aliases/bot", json={"model": V2})))
    assert result.status_code == 200, result.text
    assert errors == [] and result.json()["swap"]["retired"] == V1
    after = [m for t0, m in record if t0 > t_done]
    assert after and set(after) == {V2} and any(m == V1 for _, m in record)
    deps = {d["model"]: d for d in admin.get("/admin/deployments").json()["data"]}
    assert deps[V2]["tensor_parallel_size"] == 2  # the new version inherits the old one's GPUs
    launches = _launches(tp_service.root)
    assert len(launches) == 2
    for launch in launches:  # blue and green both ran on both GPUs, at 0.45 each
        argv = launch["argv"]
        assert launch["cuda"] == "0,1" and argv[argv.index("--tensor-parallel-size") + 1] == "2"
    gpus = admin.get("/admin/gpus").json()
    assert gpus["used"] == {"0": 0.45, "1": 0.45} and len(gpus["placements"]) == 1  # blue freed

    # validation against this replica's GPUs
    for tp, code, status in ((3, "invalid_tensor_parallel_size", 400), (4, "not_enough_gpus", 400)):
        r = admin.post("/admin/deployments", json={"name": f"tp{tp}", "path": str(tiny_random_dir),
                                                   "tensor_parallel_size": tp})
        assert r.status_code == status and r.json()["error"]["code"] == code, r.text

    # a 1-GPU engine takes GPU 0 to 0.90: a TP=2 flip back to V1 has no room -> refused,
    # the alias and the serving engine untouched
    r = admin.post("/admin/deployments", params={"wait": "true"},
                   json={"name": "side", "path": str(tiny_random_dir)})
    assert r.status_code == 201 and r.json()["local"]["gpus"] == ["0"], r.text
    r = admin.put("/admin/aliases/bot", json={"model": V1})
    assert r.status_code == 409 and r.json()["error"]["code"] == "insufficient_gpu_capacity", r.text
    assert admin.get("/admin/aliases/bot").json()["model"] == V2
    answer = httpx.post(f"{tp_service.url}/v1/chat/completions", timeout=120, json={
        "model": "bot", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200 and answer.json()["model"] == V2
    admin.close()

"""The inference service as a real process with real CPU engines (vLLM's CPU build).

One service process for the module (engine start-ups dominate the run time); the tests run in
file order and build on each other: OpenAI SDK calls, errors, a blue/green swap under load,
a broken model rejected under load, rollback, a runtime LoRA adapter attached to the served
base (the hot-swap fast path, on CPU too), a killed engine restarted, and finally a controller
restart that must bring the same deployments and aliases back.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow

ADMIN_KEY = "test-admin-key"          # as in conftest.py
V1 = "mv-0000000000000001"             # model versions conftest puts in the artifact store
V2 = "mv-0000000000000002"
V3 = "mv-0000000000000003"             # ... and the LoRA adapter of a third (on the base)
MESSAGES = [{"role": "user", "content": "My invoice is wrong, please help."}]


def sdk(service) -> openai.OpenAI:  # noqa: ANN001
    return openai.OpenAI(base_url=service.url + "/v1", api_key="unused", max_retries=0)


def wait_for(predicate, timeout: float = 120, interval: float = 0.25):  # noqa: ANN001, ANN201
    """Poll ``predicate`` until it returns something truthy (readiness polling, not sleeps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def metric(service, name: str, **labels: str) -> float:  # noqa: ANN001
    text = httpx.get(service.url + "/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


# ------------------------------------------------------------------------------- OpenAI SDK
def test_openai_sdk_plain_streaming_completions_and_models(service) -> None:  # noqa: ANN001
    client = sdk(service)
    assert "base" in [m.id for m in client.models.list().data]

    resp = client.chat.completions.create(model="base", messages=MESSAGES, max_tokens=6,
                                          temperature=0)
    assert resp.model == "base"
    assert resp.choices[0].message.role == "assistant"
    assert resp.usage.completion_tokens == 6 and resp.usage.prompt_tokens > 0
    assert resp.choices[0].finish_reason == "length"

    stream = client.chat.completions.create(model="base", messages=MESSAGES, max_tokens=5,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert len(chunks) >= 3 and all(c.model == "base" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = [c.usage for c in chunks if c.usage]
    assert usage and usage[-1].completion_tokens == 5
    assert isinstance(text, str)

    two = client.chat.completions.create(model="base", messages=MESSAGES, max_tokens=3, n=2)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.usage.completion_tokens == 6

    comp = client.completions.create(model="base", prompt="The capital of France is",
                                     max_tokens=4, stop=["zzz"])
    assert comp.model == "base" and comp.usage.completion_tokens >= 1
    assert isinstance(comp.choices[0].text, str)

    # `stop` is honoured, and (OpenAI semantics) the stop sequence is not in the answer
    free = client.chat.completions.create(model="base", messages=MESSAGES, max_tokens=12,
                                          temperature=0).choices[0]
    stop = free.message.content[:1]
    assert stop, "the tiny model answered nothing; cannot exercise stop"
    cut = client.chat.completions.create(model="base", messages=MESSAGES, max_tokens=12,
                                         temperature=0, stop=[stop]).choices[0]
    assert cut.finish_reason == "stop" and stop not in cut.message.content
    chunks = list(client.chat.completions.create(model="base", messages=MESSAGES, max_tokens=12,
                                                 temperature=0, stop=[stop], stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert stop not in streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"

    assert metric(service, "tuneloop_inference_requests_total", model="base") >= 4
    assert metric(service, "tuneloop_inference_generated_tokens_total", version="base") >= 18
    assert metric(service, "tuneloop_inference_time_to_first_token_seconds_count") >= 1


def test_openai_errors_in_envelope(service) -> None:  # noqa: ANN001
    client = sdk(service)
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="base", messages=MESSAGES, temperature=5)
    assert bad.value.status_code == 400 and bad.value.body["param"] == "temperature"
    # vLLM streams n > 1 natively (the fallback engine, without native n, answers 400)
    chunks = list(client.chat.completions.create(model="base", messages=MESSAGES, n=2,
                                                 max_tokens=3, stream=True))
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1}
    raw = httpx.post(service.url + "/v1/chat/completions", content=b"{not json",
                     headers={"content-type": "application/json"})
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_json"
    # unknown fields: vLLM ignores them (and logs their names), never a 500
    raw = httpx.post(service.url + "/v1/chat/completions",
                     json={"model": "base", "messages": MESSAGES, "bogus_field": 1,
                           "max_tokens": 2})
    assert raw.status_code == 200 and raw.json()["usage"]["completion_tokens"] >= 1


def test_admin_needs_its_own_key(service) -> None:  # noqa: ANN001
    assert httpx.get(service.url + "/admin/deployments").status_code == 401
    wrong = httpx.get(service.url + "/admin/deployments",
                      headers={"Authorization": "Bearer not-it"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_admin_key"


def test_admin_input_errors(service, admin) -> None:  # noqa: ANN001
    r = admin.post("/admin/deployments", json={"model_id": "mv-00000000000000ff"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = admin.post("/admin/deployments", json={"model_id": "../etc"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model_id"
    r = admin.post("/admin/deployments", json={"name": "x", "path": "/nonexistent"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_model_path"
    r = admin.put("/admin/aliases/bot", json={"model": "nothing-here"})
    assert r.status_code == 404
    r = admin.post("/admin/aliases/nope/rollback")
    assert r.status_code == 404 and r.json()["error"]["code"] == "alias_not_found"
    r = admin.put("/admin/aliases/bot", json={"wrong": 1})
    assert r.status_code == 400


# ------------------------------------------------------------------------------- hot swap
async def _load(url: str, stop: asyncio.Event, record: list, errors: list, workers: int = 8):
    """``workers`` concurrent clients calling alias 'bot' (half streaming) until ``stop``."""
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                                timeout=120)

    async def worker(i: int) -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                if i % 2:
                    stream = await client.chat.completions.create(
                        model="bot", messages=MESSAGES, max_tokens=8, stream=True)
                    models = {c.model async for c in stream}
                    assert len(models) == 1
                    model = models.pop()
                else:
                    resp = await client.chat.completions.create(
                        model="bot", messages=MESSAGES, max_tokens=8)
                    assert resp.usage.completion_tokens >= 1
                    model = resp.model
                record.append((t0, time.monotonic(), model))
            except Exception as exc:  # every failure is a test failure, recorded
                errors.append(repr(exc))

    await asyncio.gather(*(worker(i) for i in range(workers)))
    await client.close()


async def _under_load(url: str, action, workers: int = 8):  # noqa: ANN001, ANN202
    """Run ``action`` (a blocking admin call) while the load runs; return its result + log."""
    stop, record, errors = asyncio.Event(), [], []
    load = asyncio.create_task(_load(url, stop, record, errors, workers))
    await asyncio.sleep(0)
    while len(record) < 8 and not errors:   # the load is flowing before the action starts
        await asyncio.sleep(0.05)
    t_start = time.monotonic()
    result = await asyncio.to_thread(action)
    t_done = time.monotonic()
    n_before = len(record)
    while len(record) < n_before + 16 and not errors:  # keep going well past the flip
        await asyncio.sleep(0.05)
    stop.set()
    await load
    return result, record, errors, t_start, t_done


def test_swap_under_load_has_zero_failures_and_new_answers_after_flip(service, admin) -> None:  # noqa: ANN001
    r = admin.put("/admin/aliases/bot", json={"model": V1})   # deploys V1 from the store
    assert r.status_code == 200, r.text
    assert r.json()["model"] == V1 and r.json()["converged"] is True

    result, record, errors, t_start, t_done = asyncio.run(_under_load(
        service.url, lambda: admin.put("/admin/aliases/bot", json={"model": V2})))
    assert result.status_code == 200, result.text
    body = result.json()
    assert errors == []
    assert body["model"] == V2 and body["previous"] == V1 and body["replicas"] == {
        "replica-a": V2}
    assert body["swap"]["retired"] == V1
    assert any(m == V1 for _, _, m in record)
    after = [m for t0, _, m in record if t0 > t_done]
    assert len(after) >= 8 and set(after) == {V2}
    before = [m for _, t1, m in record if t1 < t_start]
    assert before and set(before) == {V1}

    # the old engine was drained and stopped; its served name is gone
    deps = {d["model"]: d for d in admin.get("/admin/deployments").json()["data"]}
    assert deps[V1]["state"] == "stopped" and deps[V2]["state"] == "ready"
    with pytest.raises(openai.NotFoundError):
        sdk(service).chat.completions.create(model=V1, messages=MESSAGES, max_tokens=2)
    assert metric(service, "tuneloop_inference_swaps_total", alias="bot", result="ok") >= 2
    assert metric(service, "tuneloop_inference_swap_duration_seconds_count") >= 2


def test_broken_model_is_rejected_while_old_keeps_serving(service, admin, broken_model_dir) -> None:  # noqa: ANN001
    r = admin.post("/admin/deployments", json={"name": "broken-v3", "path": str(broken_model_dir)})
    assert r.status_code == 201

    result, record, errors, _, t_done = asyncio.run(_under_load(
        service.url, lambda: admin.put("/admin/aliases/bot", json={"model": "broken-v3"})))
    assert result.status_code == 422, result.text
    assert result.json()["error"]["code"] == "model_load_failed"
    assert errors == []
    assert {m for _, _, m in record} == {V2}
    assert admin.get("/admin/aliases/bot").json()["model"] == V2
    dep = admin.get(f"/admin/deployments/{r.json()['id']}").json()
    assert dep["state"] == "failed" and dep["error"]
    assert metric(service, "tuneloop_inference_swaps_total", result="rejected") >= 1


def test_rollback_is_one_call_on_the_same_path(service, admin) -> None:  # noqa: ANN001
    r = admin.post("/admin/aliases/bot/rollback")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == V1 and body["previous"] == V2 and body["swap"]["retired"] == V2
    assert body["history"][0]["action"] == "rollback"
    resp = sdk(service).chat.completions.create(model="bot", messages=MESSAGES, max_tokens=3)
    assert resp.model == V1


def test_delete_deployment_refused_while_aliased_then_stops(service, admin) -> None:  # noqa: ANN001
    deps = {d["model"]: d for d in admin.get("/admin/deployments").json()["data"]}
    r = admin.delete(f"/admin/deployments/{deps[V1]['id']}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "deployment_in_use"
    r = admin.delete(f"/admin/deployments/{deps['broken-v3']['id']}")
    assert r.status_code == 200 and r.json()["state"] == "stopped"
    assert admin.get("/admin/deployments/nope").status_code == 404


def test_typed_client(service) -> None:  # noqa: ANN001
    from tuneloop.clients.inference import InferenceClient

    async def run() -> None:
        async with InferenceClient(service.url, api_key=ADMIN_KEY) as client:
            assert await client.ready()
            assert await client.alias_target("bot") == V1
            assert await client.alias_target("nope") is None
            names = {d["model"]: d["state"] for d in await client.deployments()}
            assert names["base"] == "ready" and names[V1] == "ready"
            again = await client.deploy(model_id=V1)   # idempotent: same weights, same name
            assert again["state"] == "ready"
            out = await client.chat("bot", MESSAGES, max_tokens=2)
            assert out["model"] == V1 and out["usage"]["completion_tokens"] == 2
            assert "bot" in {m["id"] for m in await client.models()}

    asyncio.run(run())


def test_runtime_lora_adapter_on_the_cpu_engine(service, admin) -> None:  # noqa: ANN001
    """A candidate that is an adapter of the served base is attached to the base's engine (no
    second engine): listed under its own immutable name, answering differently from the base,
    while the base keeps answering as before; deleting it unloads it."""
    client = sdk(service)
    ask = {"messages": MESSAGES, "max_tokens": 8, "temperature": 0}
    base_before = client.chat.completions.create(model="base", **ask).choices[0].message.content
    base_pid = next(d["local"]["pid"] for d in admin.get("/admin/deployments").json()["data"]
                    if d["model"] == "base")
    r = admin.post("/admin/deployments", params={"wait": "true"},
                   json={"model_id": V3, "adapter_of": "base"})
    assert r.status_code == 201 and r.json()["state"] == "ready", r.text
    dep = r.json()
    name = dep["model"]
    assert name == f"{V3}.lora"
    assert dep["local"]["pid"] == base_pid            # the base's engine serves it
    assert name in [m.id for m in client.models.list().data]
    tuned = client.chat.completions.create(model=name, **ask)
    assert tuned.model == name and tuned.usage.completion_tokens >= 1
    assert tuned.choices[0].message.content != base_before
    assert client.chat.completions.create(model="base", **ask).choices[0].message.content \
        == base_before
    r = admin.delete(f"/admin/deployments/{dep['id']}")
    assert r.status_code == 200 and r.json()["state"] == "stopped", r.text
    assert name not in [m.id for m in client.models.list().data]


# ------------------------------------------------------------------------------- supervision
def test_killed_engine_is_restarted(service, admin) -> None:  # noqa: ANN001
    dep = next(d for d in admin.get("/admin/deployments").json()["data"] if d["model"] == "base")
    pid = dep["local"]["pid"]
    os.killpg(pid, signal.SIGKILL)

    def back() -> dict | None:
        d = admin.get(f"/admin/deployments/{dep['id']}").json()
        ok = d["state"] == "ready" and d["local"]["pid"] != pid and d["local"]["restarts"] >= 1
        return d if ok else None

    restarted = wait_for(back)
    assert restarted["local"]["restarts"] >= 1
    resp = sdk(service).chat.completions.create(model="base", messages=MESSAGES, max_tokens=3)
    assert resp.usage.completion_tokens == 3
    assert metric(service, "tuneloop_inference_engine_restarts_total", deployment="base") >= 1


def test_controller_restart_restores_deployments_and_aliases(service, data_dir: Path,  # noqa: ANN001
                                                             tiny_random_dir: Path,
                                                             start_inference) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    before = httpx.get(service.url + "/admin/aliases", headers=headers).json()["data"]
    old_pids = [d["local"]["pid"] for d in httpx.get(
        service.url + "/admin/deployments", headers=headers).json()["data"] if d["local"]]
    service.stop(timeout=60)
    for pid in old_pids:   # graceful stop took its engines with it
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/status").read_text().find("zombie") >= 0

    proc = start_inference(data_dir, tiny_random_dir)
    try:
        def alias_back() -> bool:
            r = httpx.get(proc.url + "/admin/aliases/bot", headers=headers)
            return r.status_code == 200 and r.json()["converged"]

        wait_for(alias_back)
        after = httpx.get(proc.url + "/admin/aliases", headers=headers).json()["data"]
        assert [(a["id"], a["model"]) for a in after] == [(a["id"], a["model"]) for a in before]
        resp = sdk(proc).chat.completions.create(model="bot", messages=MESSAGES, max_tokens=3)
        assert resp.model == V1
        deps = {d["model"]: d["state"] for d in httpx.get(
            proc.url + "/admin/deployments", headers=headers).json()["data"]}
        assert deps == {"base": "ready", V1: "ready", V2: "stopped", "broken-v3": "stopped",
                        f"{V3}.lora": "stopped"}
    finally:
        proc.stop(timeout=60)

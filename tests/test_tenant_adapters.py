"""Per-tenant adapters (issue 18, item 5) with real processes: two LoRA adapters of one base,
attached at run time to the one vLLM CPU engine that serves the base (``--max-loras``), each
behind a tenant's alias; each tenant's key is bound to its alias (it cannot call the other's),
both tenants are served at the same time, and the gateway's ``/metrics`` meters each key's
tokens."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import openai
import pytest

from tuneloop.testing import ServiceProcess

pytestmark = pytest.mark.slow

ADMIN = "tlk-tenants-admin-key-0123456789abcdef"
INFERENCE_ADMIN = "inference-admin-key-tenants"
TENANTS = {"acme": "mv-00000000000000c1", "globex": "mv-00000000000000c2"}
H = {"Authorization": f"Bearer {ADMIN}"}


def _adapter(base: Path, out: Path, seed: int) -> None:
    """A rank-8 LoRA on the tiny base with random (non-zero) weights: each adapter answers
    differently from the base and from the other."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                                            target_modules=["q_proj", "v_proj"]))
    peft.save_pretrained(out)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_base_dir):
    var = tmp_path_factory.mktemp("tenants")
    for i, mv in enumerate(TENANTS.values()):
        _adapter(tiny_base_dir, var / "artifacts" / "models" / mv / "adapter", seed=i)
    common = {"TUNELOOP_DATA_DIR": str(var), "TUNELOOP_LOG_JSON": "false", "HF_HUB_OFFLINE": "1",
              "TUNELOOP_SERVICE_AUTH": "false"}
    procs = []
    try:
        inference = ServiceProcess("tuneloop_inference", env={
            **common, "INFERENCE_ADMIN_KEY": INFERENCE_ADMIN,
            "INFERENCE_BASE_MODEL_PATH": str(tiny_base_dir), "INFERENCE_ENGINE": "vllm",
            "INFERENCE_VLLM_DTYPE": "float32", "INFERENCE_VLLM_CPU_KV_CACHE_GIB": "0.25"},
            log_path=var / "logs" / "inference.log", health_path="/ready", startup_timeout=400)
        procs.append(inference.start())
        gateway = ServiceProcess("tuneloop_gateway", env={
            **common, "GATEWAY_BOOTSTRAP_ADMIN_KEY": ADMIN, "INFERENCE_ADMIN_KEY": INFERENCE_ADMIN,
            "TUNELOOP_INFERENCE_URL": inference.url, "TUNELOOP_DATASET_URL": "http://127.0.0.1:9",
            "TUNELOOP_TRAINER_URL": "http://127.0.0.1:9", "GATEWAY_RECONCILE_INTERVAL_S": "0"},
            log_path=var / "logs" / "gateway.log")
        procs.append(gateway.start())
        yield {"gateway": gateway, "inference": inference}
    finally:
        for p in reversed(procs):
            p.stop(timeout=60)


def test_two_tenants_adapters_in_one_engine_bound_keys_and_metering(stack):
    gw = stack["gateway"].url
    inf = httpx.Client(base_url=stack["inference"].url, timeout=600,
                       headers={"Authorization": f"Bearer {INFERENCE_ADMIN}"})
    served, keys = {}, {}
    for tenant, mv in TENANTS.items():
        dep = inf.post("/admin/deployments", params={"wait": "true"},
                       json={"model_id": mv, "adapter_of": "base"}).json()
        assert dep["state"] == "ready" and dep["adapter_of"] == "base", dep
        served[tenant] = dep["model"]
        assert inf.put(f"/admin/aliases/{tenant}", json={"model": dep["model"]}).status_code == 200
        made = httpx.post(gw + "/v1/keys", headers=H, json={
            "name": tenant, "scopes": ["inference"], "models": [tenant]}).json()
        keys[tenant] = made
    # one engine: the base's, started with room for several adapters at once
    deps = inf.get("/admin/deployments").json()["data"]
    engines = {d["local"]["pid"] for d in deps if d["state"] == "ready" and (d.get("local") or {}).get("pid")}
    assert len(engines) == 1, deps
    cmdline = Path(f"/proc/{engines.pop()}/cmdline").read_bytes().split(b"\0")
    assert cmdline[cmdline.index(b"--max-loras") + 1] == b"4"

    out: dict[str, list] = {t: [] for t in TENANTS}
    msgs = [{"role": "user", "content": "Subject: Charged twice\n\nI was billed two times."}]

    def tenant_traffic(tenant: str) -> None:
        sdk = openai.OpenAI(base_url=gw + "/v1", api_key=keys[tenant]["key"], max_retries=0,
                            timeout=300)
        for _ in range(3):
            try:
                out[tenant].append(sdk.chat.completions.create(
                    model=tenant, max_tokens=8, temperature=0, messages=msgs))
            except Exception as exc:  # a failed request is what the test counts
                out[tenant].append(exc)
    threads = [threading.Thread(target=tenant_traffic, args=(t,)) for t in TENANTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for tenant, replies in out.items():
        assert [getattr(r, "model", r) for r in replies] == [served[tenant]] * 3, replies
    texts = {t: out[t][0].choices[0].message.content for t in TENANTS}
    base = openai.OpenAI(base_url=gw + "/v1", api_key=ADMIN, max_retries=0).chat.completions.create(
        model="base", max_tokens=8, temperature=0, messages=msgs).choices[0].message.content
    assert len({texts["acme"], texts["globex"], base}) > 1   # the adapters do change the answers

    other = openai.OpenAI(base_url=gw + "/v1", api_key=keys["acme"]["key"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        other.chat.completions.create(model="globex", max_tokens=8, messages=msgs)
    assert denied.value.body["code"] == "model_not_allowed"
    # a bound key lists and looks up its own aliases only; an unbound key sees them all
    assert [m.id for m in other.models.list().data] == ["acme"]
    assert other.models.retrieve("acme").id == "acme"
    with pytest.raises(openai.NotFoundError) as hidden:
        other.models.retrieve("globex")
    assert hidden.value.body["code"] == "model_not_found"
    everything = {m.id for m in openai.OpenAI(base_url=gw + "/v1", api_key=ADMIN,
                                              max_retries=0).models.list().data}
    assert {"acme", "globex", "base"} <= everything

    # a stream as the SDK sends it by default (no stream_options.include_usage): the gateway
    # meters it all the same, and the client gets no usage chunk (choices: []) it did not ask for
    acme = openai.OpenAI(base_url=gw + "/v1", api_key=keys["acme"]["key"], max_retries=0,
                         timeout=300)
    ref = acme.chat.completions.create(model="acme", max_tokens=8, temperature=0, messages=msgs)
    chunks = list(acme.chat.completions.create(model="acme", max_tokens=8, temperature=0,
                                               messages=msgs, stream=True))
    assert chunks and all(c.choices and c.usage is None for c in chunks), chunks[-2:]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ref.choices[0].message.content
    out["acme"] += [ref, ref]   # the stream generated what ref did (greedy, alone in the engine)

    metrics = httpx.get(gw + "/metrics").text
    for tenant, replies in out.items():
        kid = keys[tenant]["id"]
        tokens = sum(r.usage.completion_tokens for r in replies)
        assert f'tuneloop_gateway_key_tokens_total{{key_id="{kid}",kind="completion"}} {float(tokens)}' \
            in metrics, [m for m in metrics.splitlines() if kid in m]
        assert f'tuneloop_gateway_key_requests_total{{key_id="{kid}"}} {float(len(replies))}' \
            in metrics

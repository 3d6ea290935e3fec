"""GPU run of the inference service's vLLM runtime-LoRA fast path (one H200, see docs/inference.md).

One run, in this order (every step bounded by ``--budget-s``; JSON written after each step):
1. build a Llama-3.2-1B-shaped base (random weights, tokenizer trained here, helpers of
   ``bench/inference_gpu.py``) published as ``models/<mv-base>/merged``; make a PEFT LoRA adapter
   for it (r=16, alpha=16, q/k/v/o_proj, random non-zero B so it changes the outputs) saved the
   way the trainer saves it: ``models/<mv-cand>/adapter`` (adapter + tokenizer);
2. start the inference service (``INFERENCE_ENGINE=vllm``, ``INFERENCE_VLLM_ENABLE_LORA=true``) and
   deploy the base (a full ``vllm serve`` start: the baseline);
3. deploy the candidate through the fast path ``{"model_id": <mv-cand>, "adapter_of": <mv-base>}``
   (``/v1/load_lora_adapter`` on the running engine + smoke) and time it;
4. the candidate is listed in ``/v1/models`` (service and engine), answers, and its greedy output
   differs from the base's for the same prompts (the adapter is applied);
5. alias ``bot`` -> base, then flipped to the candidate while 8 clients (half streaming) call
   ``bot``: failed requests (must be 0), who answered after the flip, the base stays up;
6. rollback ``bot`` to the base, which retires the candidate = unloads the adapter; it is gone
   from ``/v1/models`` and the base still answers.

Writes ``$OUT/inference_gpu_lora.json`` (else ``bench/results/inference_gpu_lora.json``).

``--dry`` runs the same flow on CPU with a tiny model and the transformers engine, which has no
runtime LoRA: the candidate is then the adapter merged into the base and deployed as
``models/<mv-cand>/merged`` (tests the script's plumbing only; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "shared/src"))

import inference_gpu as g  # noqa: E402  (reuse: build_model, gpu_used_mib, swap_under_load)

BASE, CAND = "mv-00000000000010b1", "mv-00000000000010c1"
ADMIN = "bench-admin"
RESULT: dict = {"bench": "inference_gpu_lora", "when": None, "machine": {}, "results": [],
                "notes": [], "steps": {}}
T0 = time.monotonic()
SVC = None
PROMPTS = ["My invoice is wrong, I was charged twice.", "Where is my parcel? Order #4411.",
           "Please cancel my subscription.", "The app crashes when I log in."]


def out_path() -> Path:
    out = os.environ.get("OUT")
    return (Path(out) if out else ROOT / "bench/results") / "inference_gpu_lora.json"


def save() -> None:
    RESULT["when"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    RESULT["elapsed_s"] = round(time.monotonic() - T0, 1)
    path = out_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(RESULT, indent=2, default=str))


def step(name: str, **data) -> None:
    RESULT["steps"][name] = data
    print(f"[{time.monotonic() - T0:6.1f}s] {name}: {json.dumps(data, default=str)[:700]}",
          flush=True)
    save()


def metric(name: str, value: float, unit: str, baseline=None, **extra) -> None:  # noqa: ANN001
    ratio = round(value / baseline, 4) if baseline else None
    RESULT["results"].append({"metric": name, "value": round(value, 3), "unit": unit,
                              "baseline": None if baseline is None else round(baseline, 3),
                              "ratio": ratio, **extra})
    save()


def note(text: str) -> None:
    RESULT["notes"].append(text)
    print("NOTE:", text, flush=True)
    save()


def collect_logs(work: Path) -> None:
    try:
        RESULT["service_log_tail"] = (work / "service.log").read_text(errors="replace")[-3000:]
        logs = sorted((work / "var/logs/engines").glob("*.log"))
        RESULT["engine_log_tails"] = {p.name: p.read_text(errors="replace")[-2500:]
                                      for p in logs}
    except OSError:
        pass


def watchdog(budget_s: float, work: Path) -> None:
    """Past the budget: record it, stop the service (engines with it), write the JSON, exit."""
    def fire() -> None:
        note(f"budget of {budget_s:.0f}s exhausted: run cut short, partial results")
        if SVC is not None and SVC.proc is not None and SVC.proc.poll() is None:
            try:
                os.killpg(SVC.proc.pid, signal.SIGTERM)
                SVC.proc.wait(20)
            except Exception:
                pass
        collect_logs(work)
        save()
        os._exit(3)
    t = threading.Timer(budget_s, fire)
    t.daemon = True
    t.start()


def left(budget_s: float) -> float:
    return budget_s - (time.monotonic() - T0)


# ------------------------------------------------------------------------------ adapter
def build_adapter(base_dir: Path, adapter_dir: Path, merged_dir: Path | None,
                  b_std: float, device: str) -> dict:
    """PEFT LoRA r=16 on q/k/v/o_proj with random B (non-zero): saved like the trainer does
    (``save_pretrained`` of the adapter + the tokenizer). ``merged_dir``: also merge (dry run)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16).to(device)
    cfg = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, bias="none",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                     task_type="CAUSAL_LM")
    enc = tok.apply_chat_template([{"role": "user", "content": PROMPTS[0]}],
                                  add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True).to(device)
    with torch.no_grad():
        base_logits = model(**enc).logits.float()
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator(device="cpu").manual_seed(1234)
    n_b = 0
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * b_std)
                n_b += 1
        lora_logits = peft_model(**enc).logits.float()
    adapter_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(adapter_dir))
    tok.save_pretrained(str(adapter_dir))
    out = {"lora_B_matrices": n_b, "b_std": b_std,
           "hf_logits_max_abs_diff": round((lora_logits - base_logits).abs().max().item(), 4),
           "hf_argmax_agreement": round((lora_logits.argmax(-1) == base_logits.argmax(-1))
                                        .float().mean().item(), 4),
           "files": sorted(p.name for p in adapter_dir.iterdir()),
           "trainable_params": sum(p.numel() for n, p in peft_model.named_parameters()
                                   if "lora_" in n)}
    if merged_dir is not None:
        merged = peft_model.merge_and_unload()
        merged_dir.mkdir(parents=True, exist_ok=True)
        merged.save_pretrained(str(merged_dir))
        tok.save_pretrained(str(merged_dir))
    del peft_model, model
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


# ------------------------------------------------------------------------------ checks
def chat(client: httpx.Client, model: str, prompt: str, max_tokens: int, ignore_eos: bool) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0}
    if ignore_eos:
        body["ignore_eos"] = True
    r = client.post("/v1/chat/completions", json=body)
    if r.status_code != 200:
        return {"status": r.status_code, "error": r.text[:300]}
    d = r.json()
    return {"status": 200, "model": d["model"], "text": d["choices"][0]["message"]["content"],
            "tokens": d["usage"]["completion_tokens"]}


def listed(client: httpx.Client) -> list[str]:
    try:
        return [m["id"] for m in client.get("/v1/models").json()["data"]]
    except Exception as exc:  # noqa: BLE001
        return [f"error: {exc!r}"[:200]]


def engine_models_of(url: str) -> list[dict]:
    """What the engine process itself lists (vLLM lists loaded adapters with their parent)."""
    try:
        with httpx.Client(base_url=url, timeout=60) as eng:
            return eng.get("/v1/models").json().get("data", [])
    except Exception as exc:  # noqa: BLE001  (dry run: the base engine was retired)
        return [{"id": f"error: {exc!r}"[:200]}]


def deployment(admin: httpx.Client, name: str) -> dict | None:
    return next((d for d in admin.get("/admin/deployments").json()["data"]
                 if d["model"] == name), None)


# ------------------------------------------------------------------------------ main
def main() -> int:
    global SVC
    ap = argparse.ArgumentParser()
    ap.add_argument("--dry", action="store_true", help="CPU, tiny model, transformers engine")
    ap.add_argument("--work", default="/tmp/tl-bench-lora")
    ap.add_argument("--budget-s", type=float, default=330)
    ap.add_argument("--b-std", type=float, default=0.2)
    ap.add_argument("--eager", action=argparse.BooleanOptionalAction, default=True,
                    help="vllm serve --enforce-eager (no torch.compile / CUDA graphs: bounded "
                         "start-up on a fresh machine)")
    args = ap.parse_args()
    engine = "transformers" if args.dry else "vllm"
    lora = not args.dry
    ignore_eos = engine == "vllm"
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    store = work / "var/artifacts"
    watchdog(args.budget_s, work)

    import torch

    RESULT["machine"] = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available()
                         else None, "cpu_count": os.cpu_count(), "torch": torch.__version__}
    for mod in ("vllm", "peft", "transformers"):
        try:
            RESULT["machine"][mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            pass
    RESULT["config"] = {"engine": engine, "lora_fast_path": lora, "enforce_eager": args.eager,
                        "gpu_memory_utilization": 0.40, "max_model_len": 2048,
                        "lora": {"r": 16, "alpha": 16, "targets": "q/k/v/o_proj",
                                 "b_std": args.b_std}, "budget_s": args.budget_s}
    save()

    t = time.monotonic()
    base_dir = store / f"models/{BASE}/merged"
    params = g.build_model(base_dir, 0, args.dry)
    device = "cuda" if torch.cuda.is_available() and not args.dry else "cpu"
    ad = build_adapter(base_dir, store / f"models/{CAND}/adapter",
                       None if lora else store / f"models/{CAND}/merged", args.b_std, device)
    step("models_built", params=params, adapter=ad, seconds=round(time.monotonic() - t, 1))

    from tuneloop.testing.process import ServiceProcess

    env = {"TUNELOOP_DATA_DIR": str(work / "var"), "INFERENCE_ADMIN_KEY": ADMIN,
           "INFERENCE_ENGINE": engine, "INFERENCE_GPU_MEMORY_UTILIZATION": "0.40",
           "INFERENCE_VLLM_MAX_MODEL_LEN": "2048", "INFERENCE_REPLICA_ID": "gpu-replica",
           "INFERENCE_VLLM_ENABLE_LORA": "true" if lora else "false",
           "INFERENCE_VLLM_EXTRA_ARGS": "--enforce-eager" if args.eager else "",
           "INFERENCE_ENGINE_STARTUP_TIMEOUT_S": str(max(60, int(left(args.budget_s) - 60))),
           "TUNELOOP_LOG_JSON": "false",
           # this bench calls the OpenAI routes itself, without the service token
           "TUNELOOP_SERVICE_AUTH": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "shared/src"),
                                          str(ROOT / "services/inference/src"),
                                          os.environ.get("PYTHONPATH", "")])}
    SVC = ServiceProcess("tuneloop_inference", env=env, log_path=work / "service.log",
                         startup_timeout=120)
    SVC.start()
    admin = httpx.Client(base_url=SVC.url, timeout=600,
                         headers={"Authorization": f"Bearer {ADMIN}"})
    api = httpx.Client(base_url=SVC.url, timeout=120)
    rc = 1
    try:
        # -- 2. the base: a full engine start ------------------------------------------------
        t = time.monotonic()
        r = admin.post("/admin/deployments", params={"wait": "true"}, json={"model_id": BASE})
        base_s = time.monotonic() - t
        body = r.json()
        step("deploy_base", status=r.status_code, seconds=round(base_s, 2),
             state=body.get("state"), error=body.get("error"), gpu_used_mib=g.gpu_used_mib())
        if body.get("state") != "ready":
            note("base did not come up; see engine_log_tails")
            return 1
        engine_url = body["local"]["url"]

        # -- 3. the candidate through the runtime-LoRA fast path -------------------------------
        cand_body = {"model_id": CAND, **({"adapter_of": BASE} if lora else {})}
        t = time.monotonic()
        r = admin.post("/admin/deployments", params={"wait": "true"}, json=cand_body)
        cand_s = time.monotonic() - t
        body = r.json()
        step("deploy_candidate", request=cand_body, status=r.status_code,
             seconds=round(cand_s, 2), state=body.get("state"), error=body.get("error"),
             adapter_of=body.get("adapter_of"), local=body.get("local"),
             gpu_used_mib=g.gpu_used_mib())
        if body.get("state") != "ready":
            note("candidate did not come up through the fast path; see engine_log_tails")
            return 1
        metric("lora_fast_path_deploy_seconds (load_lora_adapter + smoke)" if lora else
               "candidate_deploy_seconds (dry: full engine)", cand_s, "s", baseline=base_s,
               baseline_is="full engine start of the base in the same run (vllm serve + "
               "health + smoke" + (", --enforce-eager)" if args.eager else ")"))

        # -- 4. listed, answers, differs from the base -----------------------------------------
        engine_models = engine_models_of(engine_url)
        svc_models = listed(api)
        outs = {m: [chat(api, m, p, 24, ignore_eos) for p in PROMPTS] for m in (BASE, CAND)}
        differ = [a.get("text") != b.get("text") for a, b in zip(outs[BASE], outs[CAND])]
        answered = all(o["status"] == 200 and o.get("tokens", 0) > 0 for o in outs[CAND])
        step("candidate_checks", service_lists=svc_models,
             engine_lists=[{"id": m.get("id"), "parent": m.get("parent"), "root": m.get("root")}
                           for m in engine_models],
             candidate_listed=CAND in svc_models, candidate_answers=answered,
             answered_as=sorted({o.get("model") for o in outs[CAND]}),
             outputs_differ=differ, outputs=outs)
        metric("lora_candidate_greedy_outputs_differing_from_base", sum(differ), "prompts",
               baseline=len(PROMPTS), baseline_is="prompts compared (24 greedy tokens each)")

        # -- 5. alias flip base -> candidate under 8 clients -----------------------------------
        r = admin.put("/admin/aliases/bot", json={"model": BASE})
        step("alias_to_base", status=r.status_code, swap=r.json().get("swap"))
        if left(args.budget_s) < 60:
            note("not enough budget left for the flip under load")
            return 1
        swap = asyncio.run(g.swap_under_load(SVC.url, admin, CAND, 8, ignore_eos))
        base_dep = deployment(admin, BASE)
        swap["base_state_after_flip"] = base_dep and base_dep["state"]
        swap["base_answers_after_flip"] = chat(api, BASE, PROMPTS[0], 4, ignore_eos)["status"]
        step("flip_under_load", **swap)
        metric("lora_alias_flip_failed_requests (8 clients, half streaming)", swap["errors"],
               "requests", requests_during_flip=swap["requests"],
               served_after_flip=swap["served_after_flip"])
        metric("lora_alias_flip_seconds (adapter already loaded: flip + keep base)",
               swap["response"].get("swap", {}).get("seconds", swap["swap_call_seconds"]), "s")

        # -- 6. rollback -> the candidate is retired = adapter unloaded ------------------------
        t = time.monotonic()
        r = admin.post("/admin/aliases/bot/rollback")
        unload_s = time.monotonic() - t
        cand_dep = deployment(admin, CAND)
        engine_after = [m.get("id") for m in engine_models_of(engine_url)]
        after = chat(api, CAND, PROMPTS[0], 4, ignore_eos)
        step("rollback_unload", status=r.status_code, seconds=round(unload_s, 2),
             swap=r.json().get("swap"), candidate_state=cand_dep and cand_dep["state"],
             service_lists=listed(api), engine_lists=engine_after,
             candidate_request_after=after,
             base_answers=chat(api, "bot", PROMPTS[0], 4, ignore_eos))
        metric("lora_rollback_and_unload_seconds", unload_s, "s")
        rc = 0
    except Exception as exc:  # noqa: BLE001
        note(f"run failed: {exc!r}"[:500])
    finally:
        admin.close()
        api.close()
        SVC.stop(timeout=60)
        collect_logs(work)
        save()
    return rc


if __name__ == "__main__":
    sys.exit(main())

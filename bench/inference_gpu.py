"""GPU bench of the inference service with the vLLM engine (run on the H200, see docs/inference.md).

One run, in this order:
1. build two Llama-3.2-1B-shaped models (random weights, seeds 0 and 1, a tokenizer trained
   here) and publish them as model versions ``models/<mv>/merged`` in an artifact store;
2. baseline: ``transformers`` ``generate`` on the same GPU, 256 prompts x 128 new tokens
   (batch 32, bf16);
3. start the tuneloop inference service (``INFERENCE_ENGINE=vllm``) and point alias ``bot`` at
   v1 (deploys it: vllm serve + smoke check);
4. throughput through the service (256 concurrent requests x 128 tokens), and directly
   against the vLLM engine in the same run (proxy overhead on GPU);
5. hot-swap ``bot`` to v2 while 16 clients (half streaming) keep calling it: zero failed
   requests, answers after the flip come from v2; GPU memory sampled during the swap;
6. if time is left: vLLM sleep mode (level 1) on the serving engine: memory freed, wakes up
   and answers again.

Writes ``$OUT/inference_gpu.json`` (or ``bench/results/inference_gpu.json``) after every step,
so a run cut short still reports what it measured.

``--tiny --engine transformers`` runs the same flow on CPU with tiny models (a dry run of the
script itself; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
V1, V2 = "mv-0000000000000b01", "mv-0000000000000b02"
ADMIN = "bench-admin"
RESULT: dict = {"bench": "inference_gpu", "when": None, "machine": {}, "results": [],
                "notes": [], "steps": {}}
T0 = time.monotonic()


def out_path() -> Path:
    out = os.environ.get("OUT")
    return Path(out) / "inference_gpu.json" if out else ROOT / "bench/results/inference_gpu.json"


def save() -> None:
    RESULT["when"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    RESULT["elapsed_s"] = round(time.monotonic() - T0, 1)
    path = out_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(RESULT, indent=2))


def step(name: str, **data) -> None:
    RESULT["steps"][name] = data
    print(f"[{time.monotonic() - T0:6.1f}s] {name}: {json.dumps(data)[:600]}", flush=True)
    save()


def metric(name: str, value: float, unit: str, baseline=None, **extra) -> None:  # noqa: ANN001
    ratio = round(value / baseline, 3) if baseline else None
    RESULT["results"].append({"metric": name, "value": round(value, 3), "unit": unit,
                              "baseline": None if baseline is None else round(baseline, 3),
                              "ratio": ratio, **extra})
    save()


# ------------------------------------------------------------------------------ models
def build_model(out: Path, seed: int, tiny: bool) -> int:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT / "shared/src"))
    from tuneloop.examples.support_tickets import corpus_text
    from tuneloop.testing.models import GENERAL_TEXT, build_tokenizer

    tok = build_tokenizer(corpus_text(3000, seed=7) + GENERAL_TEXT * 20, vocab_size=8192)
    torch.manual_seed(seed)
    if tiny:
        cfg = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2)
    else:  # Llama-3.2-1B shapes; 18 layers so that the small vocabulary still gives >= 1B
        cfg = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=18,
                   num_attention_heads=32, num_key_value_heads=8)
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096,
                         tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, bos_token_id=None,
                         rope_theta=500000.0, **cfg)
    device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id, do_sample=False)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


PROMPTS = [f"Ticket {i}: my order #{1000 + i} arrived damaged and the invoice is wrong. "
           "Please classify this ticket and reply to the customer." for i in range(256)]


def hf_generate_baseline(model_dir: Path, tiny: bool, new_tokens: int, batch: int = 32) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(device)
    model.eval()
    prompts = PROMPTS[: 32 if tiny else 256]

    def run(ps: list[str]) -> int:
        enc = tok(ps, return_tensors="pt", padding=True).to(device)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, pad_token_id=tok.pad_token_id)
        return int((out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0])

    run(prompts[:batch])  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    tokens = sum(run(prompts[i:i + batch]) for i in range(0, len(prompts), batch))
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": tokens / seconds,
            "batch": batch, "prompts": len(prompts)}


# ------------------------------------------------------------------------------ GPU memory
class GpuMemory(threading.Thread):
    """Samples nvidia-smi (total used + per process) until stopped."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, int]] = []
        self.per_process_peak: dict[str, int] = {}
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                used = subprocess.run(["nvidia-smi", "--query-gpu=memory.used",
                                       "--format=csv,noheader,nounits"], capture_output=True,
                                      text=True, timeout=10).stdout.split()
                self.samples.append((time.monotonic(), int(used[0])))
                apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                       "--format=csv,noheader,nounits"], capture_output=True,
                                      text=True, timeout=10).stdout.strip().splitlines()
                for line in apps:
                    pid, mem = [x.strip() for x in line.split(",")]
                    self.per_process_peak[pid] = max(self.per_process_peak.get(pid, 0), int(mem))
            except Exception:  # no nvidia-smi (CPU dry run)
                return
            self.stop_flag.wait(0.5)

    def peak(self) -> int | None:
        return max((m for _, m in self.samples), default=None)


def gpu_used_mib() -> int | None:
    try:
        return int(subprocess.run(["nvidia-smi", "--query-gpu=memory.used",
                                   "--format=csv,noheader,nounits"], capture_output=True,
                                  text=True, timeout=10).stdout.split()[0])
    except Exception:
        return None


# ------------------------------------------------------------------------------ load
async def throughput(url: str, model: str, n: int, new_tokens: int, ignore_eos: bool) -> dict:
    limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def one(prompt: str) -> int:
            body = {"model": model, "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": new_tokens, "temperature": 0}
            if ignore_eos:
                body["ignore_eos"] = True
            r = await client.post("/v1/chat/completions", json=body)
            r.raise_for_status()
            return r.json()["usage"]["completion_tokens"]

        await one(PROMPTS[0])  # warm-up
        t = time.perf_counter()
        tokens = await asyncio.gather(*(one(p) for p in PROMPTS[:n]))
        seconds = time.perf_counter() - t
    return {"tokens": sum(tokens), "seconds": round(seconds, 2),
            "tokens_per_s": sum(tokens) / seconds, "requests": n}


async def swap_under_load(url: str, admin: httpx.Client, target: str, workers: int,
                          ignore_eos: bool) -> dict:
    client = httpx.AsyncClient(base_url=url, timeout=600)
    stop, record, errors = asyncio.Event(), [], []

    async def worker(i: int) -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            body = {"model": "bot", "messages": [{"role": "user", "content": PROMPTS[i]}],
                    "max_tokens": 32, "stream": bool(i % 2)}
            if ignore_eos:
                body["ignore_eos"] = True
            try:
                if i % 2:
                    models = set()
                    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                        r.raise_for_status()
                        async for line in r.aiter_lines():
                            if line.startswith("data: {"):
                                chunk = json.loads(line[6:])
                                if "error" in chunk:
                                    raise RuntimeError(chunk["error"])
                                models.add(chunk["model"])
                    model = models.pop() if len(models) == 1 else f"mixed:{models}"
                else:
                    r = await client.post("/v1/chat/completions", json=body)
                    r.raise_for_status()
                    model = r.json()["model"]
                record.append((t0, time.monotonic(), model))
            except Exception as exc:
                errors.append(repr(exc)[:300])

    tasks = [asyncio.create_task(worker(i)) for i in range(workers)]
    while len(record) < workers and not errors:
        await asyncio.sleep(0.1)
    mem = GpuMemory()
    mem.start()
    t_start = time.monotonic()
    resp = await asyncio.to_thread(admin.put, "/admin/aliases/bot", json={"model": target})
    t_done = time.monotonic()
    n = len(record)
    while len(record) < n + 4 * workers and not errors and time.monotonic() - t_done < 60:
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.gather(*tasks)
    mem.stop_flag.set()
    await client.aclose()
    after = [m for t0, _, m in record if t0 > t_done]
    before = [m for _, t1, m in record if t1 < t_start]
    return {"status": resp.status_code, "response": resp.json(), "requests": len(record),
            "errors": len(errors), "error_samples": errors[:5],
            "served_before": sorted(set(before)), "served_after_flip": sorted(set(after)),
            "requests_after_flip": len(after), "swap_call_seconds": round(t_done - t_start, 2),
            "gpu_peak_used_mib": mem.peak(), "gpu_per_process_peak_mib": mem.per_process_peak}


# ------------------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default="vllm")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--work", default="/tmp/tl-bench")
    ap.add_argument("--budget-s", type=float, default=560)
    args = ap.parse_args()
    new_tokens = 16 if args.tiny else 128
    n_prompts = 16 if args.tiny else 256
    ignore_eos = args.engine == "vllm"

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    store = work / "var/artifacts"
    import torch

    RESULT["machine"] = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available()
                         else None, "cpu_count": os.cpu_count(), "torch": torch.__version__}
    try:
        import vllm

        RESULT["machine"]["vllm"] = vllm.__version__
    except Exception:
        pass
    t = time.monotonic()
    params = build_model(store / f"models/{V1}/merged", 0, args.tiny)
    build_model(store / f"models/{V2}/merged", 1, args.tiny)
    step("models_built", params=params, seconds=round(time.monotonic() - t, 1))

    base = hf_generate_baseline(store / f"models/{V1}/merged", args.tiny, new_tokens)
    step("hf_generate_baseline", **base)

    sys.path.insert(0, str(ROOT / "shared/src"))
    from tuneloop.testing.process import ServiceProcess

    env = {"TUNELOOP_DATA_DIR": str(work / "var"), "INFERENCE_ADMIN_KEY": ADMIN,
           "INFERENCE_ENGINE": args.engine, "INFERENCE_GPU_MEMORY_UTILIZATION": "0.40",
           "INFERENCE_VLLM_MAX_MODEL_LEN": "2048", "INFERENCE_REPLICA_ID": "gpu-replica",
           "INFERENCE_VLLM_EXTRA_ARGS": "--enable-sleep-mode" if args.engine == "vllm" else "",
           "VLLM_SERVER_DEV_MODE": "1", "TUNELOOP_LOG_JSON": "false",
           # this bench calls the OpenAI routes itself, without the service token
           "TUNELOOP_SERVICE_AUTH": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "shared/src"),
                                          str(ROOT / "services/inference/src"),
                                          os.environ.get("PYTHONPATH", "")])}
    svc = ServiceProcess("tuneloop_inference", env=env, log_path=work / "service.log",
                         startup_timeout=120)
    svc.start()
    admin = httpx.Client(base_url=svc.url, timeout=900,
                         headers={"Authorization": f"Bearer {ADMIN}"})
    try:
        t = time.monotonic()
        r = admin.put("/admin/aliases/bot", json={"model": V1})
        step("deploy_v1", status=r.status_code, seconds=round(time.monotonic() - t, 1),
             gpu_used_mib=gpu_used_mib(), body=r.json())
        if r.status_code != 200:
            return 1
        dep = next(d for d in admin.get("/admin/deployments").json()["data"] if d["model"] == V1)
        engine_url = dep["local"]["url"]

        runs = []
        for _ in range(2):  # alternate, so neither side gets the cold first batch only
            runs.append(("direct", asyncio.run(throughput(engine_url, V1, n_prompts, new_tokens,
                                                          ignore_eos))))
            runs.append(("via", asyncio.run(throughput(svc.url, "bot", n_prompts, new_tokens,
                                                       ignore_eos))))
        via = max((r for k, r in runs if k == "via"), key=lambda r: r["tokens_per_s"])
        direct = max((r for k, r in runs if k == "direct"), key=lambda r: r["tokens_per_s"])
        step("throughput", via_service=via, direct_engine=direct, all_runs=runs)
        metric(f"{args.engine}_via_service_output_tokens_per_s ({n_prompts} prompts x "
               f"{new_tokens} tokens)", via["tokens_per_s"], "tokens/s",
               baseline=base["tokens_per_s"], baseline_is="transformers generate, batch 32, "
               "same GPU, same model")
        metric("service_vs_direct_engine_throughput", via["tokens_per_s"], "tokens/s",
               baseline=direct["tokens_per_s"], baseline_is="same requests straight to vllm")

        swap = asyncio.run(swap_under_load(svc.url, admin, V2, 16, ignore_eos))
        step("swap_under_load", **swap)
        metric("swap_failed_requests", swap["errors"], "requests",
               requests_during_swap=swap["requests"])
        metric("swap_seconds (load v2 + smoke + flip + drain/stop v1)",
               swap["response"].get("swap", {}).get("seconds", swap["swap_call_seconds"]), "s")
        if swap["gpu_peak_used_mib"]:
            metric("gpu_peak_used_during_swap", swap["gpu_peak_used_mib"], "MiB")

        if args.engine == "vllm" and time.monotonic() - T0 < args.budget_s - 40:
            step("sleep_mode", **sleep_mode_check(admin))
    finally:
        admin.close()
        svc.stop(timeout=60)
        try:
            RESULT["service_log_tail"] = (work / "service.log").read_text()[-3000:]
            logs = sorted((work / "var/logs/engines").glob("*.log"))
            RESULT["engine_log_tails"] = {p.name: p.read_text()[-1500:] for p in logs}
        except OSError:
            pass
        save()
    return 0


def sleep_mode_check(admin: httpx.Client) -> dict:
    """vLLM sleep mode level 1 on the serving engine (needs --enable-sleep-mode, dev mode)."""
    dep = next(d for d in admin.get("/admin/deployments").json()["data"]
               if d["state"] == "ready" and d["model"] == V2)
    url = dep["local"]["url"]
    out: dict = {"before_mib": gpu_used_mib()}
    with httpx.Client(base_url=url, timeout=300) as c:
        t = time.monotonic()
        r = c.post("/sleep", params={"level": 1})
        out["sleep_status"], out["sleep_s"] = r.status_code, round(time.monotonic() - t, 2)
        out["asleep_mib"] = gpu_used_mib()
        out["is_sleeping"] = c.get("/is_sleeping").text[:100]
        t = time.monotonic()
        r = c.post("/wake_up")
        out["wake_status"], out["wake_s"] = r.status_code, round(time.monotonic() - t, 2)
        out["awake_mib"] = gpu_used_mib()
        r = c.post("/v1/chat/completions", json={"model": V2, "max_tokens": 8, "messages": [
            {"role": "user", "content": "hello"}]})
        out["answers_after_wake"] = r.status_code == 200
    return out


if __name__ == "__main__":
    sys.exit(main())

"""GPU bench of tensor parallelism through the inference service (needs 2 GPUs: nvidia-h200-x2).

One run, in this order:
1. build two Llama-3.2-1B-shaped model versions (random weights, seeds 0 and 1; the same
   builder as ``inference_gpu.py``) in an artifact store;
2. start the tuneloop inference service (``INFERENCE_ENGINE=vllm``,
   ``INFERENCE_GPU_MEMORY_UTILIZATION=0.45``) and create a deployment of v1 with
   ``tensor_parallel_size=2`` (the controller places it on GPUs 0,1); point alias ``bot`` at it;
3. the official OpenAI client answers through the service; throughput through the service
   (256 concurrent requests x 128 tokens);
4. hot-swap ``bot`` to v2 while 16 clients (half streaming) keep calling it: v2 inherits
   tensor_parallel_size=2 and is placed on the same two GPUs next to v1 (0.45 + 0.45 each);
   failed requests counted, per-GPU memory sampled, ``/admin/gpus`` before/during/after.

Run on the device (vLLM payload, see ../shared/gpu/README.md; 5 part commands first):
    source .gpu/device-setup.sh vllm && PYTHONPATH=shared/src:services/inference/src:$PYTHONPATH \\
        python bench/inference_tp.py
Writes ``$OUT/inference_tp.json`` (else ``bench/results/inference_tp.json``) after every step.
``--tiny --engine transformers --tp 1`` is a CPU dry run of the script (numbers mean nothing;
the CPU engine has no tensor parallelism).
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
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "shared/src"))
from inference_gpu import build_model, swap_under_load, throughput  # noqa: E402

V1, V2 = "mv-00000000000tp001", "mv-00000000000tp002"
ADMIN = "bench-admin"
RESULT: dict = {"bench": "inference_tp", "when": None, "machine": {}, "results": [],
                "notes": [], "steps": {}}
T0 = time.monotonic()


def save() -> None:
    RESULT["when"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    RESULT["elapsed_s"] = round(time.monotonic() - T0, 1)
    out = os.environ.get("OUT")
    path = Path(out) / "inference_tp.json" if out else ROOT / "bench/results/inference_tp.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(RESULT, indent=2))


def step(name: str, **data) -> None:
    RESULT["steps"][name] = data
    print(f"[{time.monotonic() - T0:6.1f}s] {name}: {json.dumps(data)[:600]}", flush=True)
    save()


def metric(name: str, value: float, unit: str, baseline=None, **extra) -> None:  # noqa: ANN001
    RESULT["results"].append({"metric": name, "value": round(value, 3), "unit": unit,
                              "baseline": None if baseline is None else round(baseline, 3),
                              "ratio": round(value / baseline, 3) if baseline else None, **extra})
    save()


def gpu_memory() -> dict[str, int]:
    """Used MiB per GPU index (empty without nvidia-smi)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=10).stdout
    except Exception:
        return {}
    return {i.strip(): int(m) for i, m in (x.split(",") for x in out.strip().splitlines() if x)}


class PerGpuPeak(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak: dict[str, int] = {}
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            for g, m in gpu_memory().items():
                self.peak[g] = max(self.peak.get(g, 0), m)
            self.stop_flag.wait(0.5)


def openai_answer(url: str) -> dict:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
    resp = client.chat.completions.create(model="bot", max_tokens=24, messages=[
        {"role": "user", "content": "Classify this ticket: my invoice is wrong."}])
    models = [m.id for m in client.models.list().data]
    return {"model": resp.model, "content": resp.choices[0].message.content,
            "completion_tokens": resp.usage.completion_tokens, "listed": models}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default="vllm")
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--work", default="/tmp/tl-bench-tp")
    ap.add_argument("--vllm-args", default="--enforce-eager",
                    help="INFERENCE_VLLM_EXTRA_ARGS (eager: no compile/graph capture, so two "
                         "engine starts fit one device command)")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    store = work / "var/artifacts"
    import torch

    RESULT["machine"] = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                         "gpus": torch.cuda.device_count(), "cpu_count": os.cpu_count(),
                         "torch": torch.__version__}
    try:
        import vllm

        RESULT["machine"]["vllm"] = vllm.__version__
    except Exception:
        pass
    t = time.monotonic()
    params = build_model(store / f"models/{V1}/merged", 0, args.tiny)
    build_model(store / f"models/{V2}/merged", 1, args.tiny)
    step("models_built", params=params, seconds=round(time.monotonic() - t, 1))

    from tuneloop.testing.process import ServiceProcess

    env = {"TUNELOOP_DATA_DIR": str(work / "var"), "INFERENCE_ADMIN_KEY": ADMIN,
           "INFERENCE_ENGINE": args.engine, "INFERENCE_GPU_MEMORY_UTILIZATION": "0.45",
           "INFERENCE_VLLM_MAX_MODEL_LEN": "2048", "INFERENCE_REPLICA_ID": "tp-replica",
           "INFERENCE_VLLM_EXTRA_ARGS": args.vllm_args if args.engine == "vllm" else "",
           "TUNELOOP_LOG_JSON": "false",
           # this bench calls the OpenAI routes itself, without the service token
           "TUNELOOP_SERVICE_AUTH": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "shared/src"),
                                          str(ROOT / "services/inference/src"),
                                          os.environ.get("PYTHONPATH", "")])}
    svc = ServiceProcess("tuneloop_inference", env=env, log_path=work / "service.log",
                         startup_timeout=120)
    svc.start()
    admin = httpx.Client(base_url=svc.url, timeout=900, headers={"Authorization": f"Bearer {ADMIN}"})
    try:
        t = time.monotonic()
        r = admin.post("/admin/deployments", params={"wait": "true"},
                       json={"model_id": V1, "tensor_parallel_size": args.tp})
        body = r.json()
        step("deploy_v1_tp", status=r.status_code, seconds=round(time.monotonic() - t, 1),
             state=body.get("state"), local=body.get("local"), error=body.get("error"),
             gpu_memory_mib=gpu_memory(), placement=admin.get("/admin/gpus").json())
        if r.status_code not in (200, 201) or body.get("state") != "ready":
            return 1
        metric(f"deployment_ready_seconds (tensor_parallel_size={args.tp})",
               time.monotonic() - t, "s")
        r = admin.put("/admin/aliases/bot", json={"model": V1})
        step("alias_bot_v1", status=r.status_code)
        ans = openai_answer(svc.url)
        step("openai_client_answer", **ans)
        metric("openai_client_answered", 1.0 if ans["completion_tokens"] >= 1 else 0.0, "bool")

        n, new_tokens = (16, 16) if args.tiny else (256, 128)
        thr = asyncio.run(throughput(svc.url, "bot", n, new_tokens, args.engine == "vllm"))
        step("throughput_tp", **thr)
        metric(f"output_tokens_per_s via service, tensor_parallel_size={args.tp} ({n} prompts x "
               f"{new_tokens} tokens)", thr["tokens_per_s"], "tokens/s",
               note="single-GPU reference: bench/results/inference_gpu.json (compiled engine)")

        peak = PerGpuPeak()
        peak.start()
        during: dict = {}

        def snapshot() -> None:  # /admin/gpus while the green engine is coming up
            while not peak.stop_flag.is_set():
                g = admin.get("/admin/gpus").json()
                if len(g.get("placements", {})) > len(during.get("placements", {})):
                    during.update(g)
                peak.stop_flag.wait(1.0)

        threading.Thread(target=snapshot, daemon=True).start()
        swap = asyncio.run(swap_under_load(svc.url, admin, V2, 16, args.engine == "vllm"))
        peak.stop_flag.set()
        swap.pop("gpu_peak_used_mib", None)
        step("swap_under_load", **swap, gpu_peak_mib_per_gpu=peak.peak, placement_during=during,
             placement_after=admin.get("/admin/gpus").json())
        metric(f"swap_failed_requests (tensor_parallel_size={args.tp} deployment, 16 clients)",
               swap["errors"], "requests", requests_during_swap=swap["requests"])
        metric(f"swap_seconds (load v2 on {args.tp} GPU(s) + smoke + flip + drain/stop v1)",
               swap["response"].get("swap", {}).get("seconds", swap["swap_call_seconds"]), "s")
        deps = {d["model"]: d for d in admin.get("/admin/deployments").json()["data"]}
        step("deployments_after", **{k: {"state": v["state"], "tp": v["tensor_parallel_size"],
                                         "gpus": (v.get("local") or {}).get("gpus")}
                                     for k, v in deps.items()})
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


if __name__ == "__main__":
    sys.exit(main())

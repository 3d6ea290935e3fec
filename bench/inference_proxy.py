"""CPU bench of the inference controller: proxy overhead vs. calling the engine directly, and
swap duration with zero failed requests (``python bench/inference_proxy.py``).

Same run, same engine process (``transformers serve`` on a tiny local model):
- latency: sequential requests (``max_tokens=1``), direct and through the service interleaved
  one by one; reported: p50 added latency (target <= 2 ms);
- throughput: 8 concurrent clients, direct and via the service in alternating rounds;
  reported: service/direct ratio (target >= 0.95);
- swap: 8 clients on alias ``bot`` during (a) a full blue/green swap that loads a new version
  and (b) a flip to a version that is already loaded; reported: duration and failed requests.

Writes ``bench/results/inference_proxy.json``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "bench-admin"
TOKEN = "bench-service-token-0123456789"  # the OpenAI routes are internal (service token)
AUTH = {"Authorization": f"Bearer {TOKEN}"}  # the engine ignores it: same request both ways
MESSAGES = [{"role": "user", "content": "My invoice is wrong, please help."}]


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 2 else values[0]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency(direct_url: str, service_url: str, model: str, n: int, pid: int) -> dict:
    body = {"model": model, "messages": MESSAGES, "max_tokens": 1, "temperature": 0}
    times: dict[str, list[float]] = {"direct": [], "service": []}
    with httpx.Client(timeout=60, headers=AUTH) as c:
        for _ in range(10):  # warm-up both paths (connections, caches)
            c.post(direct_url + "/v1/chat/completions", json=body).raise_for_status()
            c.post(service_url + "/v1/chat/completions", json=body).raise_for_status()
        cpu0 = cpu_seconds(pid)
        for i in range(2 * n):
            which = ("direct", "service")[(i + i // 2) % 2]
            url = direct_url if which == "direct" else service_url
            t = time.perf_counter()
            c.post(url + "/v1/chat/completions", json=body).raise_for_status()
            times[which].append(time.perf_counter() - t)
        service_cpu_ms = (cpu_seconds(pid) - cpu0) / n * 1e3
    d50, s50 = statistics.median(times["direct"]), statistics.median(times["service"])
    return {"requests_each": n, "direct_p50_ms": d50 * 1e3, "service_p50_ms": s50 * 1e3,
            "direct_p90_ms": pct(times["direct"], 90) * 1e3,
            "service_p90_ms": pct(times["service"], 90) * 1e3,
            "added_p50_ms": (s50 - d50) * 1e3, "service_cpu_ms_per_request": service_cpu_ms}


async def _throughput_round(url: str, model: str, workers: int, per_worker: int,
                            max_tokens: int) -> float:
    limits = httpx.Limits(max_connections=workers * 2)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits, headers=AUTH) as client:
        body = {"model": model, "messages": MESSAGES, "max_tokens": max_tokens,
                "temperature": 0}
        tokens = 0

        async def worker() -> None:
            nonlocal tokens
            for _ in range(per_worker):
                r = await client.post("/v1/chat/completions", json=body)
                r.raise_for_status()
                tokens += r.json()["usage"]["completion_tokens"]

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        return tokens / (time.perf_counter() - t)


def throughput(direct_url: str, service_url: str, model: str, rounds: int = 3) -> dict:
    runs: dict[str, list[float]] = {"direct": [], "service": []}
    for _ in range(rounds):
        for which, url, name in (("direct", direct_url, model), ("service", service_url, "base")):
            runs[which].append(asyncio.run(_throughput_round(url, name, 8, 12, 16)))
    d, s = statistics.median(runs["direct"]), statistics.median(runs["service"])
    return {"direct_tokens_per_s": d, "service_tokens_per_s": s, "ratio": s / d,
            "runs": runs, "clients": 8}


async def _swap(service_url: str, admin: httpx.Client, target: str) -> dict:
    stop, done, errors = asyncio.Event(), [], []
    async with httpx.AsyncClient(base_url=service_url, timeout=300, headers=AUTH) as client:
        async def worker(i: int) -> None:
            while not stop.is_set():
                body = {"model": "bot", "messages": MESSAGES, "max_tokens": 8,
                        "stream": bool(i % 2)}
                try:
                    if i % 2:
                        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                            r.raise_for_status()
                            async for line in r.aiter_lines():
                                if line.startswith('data: {"error"'):
                                    raise RuntimeError(line)
                    else:
                        (await client.post("/v1/chat/completions", json=body)).raise_for_status()
                    done.append(time.monotonic())
                except Exception as exc:
                    errors.append(repr(exc)[:200])

        tasks = [asyncio.create_task(worker(i)) for i in range(8)]
        while len(done) < 8 and not errors:
            await asyncio.sleep(0.05)
        t = time.perf_counter()
        resp = await asyncio.to_thread(admin.put, "/admin/aliases/bot", json={"model": target})
        seconds = time.perf_counter() - t
        n = len(done)
        while len(done) < n + 8 and not errors:
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*tasks)
    return {"status": resp.status_code, "seconds": seconds, "requests": len(done),
            "failed": len(errors), "errors": errors[:3],
            "server_swap": resp.json().get("swap")}


def main() -> int:
    sys.path.insert(0, str(ROOT / "shared/src"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tuneloop.testing.models import build_tiny_model
    from tuneloop.testing.process import ServiceProcess

    work = Path(tempfile.mkdtemp(prefix="tl-inference-bench-"))
    v1 = build_tiny_model(work / "v1", seed=0)
    v2 = build_tiny_model(work / "v2", seed=1)
    v3_id = "mv-00000000000000c3"   # published like the trainer does; the swap loads it
    build_tiny_model(work / "var/artifacts/models" / v3_id / "merged", seed=2)
    env = {"TUNELOOP_DATA_DIR": str(work / "var"), "INFERENCE_ADMIN_KEY": ADMIN,
           "INFERENCE_ENGINE": "transformers", "INFERENCE_BASE_MODEL_PATH": str(v1),
           "TUNELOOP_LOG_JSON": "true", "INFERENCE_REPLICA_ID": "bench",
           "TUNELOOP_SERVICE_AUTH": "true", "TUNELOOP_SERVICE_TOKEN": TOKEN}
    svc = ServiceProcess("tuneloop_inference", env=env, log_path=work / "service.log",
                         health_path="/ready", startup_timeout=300).start()
    admin = httpx.Client(base_url=svc.url, timeout=600,
                         headers={"Authorization": f"Bearer {ADMIN}"})
    try:
        dep = admin.get("/admin/deployments").json()["data"][0]
        direct = dep["local"]["url"]
        lat = latency(direct, svc.url, "base", 300, svc.proc.pid)
        print("latency", lat, flush=True)
        thr = throughput(direct, svc.url, "base")
        print("throughput", thr, flush=True)
        admin.post("/admin/deployments?wait=true", json={"name": "v2", "path": str(v2)})
        admin.put("/admin/aliases/bot", json={"model": "v2", "retire_previous": False})
        full = asyncio.run(_swap(svc.url, admin, v3_id))
        print("swap (load + smoke + flip + drain + stop)", full, flush=True)
        admin.post("/admin/deployments?wait=true", json={"name": "v2", "path": str(v2)})
        flip = asyncio.run(_swap(svc.url, admin, "v2"))
        print("swap (flip + drain + stop)", flip, flush=True)
    finally:
        admin.close()
        svc.stop(timeout=60)

    result = {
        "bench": "inference_proxy",
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "results": [
            {"metric": "added_latency_p50", "value": round(lat["added_p50_ms"], 3), "unit": "ms",
             "baseline": round(lat["direct_p50_ms"], 3),
             "ratio": round(lat["service_p50_ms"] / lat["direct_p50_ms"], 3),
             "target": "<= 2 ms"},
            {"metric": "service_cpu_per_proxied_request", "unit": "ms",
             "value": round(lat["service_cpu_ms_per_request"], 3), "baseline": None,
             "ratio": None, "note": "CPU time of the service process (all threads) per "
             "request, from /proc; independent of queueing on the busy machine"},
            {"metric": "throughput_service_vs_direct", "value": round(thr["service_tokens_per_s"], 1),
             "unit": "tokens/s", "baseline": round(thr["direct_tokens_per_s"], 1),
             "ratio": round(thr["ratio"], 3), "target": ">= 0.95"},
            {"metric": "swap_seconds_with_load_of_new_version", "value": round(full["seconds"], 2),
             "unit": "s", "baseline": None, "ratio": None, "failed_requests": full["failed"],
             "requests_during": full["requests"]},
            {"metric": "swap_seconds_flip_and_drain_only", "value": round(flip["seconds"], 3),
             "unit": "s", "baseline": None, "ratio": None, "failed_requests": flip["failed"],
             "requests_during": flip["requests"]},
        ],
        "details": {"latency": lat, "throughput": thr, "swap_full": full, "swap_flip": flip},
        "notes": "One run on this shared 2-core machine, same engine process for both paths "
                 "(transformers serve, tiny random Llama, CPU). Latency: 300 sequential "
                 "requests each way, interleaved, max_tokens=1. Throughput: 8 concurrent "
                 "clients x 12 requests x 16 tokens, 3 alternating rounds, medians. Swaps: 8 "
                 "clients (half streaming) on the alias during the whole swap.",
    }
    out = ROOT / "bench/results/inference_proxy.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["results"], indent=1))
    return 0 if full["failed"] == 0 and flip["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Serving under load: failed requests and throughput straight to the engine, through the
inference service and through the gateway, with a hot swap inside the largest run.

For each concurrency C (``--gpu``: 256 and 1,024; ``--cpu``: small), N rounds per path, the
three paths interleaved round by round (engine, service, gateway, engine, ...) so that each
path's connection pools sit idle for the other two paths' rounds, as they did when the idle
keep-alive race cut rounds short (issue 15). One round = C concurrent non-streamed chat
requests of ``max_tokens`` tokens, each client a long-lived HTTP client (keep-alive shorter
than the servers' so the *client* side cannot hit the race it measures). A request that does
not answer 200 with a completion counts as failed (429 included: the bench's key has a
limit above the load). Throughput of a path = the median round's output tokens/s; ratio vs
the engine's median at the same C.

The hot swap: version v2 is deployed in the background while the smaller runs go on; in the
middle of a gateway round of the largest run alias ``bot`` flips v1 -> v2 (drain + stop v1).
Requests started after the flip must come from v2; the round counts its failures like any
other, and a separate row reports them.

Modes:
  ``--cpu``  small run on this machine (``make bench``): tiny local models, the CPU engine
             (``transformers serve``); writes ``bench/results/serve_load_cpu.json``.
  ``--gpu``  the H200 run: Llama-3.2-1B-shaped models (1.1 B parameters, random weights)
             built on the device, vLLM engines (``INFERENCE_ENGINE_MAX_NUM_SEQS=1024`` becomes
             ``--max-num-seqs``), 10 rounds each at 256 and 1,024 concurrent, 128 tokens
             (``ignore_eos``); writes ``$OUT/serve_load.json`` (else ``bench/results/``).
  ``--gpu --dry-run``  the same flow as ``--gpu`` on CPU (tiny models from the GPU builder,
             the CPU engine, small sizes); writes ``<work>/serve_load.json``.

A ``--budget-s`` guard skips rounds that would start too late (the JSON says how many ran),
and the JSON is written after every step, so a run cut short still reports what it measured.

On the H200 (no registry there; ../shared/gpu/README.md). Here, once:
``../shared/gpu/prepare-bundles.sh vllm`` and ``bench/device_deps.sh`` (the services' own deps,
9 MB, in .gpu/tl-deps). Then, back to back on one ``nvidia-h200``:

1. five calls ``source .gpu/device-setup.sh vllm-part``, carrying ``.gpu/vllm-part-aa`` (then
   -ab ... -ae) and ``.gpu/device-setup.sh``;
2. ``python3 -m pip install -q --no-index --no-deps --target /tmp/tldeps .gpu/tl-deps/*.whl``,
   carrying ``.gpu/tl-deps`` (14 MiB with uvloop + httptools: a call of its own, or beside a
   model part of <= 45 MiB; a call carries the work tree too, 64 MiB in all);
3. ``source .gpu/device-setup.sh vllm && source bench/device/env.sh &&
   python3 bench/serve_load.py --gpu``, carrying ``.gpu/vllm-deps``, ``.gpu/device-setup.sh``,
   ``.gpu/vllm.sha256`` (timeout 600 s). Expect ~8-9 minutes: models ~15 s, the first vLLM
   start 90-215 s (compile cache cold), 30 rounds at 256 (~3 s each), 30 at 1,024 (~6 s each);
   the second engine loads during the 256 run. Copy ``$OUT/serve_load.json`` to
   ``bench/results/serve_load.json``. ``--rounds 6`` fits ~6 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "shared/src"))

V1, V2 = "mv-00000000000051a1", "mv-00000000000051a2"
ADMIN = "tlk-serve-load-admin-key-0123456789"
INF_ADMIN = "serve-load-inference-admin"
SERVICE_TOKEN = "serve-load-service-token-0123456789abcdef"
RESULT: dict = {"bench": "serve_load", "when": None, "machine": {}, "config": {}, "results": [],
                "notes": [], "steps": {}, "rounds": []}
T0 = time.monotonic()
OUT_FILE: Path = ROOT / "bench/results/serve_load.json"


def save() -> None:
    RESULT["when"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    RESULT["elapsed_s"] = round(time.monotonic() - T0, 1)
    OUT_FILE.parent.mkdir(parents=True, exist_ok=True)
    OUT_FILE.write_text(json.dumps(RESULT, indent=1) + "\n")


def step(name: str, **data) -> None:  # noqa: ANN003
    RESULT["steps"][name] = data
    print(f"[{time.monotonic() - T0:6.1f}s] {name}: {json.dumps(data)[:500]}", flush=True)
    save()


def metric(name: str, value: float, unit: str, baseline: float | None = None, **extra) -> None:  # noqa: ANN003
    RESULT["results"].append({"metric": name, "value": round(value, 3), "unit": unit,
                              "baseline": None if baseline is None else round(baseline, 3),
                              "ratio": round(value / baseline, 3) if baseline else None,
                              **extra})
    save()


PROMPTS = [f"Ticket {i}: my order #{1000 + i} arrived damaged and the invoice is wrong. "
           "Please classify this ticket and reply to the customer." for i in range(64)]


@dataclass
class Path_:
    """One way to the model: its name, base URL, model name and headers."""

    name: str
    url: str
    model: str
    headers: dict[str, str] = field(default_factory=dict)
    client: httpx.AsyncClient | None = None


@dataclass
class Round:
    path: str
    concurrency: int
    index: int
    seconds: float = 0.0
    tokens: int = 0
    ok: int = 0
    failed: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    models: dict[str, int] = field(default_factory=dict)
    swap: dict | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


async def one_request(p: Path_, i: int, max_tokens: int, ignore_eos: bool, rnd: Round,
                      flip_done: list[float]) -> float:
    """One chat request; returns when it started. A request started after the alias flip
    returned is tagged ``after_flip:<model>``."""
    body = {"model": p.model, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": max_tokens, "temperature": 0}
    if ignore_eos:
        body["ignore_eos"] = True
    t0 = time.monotonic()
    try:
        r = await p.client.post("/v1/chat/completions", json=body, headers=p.headers)  # type: ignore[union-attr]
        key = str(r.status_code)
        if r.status_code != 200:
            rnd.failed += 1
            rnd.errors.append(f"{r.status_code}: {r.text[:200]}")
        else:
            data = r.json()
            n = (data.get("usage") or {}).get("completion_tokens") or 0
            if n < 1:
                rnd.failed += 1
                rnd.errors.append(f"200 without tokens: {str(data)[:200]}")
            else:
                rnd.ok += 1
                rnd.tokens += n
                model = data.get("model", "?")
                if flip_done and t0 > flip_done[0]:
                    model = "after_flip:" + model
                rnd.models[model] = rnd.models.get(model, 0) + 1
    except Exception as exc:  # noqa: BLE001 - every failure is counted, whatever it is
        key = exc.__class__.__name__
        rnd.failed += 1
        rnd.errors.append(repr(exc)[:200])
    rnd.statuses[key] = rnd.statuses.get(key, 0) + 1
    return t0


async def run_round(p: Path_, concurrency: int, index: int, max_tokens: int, ignore_eos: bool,
                    swap: "Swap | None" = None) -> Round:
    """``concurrency`` clients, one request each; in the swap round every client keeps sending
    until it has sent one request after the flip call returned (traffic spans the flip)."""
    rnd = Round(p.name, concurrency, index)
    flip_done: list[float] = []

    async def client(i: int) -> None:
        while True:
            started = await one_request(p, i, max_tokens, ignore_eos, rnd, flip_done)
            if swap is None or (flip_done and started > flip_done[0]):
                return

    t = time.perf_counter()
    tasks = [asyncio.create_task(client(i)) for i in range(concurrency)]
    if swap is not None:
        rnd.swap = await swap.flip_during(rnd, concurrency, flip_done)
    await asyncio.gather(*tasks)
    rnd.seconds = time.perf_counter() - t
    return rnd


class Swap:
    """Deploys v2 in the background, then flips alias ``bot`` to it in the middle of a round."""

    def __init__(self, admin: httpx.Client) -> None:
        self.admin = admin
        self.deploy_result: dict = {}
        self.thread = threading.Thread(target=self._deploy, daemon=True)

    def start_deploy(self) -> None:
        self.thread.start()

    def _deploy(self) -> None:
        t = time.monotonic()
        try:
            r = self.admin.post("/admin/deployments", params={"wait": "true"},
                                json={"model_id": V2})
            body = r.json()
            self.deploy_result = {"status": r.status_code, "state": body.get("state"),
                                  "error": body.get("error"),
                                  "seconds": round(time.monotonic() - t, 1),
                                  "ready_at_s": round(time.monotonic() - T0, 1)}
        except Exception as exc:  # noqa: BLE001
            self.deploy_result = {"error": repr(exc)[:300]}

    def wait_deployed(self, timeout: float) -> dict:
        self.thread.join(timeout)
        return self.deploy_result

    async def flip_during(self, rnd: Round, concurrency: int, flip_done: list[float]) -> dict:
        """Once a tenth of the round has answered, flip the alias (v2 already loaded) and wait
        for the call to return (flip + drain + stop of v1)."""
        while rnd.ok + rnd.failed < max(1, concurrency // 10):
            await asyncio.sleep(0.01)
        t = time.monotonic()
        answered = rnd.ok + rnd.failed
        try:
            r = await asyncio.to_thread(self.admin.put, "/admin/aliases/bot", json={"model": V2})
            status, body = r.status_code, r.json()
        except Exception as exc:  # noqa: BLE001
            status, body = 0, {"error": repr(exc)[:300]}
        finally:
            flip_done.append(time.monotonic())
        return {"status": status, "seconds": round(time.monotonic() - t, 2),
                "answered_before_flip": answered, "swap": body.get("swap"),
                "error": body.get("error")}


def build_models(store: Path, mode: str) -> int:
    if mode == "cpu":
        from tuneloop.testing.models import build_tiny_model

        build_tiny_model(store / f"models/{V1}/merged", seed=0)
        build_tiny_model(store / f"models/{V2}/merged", seed=1)
        return 0
    from inference_gpu import build_model

    params = build_model(store / f"models/{V1}/merged", 0, tiny=mode == "dry-run")
    build_model(store / f"models/{V2}/merged", 1, tiny=mode == "dry-run")
    import torch

    if torch.cuda.is_available():  # give the GPU memory back before the engines measure it
        import gc

        gc.collect()
        torch.cuda.empty_cache()
    return params


def start_services(work: Path, engine: str, max_num_seqs: int, vllm_args: str):  # noqa: ANN201
    from tuneloop.testing.process import ServiceProcess

    pythonpath = os.pathsep.join([str(ROOT / "shared/src"), str(ROOT / "services/inference/src"),
                                  str(ROOT / "services/gateway/src"),
                                  os.environ.get("PYTHONPATH", "")])
    common = {"TUNELOOP_DATA_DIR": str(work / "var"), "TUNELOOP_LOG_JSON": "false",
              "TUNELOOP_LOG_LEVEL": "WARNING", "TUNELOOP_SERVICE_TOKEN": SERVICE_TOKEN,
              "TUNELOOP_SERVICE_AUTH": "true",
              "HF_HUB_OFFLINE": "1", "PYTHONPATH": pythonpath}
    inference = ServiceProcess("tuneloop_inference", log_path=work / "inference.log",
                               startup_timeout=180, env={
        **common, "INFERENCE_ADMIN_KEY": INF_ADMIN, "INFERENCE_ENGINE": engine,
        "INFERENCE_GPU_MEMORY_UTILIZATION": "0.40", "INFERENCE_VLLM_MAX_MODEL_LEN": "2048",
        "INFERENCE_ENGINE_MAX_NUM_SEQS": str(max_num_seqs),
        "INFERENCE_VLLM_EXTRA_ARGS": vllm_args if engine == "vllm" else "",
        "INFERENCE_REPLICA_ID": "serve-load"}).start()
    gateway = ServiceProcess("tuneloop_gateway", log_path=work / "gateway.log",
                             startup_timeout=120, env={
        **common, "GATEWAY_BOOTSTRAP_ADMIN_KEY": ADMIN, "INFERENCE_ADMIN_KEY": INF_ADMIN,
        "TUNELOOP_INFERENCE_URL": inference.url, "GATEWAY_RECONCILE_INTERVAL_S": "0",
        # dataset and trainer are not part of this bench: nothing listens there
        "TUNELOOP_DATASET_URL": "http://127.0.0.1:9", "TUNELOOP_TRAINER_URL": "http://127.0.0.1:9"})
    try:
        gateway.start()
    except Exception:
        inference.stop(timeout=60)
        raise
    return inference, gateway


def summarise(rounds: list[Round], sizes: list[int], n_rounds: int) -> None:
    for c in sizes:
        by_path = {p: [r for r in rounds if r.path == p and r.concurrency == c]
                   for p in ("engine", "service", "gateway")}
        direct = statistics.median([r.tokens_per_s for r in by_path["engine"]] or [0.0])
        for p, rs in by_path.items():
            if not rs:
                continue
            failed = sum(r.failed for r in rs)
            label = {"engine": "engine_direct", "service": "service",
                     "gateway": "gateway"}[p]
            metric(f"{label}_failed_requests (C={c}, {len(rs)} of {n_rounds} rounds)", failed,
                   "requests", requests=sum(r.ok + r.failed for r in rs),
                   rounds_with_failures=sum(1 for r in rs if r.failed))
            med = statistics.median([r.tokens_per_s for r in rs])
            metric(f"{label}_output_tokens_per_s (C={c}, median of {len(rs)} rounds)", med,
                   "tokens/s", baseline=None if p == "engine" else direct,
                   **({} if p == "engine" else {"baseline_is": "engine_direct, same C, same run"}))


def main() -> int:  # noqa: PLR0915
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode_g = ap.add_mutually_exclusive_group(required=True)
    mode_g.add_argument("--cpu", action="store_true", help="small CPU run (make bench)")
    mode_g.add_argument("--gpu", action="store_true", help="the H200 run (vLLM)")
    ap.add_argument("--dry-run", action="store_true", help="with --gpu: same flow on CPU, tiny")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per path and concurrency")
    ap.add_argument("--concurrency", default=None, help="comma-separated, e.g. 256,1024")
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--work", default=None, help="scratch folder (deleted first)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="skip rounds that would start after this many seconds")
    ap.add_argument("--vllm-args", default="", help="INFERENCE_VLLM_EXTRA_ARGS")
    args = ap.parse_args()
    from tuneloop.serve import raise_open_files_limit

    open_files = raise_open_files_limit()  # 1,024 clients per path: more than the default 1,024
    mode = "gpu" if args.gpu and not args.dry_run else ("dry-run" if args.gpu else "cpu")
    defaults = {"gpu": (10, "256,1024", 128, 520.0), "dry-run": (3, "4,8", 8, 900.0),
                "cpu": (5, "4,16", 16, 1200.0)}[mode]
    n_rounds = args.rounds or defaults[0]
    sizes = [int(x) for x in (args.concurrency or defaults[1]).split(",")]
    max_tokens = args.max_tokens or defaults[2]
    budget = args.budget_s or defaults[3]
    engine = "vllm" if mode == "gpu" else "transformers"
    ignore_eos = engine == "vllm"
    work = Path(args.work or f"/tmp/tl-serve-load-{mode}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    global OUT_FILE
    if mode == "cpu":
        OUT_FILE = ROOT / "bench/results/serve_load_cpu.json"
    elif mode == "dry-run":
        OUT_FILE = work / "serve_load.json"
    elif mode == "gpu" and os.environ.get("OUT"):
        OUT_FILE = Path(os.environ["OUT"]) / "serve_load.json"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    RESULT["machine"] = {"cpu": platform.processor() or platform.machine(),
                         "cpu_count": os.cpu_count(), "python": platform.python_version(),
                         "torch": torch.__version__,
                         "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for fast in ("uvloop", "httptools"):  # uvicorn's event loop and HTTP parser (else asyncio, h11)
        try:
            RESULT["machine"][fast] = __import__(fast).__version__
        except Exception:  # noqa: BLE001
            RESULT["machine"][fast] = None
    try:
        import vllm  # noqa: PLC0415

        RESULT["machine"]["vllm"] = vllm.__version__
    except Exception:  # noqa: BLE001 - CPU machines have none
        pass
    max_num_seqs = max(sizes)
    RESULT["config"] = {"mode": mode, "engine": engine, "rounds": n_rounds, "concurrency": sizes,
                        "max_tokens": max_tokens, "ignore_eos": ignore_eos,
                        "engine_max_num_seqs": max_num_seqs, "vllm_args": args.vllm_args,
                        "budget_s": budget, "open_files_limit": open_files}
    t = time.monotonic()
    params = build_models(work / "var/artifacts", mode)
    step("models_built", params=params, seconds=round(time.monotonic() - t, 1))

    inference, gateway = start_services(work, engine, max_num_seqs, args.vllm_args)
    admin = httpx.Client(base_url=inference.url, timeout=900,
                         headers={"Authorization": f"Bearer {INF_ADMIN}"})
    rounds: list[Round] = []
    try:
        t = time.monotonic()
        r = admin.put("/admin/aliases/bot", json={"model": V1})
        step("deploy_v1", status=r.status_code, seconds=round(time.monotonic() - t, 1),
             body=r.json())
        if r.status_code != 200:
            return 1
        gw_admin = httpx.Client(base_url=gateway.url, timeout=60,
                                headers={"Authorization": f"Bearer {ADMIN}"})
        r = gw_admin.post("/v1/keys", json={"name": "serve-load", "scopes": ["inference"],
                                            "rate_limit_rpm": 1_000_000})
        gw_admin.close()
        r.raise_for_status()
        key = r.json()["key"]
        swap = Swap(admin)
        swap.start_deploy()  # v2 loads while the smaller runs go on
        step("deploy_v2_started")
        rc = asyncio.run(load(inference.url, gateway.url, key, admin, swap, sizes, n_rounds,
                              max_tokens, ignore_eos, budget, rounds))
        summarise(rounds, sizes, n_rounds)  # the rows before teardown: a cut-off stop loses none
    finally:
        admin.close()
        RESULT["log_tails"] = {p.name: p.read_text(errors="replace")[-2000:]
                               for p in (work / "inference.log", work / "gateway.log")
                               if p.exists()}
        save()
        gateway.stop(timeout=30)
        inference.stop(timeout=90)
    failed = sum(r.failed for r in rounds)
    if mode != "gpu":
        RESULT["notes"].append(
            "CPU: a tiny random model on transformers serve, on a machine whose 2 cores other "
            "work shares; rounds last a fraction of a second, so the throughput ratios are noise "
            "here. What this run shows is the failed counts and the flip; the ratio is the GPU "
            "run's.")
    RESULT["notes"].append(
        f"{mode} run: {len(rounds)} rounds, {failed} failed requests in all; paths interleaved "
        "round by round (engine, service, gateway), each path one long-lived client with "
        "keep-alive 2 s; throughput = median round; the swap row counts the failures of the "
        "round the alias flipped in.")
    save()
    print(json.dumps(RESULT["results"], indent=1))
    return 0 if rc == 0 and failed == 0 else 1


async def load(service_url: str, gateway_url: str, key: str, admin: httpx.Client, swap: Swap,
               sizes: list[int], n_rounds: int, max_tokens: int, ignore_eos: bool,
               budget: float, rounds: list[Round]) -> int:
    """The measured part: every size, every round, the three paths interleaved."""
    limits = httpx.Limits(max_connections=max(sizes) + 16, max_keepalive_connections=max(sizes) + 16,
                          keepalive_expiry=2.0)
    timeout = httpx.Timeout(900, connect=30)

    def engine_path() -> Path_:
        deps = admin.get("/admin/deployments").json()["data"]
        alias = admin.get("/admin/aliases/bot").json()
        target = alias.get("model") or alias.get("target") or V1
        dep = next(d for d in deps if d["model"] == target and (d.get("local") or {}).get("url"))
        return Path_("engine", dep["local"]["url"], target)

    paths = {"engine": engine_path(),
             "service": Path_("service", service_url, "bot",
                              {"Authorization": f"Bearer {SERVICE_TOKEN}"}),
             "gateway": Path_("gateway", gateway_url, "bot", {"Authorization": f"Bearer {key}"})}
    for p in paths.values():
        p.client = httpx.AsyncClient(base_url=p.url, timeout=timeout, limits=limits)
    rc = 0
    try:
        for p in paths.values():  # warm-up: one request each (not counted)
            warm = await run_round(p, 1, -1, max_tokens, ignore_eos)
            if warm.failed:
                step("warm_up_failed", path=p.name, errors=warm.errors)
                return 1
        largest = max(sizes)
        swap_round = min(1, n_rounds - 1)  # early in the largest run: inside it even if cut short
        for c in sizes:
            for i in range(n_rounds):
                for name in ("engine", "service", "gateway"):
                    if time.monotonic() - T0 > budget:
                        RESULT["notes"].append(f"budget of {budget:.0f}s reached before "
                                               f"C={c} round {i} ({name}); later rounds skipped")
                        save()
                        return rc
                    do_swap = c == largest and name == "gateway" and i == swap_round
                    if do_swap:
                        deployed = await asyncio.to_thread(swap.wait_deployed, 900)
                        step("v2_deployed", **deployed)
                        if deployed.get("state") != "ready":
                            rc = 1
                            do_swap = False
                    p = paths[name]
                    if name == "engine" and c == largest and i > swap_round:
                        p.url, p.model = (await asyncio.to_thread(engine_path)).url, V2
                        await p.client.aclose()  # type: ignore[union-attr]
                        p.client = httpx.AsyncClient(base_url=p.url, timeout=timeout,
                                                     limits=limits)
                    rnd = await run_round(p, c, i, max_tokens, ignore_eos,
                                          swap if do_swap else None)
                    rounds.append(rnd)
                    RESULT["rounds"].append({
                        "path": name, "C": c, "round": i,
                        "ended_at_s": round(time.monotonic() - T0, 1),
                        "seconds": round(rnd.seconds, 2),
                        "tokens_per_s": round(rnd.tokens_per_s, 1), "ok": rnd.ok,
                        "failed": rnd.failed, "statuses": rnd.statuses,
                        "errors": rnd.errors[:3], "models": rnd.models,
                        **({"swap": rnd.swap} if rnd.swap else {})})
                    print(f"[{time.monotonic() - T0:6.1f}s] C={c} round {i} {name}: "
                          f"{rnd.tokens_per_s:,.0f} tok/s, failed {rnd.failed}", flush=True)
                    save()
                    if rnd.swap:
                        after = {m: n for m, n in rnd.models.items() if m.startswith("after_flip:")}
                        wrong = sum(n for m, n in after.items() if not m.endswith(V2))
                        metric(f"gateway_swap_failed_requests (alias flip v1->v2 inside a C={c} "
                               f"round)", rnd.failed, "requests", requests=rnd.ok + rnd.failed,
                               flip_status=rnd.swap["status"],
                               flip_call_seconds=rnd.swap["seconds"],
                               started_after_flip=sum(after.values()),
                               started_after_flip_not_from_v2=wrong)
                        if rnd.swap["status"] != 200 or wrong:
                            rc = 1
    finally:
        for p in paths.values():
            if p.client is not None:
                await p.client.aclose()
    return rc


if __name__ == "__main__":
    sys.exit(main())

"""Serving under load: failed requests and throughput straight to the engine, through the
inference service and through the gateway, with a hot swap inside the largest run.

For each concurrency C (``--gpu``: 256 and 1,024; ``--cpu``: small), N rounds per path, the
three paths interleaved round by round (engine, service, gateway, engine, ...) so that each
path's connection pools sit idle for the other two paths' rounds, as they did when the idle
keep-alive race cut rounds short (issue 15). One round = C concurrent non-streamed chat
requests of ``max_tokens`` tokens, each path one long-lived aiohttp client (keep-alive shorter
than the servers' so the *client* side cannot hit the race it measures; aiohttp, not httpx:
httpx's pool cost the bench itself 13 ms of CPU per request at 1,024 concurrent, more than
the round, so the client was what every path measured). A request that does
not answer 200 with a completion counts as failed (429 included: the bench's key has a
limit above the load). Throughput of a path = the median round's output tokens/s; ratio vs
the engine's median at the same C.

The hot swap: version v2 is deployed in the background while the smaller runs go on; in the
middle of a gateway round of the largest run alias ``bot`` flips v1 -> v2 (drain + stop v1).
Requests started after the flip must come from v2; the round counts its failures like any
other, and a separate row reports them.

Each round also records the CPU seconds every process spent in it (/proc: the bench's
client, the engine, the inference service, the gateway with its worker processes), so the JSON
says what a proxied request costs each hop, not only how long a round took.

The gateway runs as it does by default (``GATEWAY_WORKERS`` auto: 4 worker processes on the
H200 host's 16 CPUs, 1 on a small machine). When that is more than one, a second gateway with
one process (the default before) is a fourth path in the same rounds, and the gateway rows say
what it did (``one_worker_*``): the baseline the workers have to beat, in the same run.

Modes:
  ``--cpu``  small run on this machine (``make bench``): tiny local models, the CPU engine
             (``transformers serve``); writes ``bench/results/serve_load_cpu.json``.
  ``--fake-engine``  the GPU run's load (256 and 1,024 concurrent, 128 tokens) through the
             real inference service and gateway processes on this machine, with a stand-in
             for the GPU engine: :class:`tuneloop.testing.faults.FaultyUpstream` as ``vllm``
             on PATH, answering every generation after a fixed ``--latency-s`` (2.5 s, like
             one H200 round at 256) and costing nothing else. Every second a round takes
             beyond the engine-direct one is the proxies' (or the machine's: other work on
             it shows in the CPU columns). ``--profile`` runs both services under cProfile
             (``<work>/profile-*.txt``). Writes ``bench/results/serve_load_fake_engine.json``
             (earlier runs of the file kept under ``runs``, newest first, by ``--label``).
  ``--gpu``  the H200 run: Llama-3.2-1B-shaped models (1.1 B parameters, random weights)
             built on the device, vLLM engines (``INFERENCE_ENGINE_MAX_NUM_SEQS=1024`` becomes
             ``--max-num-seqs``), 10 rounds each at 256 and 1,024 concurrent, 128 tokens
             (``ignore_eos``); writes ``$OUT/serve_load.json`` (else ``bench/results/``).
  ``--gpu --dry-run``  the same flow as ``--gpu`` on CPU (tiny models from the GPU builder,
             the CPU engine, small sizes); writes ``<work>/serve_load.json``.

A ``--budget-s`` guard skips rounds that would not end in time (the JSON says how many ran),
and the JSON is written after every step, so a run cut short still reports what it measured.
With ``--keep`` a run that ran out of budget leaves its services and engines up (they run in
sessions of their own) with a state file in ``--work``; ``--resume`` goes on from the next
round with them, and tears everything down once every round has run. Both versions are
deployed before the first round (v2 no longer loads on the GPU during the 256 rounds).

On the H200 (no registry there; ../shared/gpu/README.md). Here, once:
``../shared/gpu/prepare-bundles.sh vllm`` and ``bench/device_deps.sh`` (the services' own deps,
9 MB, in .gpu/tl-deps). Then, back to back on one ``nvidia-h200``:

1. five calls ``source .gpu/device-setup.sh vllm-part``, carrying ``.gpu/vllm-part-aa`` (then
   -ab ... -ae) and ``.gpu/device-setup.sh``;
2. ``python3 -m pip install -q --no-index --no-deps --target /tmp/tldeps .gpu/tl-deps/*.whl``,
   carrying ``.gpu/tl-deps`` (14 MiB with uvloop + httptools: a call of its own, or beside a
   model part of <= 45 MiB; a call carries the work tree too, 64 MiB in all);
3. ``source .gpu/device-setup.sh vllm && source bench/device/env.sh &&
   python3 bench/serve_load.py --gpu --keep``, carrying ``.gpu/vllm-deps``,
   ``.gpu/device-setup.sh``, ``.gpu/vllm.sha256`` (timeout 600 s): models ~15 s, the first
   vLLM start 90-215 s (compile cache cold), the second ~80 s, then rounds until the budget
   (30 at 256, ~3 s each; then rounds at 1,024, ~13 s each for the engine);
4. at once (the machine stays warm 30 s; the services live on in their own sessions):
   ``source .gpu/device-setup.sh vllm && source bench/device/env.sh &&
   python3 bench/serve_load.py --gpu --resume`` with the same carry (timeout 600 s): the
   remaining rounds at 1,024 (the alias flip in round 1), then teardown. Repeat step 4 if its
   JSON notes say the budget cut it again. Each call writes ``$OUT/serve_load.json`` (all
   rounds so far); copy the last one to ``bench/results/serve_load.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
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
STATE_FILE: Path | None = None  # <work>/state.json: the run so far and its stack, for --resume
STACK: dict = {}  # the services this run talks to (urls, pids, key) and whether v1 -> v2 flipped
HISTORY: list[dict] = []  # --fake-engine: earlier runs of the result file, newest first


def save() -> None:
    RESULT["when"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    RESULT["elapsed_s"] = round(time.monotonic() - T0, 1)
    OUT_FILE.parent.mkdir(parents=True, exist_ok=True)
    out = {**RESULT, "runs": HISTORY} if HISTORY else RESULT
    OUT_FILE.write_text(json.dumps(out, indent=1) + "\n")
    if STATE_FILE is not None:
        STATE_FILE.write_text(json.dumps({"result": RESULT, "stack": STACK,
                                          "history": HISTORY}) + "\n")


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
    client: aiohttp.ClientSession | None = None


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
    latencies: list[float] = field(default_factory=list)

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
        async with p.client.post("/v1/chat/completions", data=json.dumps(body).encode(),  # type: ignore[union-attr]
                                 headers=p.headers) as r:
            status, content = r.status, await r.read()
        key = str(status)
        if status != 200:
            rnd.failed += 1
            rnd.errors.append(f"{status}: {content[:200].decode(errors='replace')}")
        else:
            data = json.loads(content)
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
    rnd.latencies.append(time.monotonic() - t0)
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
    """Flips alias ``bot`` v1 -> v2 (deployed before the rounds) in the middle of a round."""

    def __init__(self, admin: httpx.Client) -> None:
        self.admin = admin

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


def deploy_v2(admin: httpx.Client) -> dict:
    """Load v2 next to v1 (before the rounds: its start must not share the GPU with them)."""
    t = time.monotonic()
    try:
        r = admin.post("/admin/deployments", params={"wait": "true"}, json={"model_id": V2})
        body = r.json()
        return {"status": r.status_code, "state": body.get("state"), "error": body.get("error"),
                "seconds": round(time.monotonic() - t, 1)}
    except Exception as exc:  # noqa: BLE001
        return {"error": repr(exc)[:300], "seconds": round(time.monotonic() - t, 1)}


def build_models(store: Path, mode: str) -> int:
    if mode in ("cpu", "fake"):
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


# ``vllm serve`` stand-in for --fake-engine: the inference service starts it like the real one
# (a GPU named, ``vllm`` on PATH) and it serves the same port and name with a fixed latency.
STANDIN = '''#!{python}
"""Stand-in for `vllm serve` (bench/serve_load.py --fake-engine): every generation answers
after {latency} s, nothing else costs time."""
import os, sys
args = sys.argv[1:]
opts = {{args[i]: args[i + 1] for i in range(2, len(args) - 1) if args[i].startswith("--")}}
os.execv(sys.executable, [sys.executable, "-m", "tuneloop.testing.faults", "--latency-s",
         "{latency}", "--served-model-name", opts["--served-model-name"], "--host",
         opts["--host"], "--port", opts["--port"]])
'''

# --profile: a service module run under cProfile; the stats are written when it exits
PROFILED = '''"""Runs $SERVE_LOAD_PROFILE_MODULE under cProfile (bench/serve_load.py --profile)."""
import atexit, cProfile, os, pstats, runpy, signal, sys, time

prof = cProfile.Profile(time.process_time)  # CPU time: on a busy machine wall time blames whoever waited


def _dump():
    prof.disable()
    prof.dump_stats(os.environ["SERVE_LOAD_PROFILE_OUT"].removesuffix(".txt") + ".prof")
    with open(os.environ["SERVE_LOAD_PROFILE_OUT"], "w") as fh:
        stats = pstats.Stats(prof, stream=fh)
        stats.sort_stats("tottime").print_stats(45)
        stats.sort_stats("cumulative").print_stats(60)


atexit.register(_dump)
# uvicorn re-raises the SIGTERM it caught once it has shut down; the default action would end
# the process without running atexit, so the signal becomes a normal exit here
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
prof.enable()
runpy.run_module(os.environ["SERVE_LOAD_PROFILE_MODULE"], run_name="__main__", alter_sys=True)
'''


def start_services(work: Path, mode: str, engine: str, max_num_seqs: int, vllm_args: str,
                   latency_s: float, profile: bool, workers: int,
                   one_process_baseline: bool):  # noqa: ANN201
    from tuneloop.testing.process import ServiceProcess

    paths = [str(ROOT / "shared/src"), str(ROOT / "services/inference/src"),
             str(ROOT / "services/gateway/src")]
    if profile:
        (work / "pylib").mkdir(exist_ok=True)
        (work / "pylib/serve_load_profiled.py").write_text(PROFILED)
        paths.append(str(work / "pylib"))
    pythonpath = os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")])
    common = {"TUNELOOP_DATA_DIR": str(work / "var"), "TUNELOOP_LOG_JSON": "false",
              "TUNELOOP_LOG_LEVEL": "WARNING", "TUNELOOP_SERVICE_TOKEN": SERVICE_TOKEN,
              "TUNELOOP_SERVICE_AUTH": "true",
              "HF_HUB_OFFLINE": "1", "PYTHONPATH": pythonpath}
    engine_env: dict[str, str] = {}
    if mode == "fake":  # the stand-in is found as `vllm` once a GPU is named
        (work / "bin").mkdir(exist_ok=True)
        standin = work / "bin/vllm"
        standin.write_text(STANDIN.format(python=sys.executable, latency=latency_s))
        standin.chmod(0o755)
        engine_env = {"PATH": f"{work / 'bin'}{os.pathsep}{os.environ['PATH']}",
                      "INFERENCE_GPU_IDS": '["0"]'}

    def service(module: str, name: str, env: dict[str, str], timeout: float) -> ServiceProcess:
        if profile:
            env = {**env, "SERVE_LOAD_PROFILE_MODULE": module,
                   "SERVE_LOAD_PROFILE_OUT": str(work / f"profile-{name}.txt")}
            module = "serve_load_profiled"
        return ServiceProcess(module, log_path=work / f"{name}.log", startup_timeout=timeout,
                              env=env)

    inference = service("tuneloop_inference", "inference", {
        **common, **engine_env, "INFERENCE_ADMIN_KEY": INF_ADMIN, "INFERENCE_ENGINE": engine,
        "INFERENCE_GPU_MEMORY_UTILIZATION": "0.40", "INFERENCE_VLLM_MAX_MODEL_LEN": "2048",
        "INFERENCE_ENGINE_MAX_NUM_SEQS": str(max_num_seqs),
        "INFERENCE_VLLM_EXTRA_ARGS": vllm_args if engine == "vllm" else "",
        "INFERENCE_REPLICA_ID": "serve-load"}, 180).start()
    gw_env = {
        **common, "GATEWAY_BOOTSTRAP_ADMIN_KEY": ADMIN, "INFERENCE_ADMIN_KEY": INF_ADMIN,
        "TUNELOOP_INFERENCE_URL": inference.url, "GATEWAY_RECONCILE_INTERVAL_S": "0",
        # dataset and trainer are not part of this bench: nothing listens there
        "TUNELOOP_DATASET_URL": "http://127.0.0.1:9", "TUNELOOP_TRAINER_URL": "http://127.0.0.1:9"}
    gateway = service("tuneloop_gateway", "gateway", {
        **gw_env, "GATEWAY_WORKERS": str(workers), "GATEWAY_REPLICA_ID": "serve-load"}, 120)
    # the baseline when the default runs several: one gateway process (one database, its own
    # replica id)
    single = service("tuneloop_gateway", "gateway-1w", {
        **gw_env, "GATEWAY_WORKERS": "1", "GATEWAY_REPLICA_ID": "serve-load-1w"},
        120) if one_process_baseline else None
    try:
        gateway.start()
        if single is not None:
            single.start()
    except Exception:
        gateway.stop(timeout=60)  # stopping a process that is not running does nothing
        inference.stop(timeout=60)
        raise
    return inference, gateway, single


def _stat(path: Path) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds of all its threads) of one /proc/<pid>/stat."""
    try:
        fields = path.read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def cpu_seconds(pid: int | None, children: bool = False) -> float | None:
    """CPU seconds of a process so far, from /proc; with ``children``, plus its live child
    processes' (the gateway's workers)."""
    own = _stat(Path(f"/proc/{pid}/stat")) if pid else None
    if own is None:
        return None
    kids = (_stat(p) for p in Path("/proc").glob("[0-9]*/stat")) if children else ()
    return own[1] + sum(k[1] for k in kids if k is not None and k[0] == pid)


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _ms_per_request(rounds: list[dict], proc: str) -> float | None:
    """Median over ``rounds`` of ``proc``'s CPU milliseconds per request."""
    return _median([r["cpu_s"][proc] * 1000 / max(1, r["ok"] + r["failed"]) for r in rounds
                    if (r.get("cpu_s") or {}).get(proc) is not None])


def summarise(sizes: list[int], n_rounds: int) -> None:
    """The result rows from every round so far (this call's and the earlier ones')."""
    RESULT["results"] = [r for r in RESULT["results"] if r["metric"].startswith("gateway_swap")]
    for c in sizes:
        by_path = {p: [r for r in RESULT["rounds"] if r["path"] == p and r["C"] == c]
                   for p in ("engine", "service", "gateway")}
        direct = statistics.median([r["tokens_per_s"] for r in by_path["engine"]] or [0.0])
        single = [r for r in RESULT["rounds"] if r["path"] == "gateway_1w" and r["C"] == c]
        for p, rs in by_path.items():
            if not rs:
                continue
            label = {"engine": "engine_direct", "service": "service", "gateway": "gateway"}[p]
            metric(f"{label}_failed_requests (C={c}, {len(rs)} of {n_rounds} rounds)",
                   sum(r["failed"] for r in rs), "requests",
                   requests=sum(r["ok"] + r["failed"] for r in rs),
                   rounds_with_failures=sum(1 for r in rs if r["failed"]))
            cpu = {f"{proc}_cpu_ms_per_request": _ms_per_request(rs, proc)
                   for proc in ("bench", "engine", "service", "gateway")}
            extra = {"median_round_s": _median([r["seconds"] for r in rs]),
                     **{k: v for k, v in cpu.items() if v is not None}}
            if p != "engine":
                extra["baseline_is"] = "engine_direct, same C, same run"
            if p == "gateway":
                extra["workers"] = RESULT["config"].get("gateway_workers")
            if p == "gateway" and single:  # the one-process gateway, same rounds
                one = statistics.median([r["tokens_per_s"] for r in single])
                extra.update(
                    one_worker_tokens_per_s=round(one, 1),
                    one_worker_ratio=round(one / direct, 3) if direct else None,
                    one_worker_failed_requests=sum(r["failed"] for r in single),
                    one_worker_rounds=len(single),
                    one_worker_median_round_s=_median([r["seconds"] for r in single]),
                    one_worker_gateway_cpu_ms_per_request=_ms_per_request(single, "gateway_1w"))
            metric(f"{label}_output_tokens_per_s (C={c}, median of {len(rs)} rounds)",
                   statistics.median([r["tokens_per_s"] for r in rs]), "tokens/s",
                   baseline=None if p == "engine" else direct, **extra)


def stop_pid(pid: int, timeout: float) -> None:
    """SIGTERM a service started by an earlier call (its own process group), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def git_commit() -> str | None:
    try:
        import subprocess

        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                "bench", "shared", "services"], cwd=ROOT, text=True,
                               capture_output=True, timeout=10).stdout.strip()
        return (rev + ("+local changes" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode_g = ap.add_mutually_exclusive_group(required=True)
    mode_g.add_argument("--cpu", action="store_true", help="small CPU run (make bench)")
    mode_g.add_argument("--gpu", action="store_true", help="the H200 run (vLLM)")
    mode_g.add_argument("--fake-engine", action="store_true",
                        help="the GPU run's load on CPU, a fixed-latency stand-in as the engine")
    ap.add_argument("--dry-run", action="store_true", help="with --gpu: same flow on CPU, tiny")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per path and concurrency")
    ap.add_argument("--concurrency", default=None, help="comma-separated, e.g. 256,1024")
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--work", default=None, help="scratch folder (deleted first, unless --resume)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="skip rounds that would end after this many seconds of this call")
    ap.add_argument("--vllm-args", default="", help="INFERENCE_VLLM_EXTRA_ARGS")
    ap.add_argument("--latency-s", type=float, default=2.5,
                    help="--fake-engine: seconds each generation takes")
    ap.add_argument("--profile", action="store_true",
                    help="run the inference service and the gateway under cProfile")
    ap.add_argument("--label", default="", help="--fake-engine: name of this run in the file")
    ap.add_argument("--gateway-workers", type=int, default=0,
                    help="GATEWAY_WORKERS of the gateway (default 0: its own default, auto)")
    ap.add_argument("--keep", action="store_true",
                    help="leave the stack up if the budget cuts the rounds short (for --resume)")
    ap.add_argument("--resume", action="store_true",
                    help="go on with the stack and rounds a --keep run left in --work")
    return ap.parse_args()


def main() -> int:  # noqa: PLR0915
    global OUT_FILE, STATE_FILE
    args = parse_args()
    from tuneloop.serve import raise_open_files_limit
    from tuneloop.workers import resolve_workers

    open_files = raise_open_files_limit()  # 1,024 clients per path: more than the default 1,024
    mode = ("fake" if args.fake_engine else
            "gpu" if args.gpu and not args.dry_run else ("dry-run" if args.gpu else "cpu"))
    work = Path(args.work or f"/tmp/tl-serve-load-{mode}")
    OUT_FILE = {"cpu": ROOT / "bench/results/serve_load_cpu.json", "dry-run": work / "serve_load.json",
                "fake": ROOT / "bench/results/serve_load_fake_engine.json"}.get(
        mode, Path(os.environ["OUT"]) / "serve_load.json" if os.environ.get("OUT")
        else ROOT / "bench/results/serve_load.json")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    defaults = {"gpu": (10, "256,1024", 128, 540.0), "dry-run": (3, "4,8", 8, 900.0),
                "cpu": (5, "4,16", 16, 1200.0), "fake": (3, "256,1024", 128, 1500.0)}[mode]
    budget = args.budget_s or defaults[3]  # of this call
    if args.resume:
        state = json.loads((work / "state.json").read_text())
        RESULT.update(state["result"])
        stack = STACK
        stack.update(state["stack"])
        RESULT["calls"] = RESULT.get("calls", 1) + 1
        STATE_FILE = work / "state.json"
        cfg = RESULT["config"]
        HISTORY[:] = state.get("history", [])
        inference = gateway = single = None
    else:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        STATE_FILE = work / "state.json"
        if mode == "fake" and OUT_FILE.exists():  # keep the earlier runs' rows (before/after)
            old = json.loads(OUT_FILE.read_text())
            HISTORY[:] = [{k: old.get(k) for k in ("label", "commit", "when", "config", "results")},
                          *old.get("runs", [])][:8]
        RESULT["machine"] = machine_info()
        sizes = [int(x) for x in (args.concurrency or defaults[1]).split(",")]
        engine = "vllm" if mode in ("gpu", "fake") else "transformers"
        cfg = RESULT["config"] = {
            "mode": mode, "engine": engine + (" stand-in" if mode == "fake" else ""),
            "rounds": args.rounds or defaults[0], "concurrency": sizes,
            "max_tokens": args.max_tokens or defaults[2], "ignore_eos": engine == "vllm",
            "engine_max_num_seqs": max(sizes), "vllm_args": args.vllm_args, "budget_s": budget,
            "open_files_limit": open_files, "profile": args.profile,
            "gateway_workers": resolve_workers(args.gateway_workers),
            **({"engine_latency_s": args.latency_s} if mode == "fake" else {})}
        RESULT["label"], RESULT["commit"] = args.label, git_commit()
        t = time.monotonic()
        params = build_models(work / "var/artifacts", mode)
        step("models_built", params=params, seconds=round(time.monotonic() - t, 1))
        inference, gateway, single = start_services(work, mode, engine, max(sizes),
                                                    args.vllm_args, args.latency_s, args.profile,
                                                    args.gateway_workers,
                                                    cfg["gateway_workers"] > 1)
        stack = STACK
        stack.update({"inference": {"url": inference.url, "pid": inference.proc.pid},
                      "gateway": {"url": gateway.url, "pid": gateway.proc.pid},
                      "swapped": False})
        if single is not None:
            stack["gateway_1w"] = {"url": single.url, "pid": single.proc.pid}
    admin = httpx.Client(base_url=stack["inference"]["url"], timeout=900,
                         headers={"Authorization": f"Bearer {INF_ADMIN}"})
    rc, finished = 1, False
    try:
        if not args.resume:
            t = time.monotonic()
            r = admin.put("/admin/aliases/bot", json={"model": V1})
            step("deploy_v1", status=r.status_code, seconds=round(time.monotonic() - t, 1),
                 body=r.json())
            if r.status_code != 200:
                return 1
            step("v2_deployed", **deploy_v2(admin))
            with httpx.Client(base_url=stack["gateway"]["url"], timeout=60,
                              headers={"Authorization": f"Bearer {ADMIN}"}) as gw_admin:
                r = gw_admin.post("/v1/keys", json={"name": "serve-load", "scopes": ["inference"],
                                                    "rate_limit_rpm": 1_000_000})
            r.raise_for_status()
            stack["key"] = r.json()["key"]
        save()
        rc, finished = run_load(stack, admin, cfg, budget, mode)
        summarise(cfg["concurrency"], cfg["rounds"])  # before teardown: a cut-off stop loses none
    finally:
        admin.close()
        keep = not finished and (args.keep or args.resume)
        RESULT["log_tails"] = {p.name: p.read_text(errors="replace")[-2000:]
                               for p in (work / "inference.log", work / "gateway.log",
                                         work / "gateway-1w.log")
                               if p.exists()}
        if keep:
            RESULT["notes"].append(
                f"call {RESULT.get('calls', 1)}: budget reached, services left up for --resume")
        save()
        if not keep:
            teardown(stack, inference, gateway, single)
    failed = sum(r["failed"] for r in RESULT["rounds"])
    if finished:
        RESULT["notes"].append(mode_note(mode, failed))
        save()
    print(json.dumps(RESULT["results"], indent=1))
    return 0 if rc == 0 and failed == 0 else 1


def machine_info() -> dict:
    import torch

    info = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for fast in ("uvloop", "httptools", "aiohttp", "httpx"):  # uvicorn's loop and HTTP parser
        try:
            info[fast] = __import__(fast).__version__
        except Exception:  # noqa: BLE001
            info[fast] = None
    for knob in ("net/core/somaxconn", "net/ipv4/tcp_max_syn_backlog"):  # listen backlog caps
        with contextlib.suppress(OSError):
            info[knob.rsplit("/", 1)[1]] = int(Path(f"/proc/sys/{knob}").read_text())
    try:
        import vllm  # noqa: PLC0415

        info["vllm"] = vllm.__version__
    except Exception:  # noqa: BLE001 - CPU machines have none
        pass
    return info


def teardown(stack: dict, inference, gateway, single) -> None:  # noqa: ANN001
    """Stop the gateways, then the inference service (which stops its engines)."""
    if gateway is not None:
        if single is not None:
            single.stop(timeout=30)
        gateway.stop(timeout=30)
        inference.stop(timeout=90)
        return
    if "gateway_1w" in stack:
        stop_pid(stack["gateway_1w"]["pid"], 30)
    stop_pid(stack["gateway"]["pid"], 30)
    stop_pid(stack["inference"]["pid"], 90)


def mode_note(mode: str, failed: int) -> str:
    text = (f"{mode} run: {len(RESULT['rounds'])} rounds, {failed} failed requests in all; paths "
            "interleaved round by round (engine, service, gateway, and gateway_1w: a one-process "
            "gateway when the default runs several), each path one long-lived client with "
            "keep-alive 2 s; throughput = median round; the swap row counts the "
            "failures of the round the alias flipped in; cpu_ms_per_request = CPU seconds of "
            "that process during the path's rounds per request (median round).")
    if mode in ("cpu", "dry-run"):
        text += (" CPU: a tiny random model on transformers serve, on a machine whose 2 cores "
                 "other work shares; rounds last a fraction of a second, so the throughput "
                 "ratios are noise here. What this run shows is the failed counts and the "
                 "flip; the ratio is the GPU run's.")
    if mode == "fake":
        text += (" fake engine: every generation answers after a fixed latency and costs "
                 "nothing else, so a path's extra seconds per round are its proxies' (and, on "
                 "this shared 2-core machine, the other processes' CPU: see the cpu columns).")
    return text


def run_load(stack: dict, admin: httpx.Client, cfg: dict, budget: float, mode: str) -> tuple[int, bool]:
    # the client's own full garbage collections paused it up to 250 ms in a round (10 in a
    # short --fake-engine run): everything made so far stays out of them, as in the services
    gc.collect()
    gc.freeze()
    try:  # the bench's own client on uvicorn's and vLLM's loop where installed
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(load(stack, admin, cfg, budget))


async def load(stack: dict, admin: httpx.Client, cfg: dict, budget: float) -> tuple[int, bool]:
    """The measured part: every size, every round, the three paths interleaved; rounds an
    earlier call ran are skipped. Returns (rc, every round ran)."""
    sizes, n_rounds = cfg["concurrency"], cfg["rounds"]
    max_tokens, ignore_eos = cfg["max_tokens"], cfg["ignore_eos"]
    def session(url: str) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            base_url=url, connector=aiohttp.TCPConnector(limit=max(sizes) + 16,
                                                         keepalive_timeout=2.0),
            timeout=aiohttp.ClientTimeout(total=900, sock_connect=30),
            headers={"content-type": "application/json"})

    def engine_path() -> tuple[Path_, int | None]:
        deps = admin.get("/admin/deployments").json()["data"]
        alias = admin.get("/admin/aliases/bot").json()
        target = alias.get("model") or alias.get("target") or V1
        dep = next(d for d in deps if d["model"] == target and (d.get("local") or {}).get("url"))
        return Path_("engine", dep["local"]["url"], target), dep["local"].get("pid")

    paths = {"service": Path_("service", stack["inference"]["url"], "bot",
                              {"Authorization": f"Bearer {SERVICE_TOKEN}"}),
             "gateway": Path_("gateway", stack["gateway"]["url"], "bot",
                              {"Authorization": f"Bearer {stack['key']}"})}
    if "gateway_1w" in stack:  # one database: the same key works there
        paths["gateway_1w"] = Path_("gateway_1w", stack["gateway_1w"]["url"], "bot",
                                    {"Authorization": f"Bearer {stack['key']}"})
    paths["engine"], engine_pid = await asyncio.to_thread(engine_path)
    for p in paths.values():
        p.client = session(p.url)
    pids = {"bench": os.getpid(), "service": stack["inference"]["pid"],
            "gateway": stack["gateway"]["pid"]}
    if "gateway_1w" in stack:
        pids["gateway_1w"] = stack["gateway_1w"]["pid"]
    swap = Swap(admin)
    v2_ready = (RESULT["steps"].get("v2_deployed") or {}).get("state") == "ready"
    rc = 0 if v2_ready else 1
    done = {(r["path"], r["C"], r["round"]) for r in RESULT["rounds"]}
    try:
        for p in paths.values():  # warm-up: one request each (not counted)
            warm = await run_round(p, 1, -1, max_tokens, ignore_eos)
            if warm.failed:
                step("warm_up_failed", path=p.name, errors=warm.errors)
                return 1, False
        paths_order = [p for p in ("engine", "service", "gateway", "gateway_1w") if p in paths]
        largest = max(sizes)
        swap_round = min(1, n_rounds - 1)  # early in the largest run: inside it even if cut short
        for c in sizes:
            for i in range(n_rounds):
                for name in paths_order:
                    if (name, c, i) in done:
                        continue
                    est = max([r["seconds"] for r in RESULT["rounds"]  # a round like the last
                               if r["path"] == name and r["C"] == c and "swap" not in r] or [0.0])
                    if time.monotonic() - T0 + est > budget:
                        RESULT["notes"].append(
                            f"call {RESULT.get('calls', 1)}: budget of {budget:.0f}s reached "
                            f"before C={c} round {i} ({name}); later rounds not run")
                        save()
                        return rc, False
                    do_swap = (c == largest and name == "gateway" and i >= swap_round
                               and not stack["swapped"] and v2_ready)
                    p = paths[name]
                    before = {k: cpu_seconds(pid, k.startswith("gateway"))
                              for k, pid in {**pids, "engine": engine_pid}.items()}
                    rnd = await run_round(p, c, i, max_tokens, ignore_eos,
                                          swap if do_swap else None)
                    after = {k: cpu_seconds(pid, k.startswith("gateway"))
                             for k, pid in {**pids, "engine": engine_pid}.items()}
                    record_round(name, c, i, rnd, before, after)
                    if rnd.swap:
                        stack["swapped"] = True
                        rc = max(rc, record_swap(c, rnd))
                        await paths["engine"].client.close()  # type: ignore[union-attr]
                        fresh, engine_pid = await asyncio.to_thread(engine_path)
                        fresh.client = session(fresh.url)
                        paths["engine"] = fresh
                    save()
        return rc, True
    finally:
        for p in paths.values():
            if p.client is not None:
                await p.client.close()


def record_round(name: str, c: int, i: int, rnd: Round, before: dict, after: dict) -> None:
    lat = sorted(rnd.latencies)
    RESULT["rounds"].append({
        "path": name, "C": c, "round": i, "ended_at_s": round(time.monotonic() - T0, 1),
        "call": RESULT.get("calls", 1), "seconds": round(rnd.seconds, 2),
        "tokens_per_s": round(rnd.tokens_per_s, 1), "ok": rnd.ok, "failed": rnd.failed,
        "statuses": rnd.statuses, "errors": rnd.errors[:3], "models": rnd.models,
        "latency_s": {"min": round(lat[0], 3), "p50": round(lat[len(lat) // 2], 3),
                      "max": round(lat[-1], 3)} if lat else None,
        "cpu_s": {k: round(after[k] - before[k], 2) for k in before
                  if before[k] is not None and after[k] is not None},
        **({"swap": rnd.swap} if rnd.swap else {})})
    print(f"[{time.monotonic() - T0:6.1f}s] C={c} round {i} {name}: {rnd.seconds:.2f}s "
          f"{rnd.tokens_per_s:,.0f} tok/s, failed {rnd.failed}, cpu {RESULT['rounds'][-1]['cpu_s']}",
          flush=True)


def record_swap(c: int, rnd: Round) -> int:
    after = {m: n for m, n in rnd.models.items() if m.startswith("after_flip:")}
    wrong = sum(n for m, n in after.items() if not m.endswith(V2))
    metric(f"gateway_swap_failed_requests (alias flip v1->v2 inside a C={c} round)", rnd.failed,
           "requests", requests=rnd.ok + rnd.failed, flip_status=rnd.swap["status"],  # type: ignore[index]
           flip_call_seconds=rnd.swap["seconds"], started_after_flip=sum(after.values()),  # type: ignore[index]
           started_after_flip_not_from_v2=wrong)
    return 1 if rnd.swap["status"] != 200 or wrong else 0  # type: ignore[index]


if __name__ == "__main__":
    sys.exit(main())

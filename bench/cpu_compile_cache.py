"""vLLM CPU start-up with compilation, and whether its compile cache survives a restart.

``python bench/cpu_compile_cache.py [--skip-aot]``

The demo's base model (SmolLM2-135M-Instruct from var/artifacts/base/), one engine at a time,
launched as the inference service launches it (``VllmEngine``, LoRA off, one core bound):

1. eager (the default on CPU): start to healthy — the baseline;
2. compiled, the service's settings for compiled CPU engines (``VLLM_USE_AOT_COMPILE=0``,
   inductor's cache in the data dir): a cold start (empty cache), then a restart on that cache;
3. unless ``--skip-aot``: compiled with vLLM's own default (AOT compile on), cold then restart,
   and whether the restart logged the reload failure (``finalize_loading``);

plus 16 clients x 64 tokens on the eager and the compiled engine (does compiling pay?).
Writes ``bench/results/cpu_compile_cache.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from inference_cpu import process_env, round_tps  # noqa: E402  (the same load as the CPU engine bench)


async def start_engine(base: Path, data: Path, eager: bool, env: dict[str, str], log: str):
    """Start, wait healthy, smoke-check; returns (engine, seconds, log text)."""
    from tuneloop_inference.engines import make_engine
    from tuneloop_inference.settings import InferenceSettings

    settings = InferenceSettings(data_dir=data, engine="vllm", vllm_device="cpu",
                                 vllm_enforce_eager=eager, vllm_enable_lora=False,
                                 vllm_cpu_threads_bind="0")
    engine = make_engine("vllm", name="merged", model_dir=str(base), settings=settings,
                         log_path=data / f"{log}.log")
    with process_env(env):
        t0 = time.monotonic()
        await engine.start()
        await engine.wait_ready()
        await engine.smoke()
        seconds = time.monotonic() - t0
    return engine, seconds


async def timed_restart(base: Path, data: Path, eager: bool, env: dict[str, str], label: str,
                        measure: bool = False) -> dict:
    engine, seconds = await start_engine(base, data, eager, env, label)
    out = {"seconds": round(seconds, 1)}
    try:
        if measure:
            rounds = [await round_tps(engine.url, engine.name, 16, 64) for _ in range(2)]
            out["tok_s_16_clients"] = round(max(r["tok_s"] for r in rounds), 1)
    finally:
        await engine.stop()
    text = (data / f"{label}.log").read_text(errors="replace")
    out["reload_failed"] = "finalize_loading" in text
    out["compiled_again"] = "Compiling model again" in text
    return out


async def run(args: argparse.Namespace) -> dict:
    from tuneloop.basemodel import prepare_base
    from tuneloop.storage import ArtifactStore

    base = prepare_base(ArtifactStore(str((ROOT.parent / "var" / "artifacts").resolve()))).path
    work = Path(tempfile.mkdtemp(prefix="bench-compile-cache-"))
    fixed = {"VLLM_CACHE_ROOT": str(work / "svc" / "vllm-cache")}
    runs: dict[str, dict] = {}
    runs["eager"] = await timed_restart(base, work / "eager", True, fixed, "eager", measure=True)
    print("eager", runs["eager"], flush=True)
    svc = work / "svc"  # the service's settings: AOT off, inductor cache under the data dir
    runs["compiled_cold"] = await timed_restart(base, svc, False, fixed, "cold", measure=True)
    print("compiled cold", runs["compiled_cold"], flush=True)
    runs["compiled_restart"] = await timed_restart(base, svc, False, fixed, "restart")
    print("compiled restart", runs["compiled_restart"], flush=True)
    if not args.skip_aot:
        aot = work / "aot"
        env = {"VLLM_USE_AOT_COMPILE": "1", "VLLM_CACHE_ROOT": str(aot / "vllm-cache"),
               "TORCHINDUCTOR_CACHE_DIR": str(aot / "inductor")}
        runs["aot_cold"] = await timed_restart(base, aot, False, env, "aot-cold")
        print("aot cold", runs["aot_cold"], flush=True)
        runs["aot_restart"] = await timed_restart(base, aot, False, env, "aot-restart")
        print("aot restart", runs["aot_restart"], flush=True)

    def row(metric: str, value: float, unit: str, baseline: float, **extra) -> dict:
        return {"metric": metric, "value": value, "unit": unit, "baseline": baseline,
                "ratio": round(value / baseline, 2), **extra}

    eager = runs["eager"]["seconds"]
    results = [
        row("start_compiled_cold", runs["compiled_cold"]["seconds"], "s", eager,
            note="baseline: eager start"),
        row("start_compiled_restart", runs["compiled_restart"]["seconds"], "s", eager,
            note="VLLM_USE_AOT_COMPILE=0, inductor cache kept; baseline: eager start"),
        row("throughput_16_clients_compiled", runs["compiled_cold"]["tok_s_16_clients"],
            "tokens/s", runs["eager"]["tok_s_16_clients"], note="baseline: eager"),
    ]
    if "aot_restart" in runs:
        results.append(row("start_aot_restart", runs["aot_restart"]["seconds"], "s", eager,
                           note="vLLM's default (AOT compile on); baseline: eager start",
                           reload_failed=runs["aot_restart"]["reload_failed"]))
    return {
        "bench": "cpu_compile_cache",
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "results": results,
        "details": {"runs": runs, "model": "SmolLM2-135M-Instruct (var/artifacts/base)",
                    "vllm": "vllm-cpu 0.32.0, LoRA off, 1 GiB KV cache, bfloat16, compute "
                            "threads bound to core 0; one engine at a time"},
        "notes": "Start = engine process start to healthy + one smoke request. Throughput: best "
                 "of two rounds of 16 clients x 64 tokens, greedy. One run on this shared "
                 "machine, under the heavy-work lock.",
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-aot", action="store_true",
                        help="skip reproducing the AOT-cache reload failure (two more cold starts)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = asyncio.run(run(args))
    out = ROOT / "results/cpu_compile_cache.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["results"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

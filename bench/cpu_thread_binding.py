"""vLLM CPU: where its compute threads are bound, on this 2-core machine.

``python bench/cpu_thread_binding.py [--rounds N]``

The service binds each vLLM CPU engine to half the cores (``INFERENCE_VLLM_CPU_THREADS_BIND=
auto``: one core of two here), so a green engine of a swap has cores of its own. Does that cost
the steady state, when one engine serves alone? The demo's base model (SmolLM2-135M-Instruct
from var/artifacts/base/), LoRA off, launched as the service launches it
(``VllmEngine``), under three placements, all three engines up at once and the rounds
alternating between them (this shared machine's speed drifts between runs by more than the
difference measured):

- ``0``: one core — what ``auto`` gives each engine here (the baseline);
- ``0-1``: both cores;
- ``0-1`` with ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads sleep instead of spinning between
  parallel regions: kinder to the API process beside them?).

Per placement and round: 16 clients x 64 tokens, then one client (the load of
``bench/inference_cpu.py``); ``--rounds`` rounds. Writes ``bench/results/cpu_thread_binding.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from inference_cpu import process_env, round_tps, start  # noqa: E402  (the CPU engine bench's load and start)

PLACEMENTS = [("one_core", "0", {}), ("both_cores", "0-1", {}),
              ("both_cores_passive", "0-1", {"OMP_WAIT_POLICY": "PASSIVE"})]


async def run(rounds: int) -> dict:
    from tuneloop.basemodel import prepare_base
    from tuneloop.storage import ArtifactStore

    base = prepare_base(ArtifactStore(str((ROOT.parent / "var" / "artifacts").resolve()))).path
    engines, runs = {}, {}
    try:
        for label, bind, env in PLACEMENTS:  # all up at once (idle engines cost ~nothing)
            work = Path(tempfile.mkdtemp(prefix=f"bench-binding-{label}-"))
            with process_env(env):
                engines[label], up = await start("vllm", label, base, work, {
                    "vllm_cpu_threads_bind": bind, "vllm_enable_lora": False})
            runs[label] = {"bind": bind, "env": env, "start_s": round(up, 1),
                           "tok_s_16_clients": [], "tok_s_1_client": []}
        for _ in range(rounds):  # alternating rounds: the shared machine's drift hits all alike
            for label, engine in engines.items():
                r = runs[label]
                r["tok_s_16_clients"].append(
                    round((await round_tps(engine.url, engine.name, 16, 64))["tok_s"], 1))
                r["tok_s_1_client"].append(
                    round((await round_tps(engine.url, engine.name, 1, 64))["tok_s"], 1))
                print(label, r["tok_s_16_clients"][-1], r["tok_s_1_client"][-1], flush=True)
    finally:
        for engine in engines.values():
            await engine.stop()
    results = []
    for label, _, _ in PLACEMENTS[1:]:
        for metric, key in (("throughput_16_clients", "tok_s_16_clients"),
                            ("throughput_1_client", "tok_s_1_client")):
            value = statistics.median(runs[label][key])
            baseline = statistics.median(runs["one_core"][key])
            results.append({"metric": f"{metric}_{label}", "value": round(value, 1),
                            "unit": "tokens/s", "baseline": round(baseline, 1),
                            "ratio": round(value / baseline, 2)})
    return {
        "bench": "cpu_thread_binding",
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "results": results,
        "details": {"runs": runs, "model": "SmolLM2-135M-Instruct (var/artifacts/base)",
                    "vllm": "vllm-cpu 0.32.0, eager, LoRA off, 1 GiB KV cache, bfloat16; "
                            "the engines up at once, rounds alternating between them"},
        "notes": "baseline = one core (what INFERENCE_VLLM_CPU_THREADS_BIND=auto gives each "
                 "engine on 2 cores); medians over the rounds; one run on this shared machine.",
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = asyncio.run(run(args.rounds))
    out = ROOT / "results" / "cpu_thread_binding.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["results"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``make demo`` on a GPU box, recorded: the whole loop with unsloth + vLLM on real weights.

Runs on the lent H200 once the payloads are unpacked (../shared/gpu/README.md: unsloth, vLLM,
the services' own deps from bench/device_deps.sh, and the demo's base carried in parts):

    python bench/demo_gpu.py --base-model /tmp/models/smollm2-135m-instruct --out $OUT

It runs ``python -m tuneloop.demo --device gpu --stop`` exactly as a user would (the four
services as processes, SQLite, a local artifact folder; the trainer picks its own recipe), then
writes ``<out>/demo_gpu.json``: stage times, training tokens/s and the recipe the trainer chose,
the export check, the eval table (base, base k-shot, candidate), the gate's decision, the swap
times (candidate attached as a runtime LoRA vs the merged model's engine start), device and
versions. ``--dry-run`` checks the plumbing on CPU (the demo on the CPU path, small).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def versions() -> dict:
    out = {}
    for name in ("torch", "transformers", "trl", "peft", "datasets", "unsloth", "vllm"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def device() -> dict:
    try:
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info(0)
            return {"gpu": torch.cuda.get_device_name(0), "memory_gib": round(total / 2**30, 1)}
    except Exception:  # noqa: BLE001
        pass
    return {"cpu": os.cpu_count()}


def metric(metric: str, value, unit: str, baseline=None) -> dict:
    ratio = round(value / baseline, 3) if value is not None and baseline else None
    return {"metric": metric, "value": value, "unit": unit, "baseline": baseline, "ratio": ratio}


def results_of(summary: dict) -> list[dict]:
    out = []
    ev = summary.get("eval") or {}
    by_role = {}
    for t in ev.get("targets") or []:
        by_role.setdefault(t.get("role"), t)
    cand, base, kshot = by_role.get("candidate"), by_role.get("base"), by_role.get("base_kshot")
    best = max((t for t in (base, kshot) if t), default=None,
               key=lambda t: ((t.get("metrics") or {}).get("task_score") or {}).get("value") or 0)

    def val(t, key):
        m = ((t or {}).get("metrics") or {}).get(key)
        return m.get("value") if isinstance(m, dict) else m

    if cand and best:
        for key in ("task_score", "json_valid", "rougeL"):
            if val(cand, key) is not None:
                out.append(metric(f"{key} tuned vs best baseline ({best.get('name')})", val(cand, key),
                                  "score", val(best, key)))
        if val(cand, "general") is not None and base:  # the k-shot baseline skips the suite
            out.append(metric("general suite tuned vs base (forgetting)", val(cand, "general"),
                              "score", val(base, "general")))
    job = (summary.get("job") or {}).get("metrics") or {}
    if job.get("train_tokens_per_s"):
        out.append(metric("training tokens/s (unsloth, the trainer's own recipe)",
                          job["train_tokens_per_s"], "tokens/s"))
    swap = summary.get("swap") or {}
    if swap.get("candidate_via") == "adapter" and swap.get("merged_deploy_s"):
        out.append(metric("candidate ready for evaluation: runtime LoRA attach vs merged engine start",
                          swap.get("candidate_deploy_s"), "s", swap.get("merged_deploy_s")))
    out.append(metric("demo wall time", summary.get("total_s"), "s"))
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--base-model", default=None)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--var", default="/tmp/demo-gpu-var")
    p.add_argument("--dry-run", action="store_true", help="CPU path, small, to check the plumbing")
    p.add_argument("--timeout", type=float, default=560)
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "tuneloop.demo", "--var", a.var, "--stop"]
    args += ["--device", "cpu", "--train-rows", "24", "--eval-rows", "8", "--replay-rows", "0",
             "--epochs", "1", "--eval-max-tokens", "16"] if a.dry_run else ["--device", "gpu"]
    if a.base_model:
        args += ["--base-model", a.base_model]
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    with open(out / "demo_gpu.log", "wb") as log:
        try:
            rc = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, timeout=a.timeout,
                                env={**os.environ, "COLUMNS": "120"}).returncode
        except subprocess.TimeoutExpired:
            rc = 124
            subprocess.run([sys.executable, "-m", "tuneloop.stack", "down"],
                           env={**os.environ, "TUNELOOP_DATA_DIR": a.var}, timeout=60)
    wall = round(time.monotonic() - t0, 1)
    summary_path = Path(a.var) / "demo" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    doc = {"bench": "demo_gpu", "when": started, "machine": device(), "versions": versions(),
           "command": " ".join(args[1:]), "exit_code": rc, "wall_s": wall,
           "results": results_of(summary),
           "stages_s": summary.get("steps_s"), "decision": summary.get("decision"),
           "swap": summary.get("swap"), "job": summary.get("job"),
           "eval_table": summary.get("report_table"), "eval": summary.get("eval"),
           "settings": summary.get("settings"),
           "notes": ("make demo's own driver on a GPU: unsloth backend with the trainer's own "
                     "recipe (no hyperparameters sent), vLLM engine with runtime LoRA; the "
                     "candidate is evaluated as an adapter of the served base, then its merged "
                     "model is served under the alias. baseline of the quality rows = the best of "
                     "base zero-shot and base k-shot.")}
    (out / ("demo_gpu_dryrun.json" if a.dry_run else "demo_gpu.json")).write_text(
        json.dumps(doc, indent=1, default=str))
    print(json.dumps({k: doc[k] for k in ("exit_code", "wall_s", "results", "stages_s", "decision",
                                          "swap")}, indent=1, default=str))
    return rc


if __name__ == "__main__":
    sys.exit(main())

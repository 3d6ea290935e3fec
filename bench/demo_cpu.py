"""``make demo`` on CPU, recorded: quiet, or while a CPU burner keeps every core busy.

    python bench/demo_cpu.py [--burner] [--var /tmp/demo-cpu-var]

Runs ``python -m tuneloop.demo --stop`` exactly as ``make demo`` does (default settings, the
engine the inference service picks: vLLM's CPU build when ``.venv-vllm`` exists), optionally
with one busy-looping process per core for the whole run (``--burner``: issue 14 — a verdict
must not depend on how busy the machine was), samples the load average every 10 s, and puts
the run first in ``bench/results/demo_run.json`` (earlier runs kept under ``previous``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "demo_run.json"


def _burn() -> None:
    while True:
        pass


def _val(t: dict, key: str):
    m = (t.get("metrics") or {}).get(key)
    return m.get("value") if isinstance(m, dict) else m


def record(summary: dict, rc: int, wall: float, burner: int, loads: list[float], started: str) -> dict:
    by_role = {t.get("role"): t for t in ((summary.get("eval") or {}).get("targets") or [])}
    cand, base, kshot = by_role.get("candidate") or {}, by_role.get("base") or {}, by_role.get("base_kshot") or {}
    dec = summary.get("decision") or {}
    results = []
    if cand and kshot:
        results.append({"metric": "task score tuned vs best baseline (base 3-shot)",
                        "value": _val(cand, "task_score"), "unit": "score",
                        "baseline": _val(kshot, "task_score")})
        results.append({"metric": "json validity tuned vs base 3-shot", "value": _val(cand, "json_valid"),
                        "unit": "score", "baseline": _val(kshot, "json_valid")})
    if cand and base:
        results.append({"metric": "general suite tuned vs base", "value": _val(cand, "general"),
                        "unit": "score", "baseline": _val(base, "general")})
    results.append({"metric": "demo wall time (make demo, end to end)", "value": wall, "unit": "s",
                    "baseline": 900, "baseline_is": "issue 14's 15-minute target"})
    for r in results:
        v, b = r["value"], r["baseline"]
        r["ratio"] = round(v / b, 3) if isinstance(v, (int, float)) and b else None
    return {"bench": "demo_run", "when": started,
            "machine": {"cpu": f"{os.cpu_count()} cores", "burner_processes": burner,
                        "load_avg_1m": {"min": min(loads, default=None), "max": max(loads, default=None),
                                        "median": sorted(loads)[len(loads) // 2] if loads else None}},
            "command": "python -m tuneloop.demo --stop (make demo's defaults)", "exit_code": rc,
            "results": results, "decision": dec.get("status"), "reasons": dec.get("reasons"),
            "stages_s": summary.get("steps_s"), "swap": summary.get("swap"),
            "eval_table": summary.get("report_table"),
            "job": {k: (summary.get("job") or {}).get(k) for k in ("resolved_hyperparameters", "metrics")}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--burner", action="store_true", help="one busy process per core during the run")
    p.add_argument("--var", default="/tmp/demo-cpu-var")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--keep", action="store_true", help="leave the stack running (for bench/second_task.py)")
    p.add_argument("--engine", default=None, choices=["vllm", "transformers"],
                   help="INFERENCE_ENGINE for the run (default: the demo's own choice, vLLM CPU); "
                        "transformers = the fallback engine, the baseline of issue 16")
    a = p.parse_args()
    burners = [mp.Process(target=_burn, daemon=True) for _ in range(os.cpu_count() or 1)] if a.burner else []
    for b in burners:
        b.start()
    loads: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(10):
            loads.append(round(os.getloadavg()[0], 2))

    threading.Thread(target=sample, daemon=True).start()
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    log = Path(a.var).with_suffix(".log")
    try:
        with open(log, "wb") as fh:
            rc = subprocess.run([sys.executable, "-m", "tuneloop.demo", "--var", a.var,
                                 *([] if a.keep else ["--stop"])],
                                stdout=fh, stderr=subprocess.STDOUT, timeout=a.timeout,
                                env={**os.environ, "COLUMNS": "120",
                                     **({"INFERENCE_ENGINE": a.engine} if a.engine else {})}).returncode
    except subprocess.TimeoutExpired:
        rc = 124
    finally:
        done.set()
        for b in burners:
            b.terminate()
    wall = round(time.monotonic() - t0, 1)
    path = Path(a.var) / "demo" / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    doc = record(summary, rc, wall, len(burners), loads, started)
    doc["engine"] = a.engine or "default (vllm CPU)"
    if OUT.exists():
        doc["previous"] = json.loads(OUT.read_text())
    OUT.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(json.dumps({k: doc[k] for k in ("exit_code", "decision", "results", "stages_s", "machine")},
                     indent=1, default=str))
    return rc


if __name__ == "__main__":
    sys.exit(main())

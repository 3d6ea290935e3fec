"""A second task through the whole loop, as a new user would run it, on the demo's stack.

Needs the stack that ``make demo`` leaves running (or ``make up``). Order extraction
(:mod:`tuneloop.examples.orders`, not support tickets): upload train + held-out files, start a
job that names only the dataset, the base and its own alias (``order-bot``) — every
hyperparameter is the trainer's default for this machine — wait for the gateway's gate, and
check that ``support-bot`` was not touched. Writes ``bench/results/second_task.json``.

    .venv/bin/python bench/second_task.py [--var var] [--train-rows 160] [--eval-rows 60] [--replay-rows 80]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALIAS = "order-bot"


def main() -> int:
    from tuneloop.cli.render import JobWatcher
    from tuneloop.demo import _write_jsonl, connect, console, step_gate, wait_ready
    from tuneloop.examples.orders import generate

    p = argparse.ArgumentParser()
    p.add_argument("--var", type=Path, default=Path(os.environ.get("TUNELOOP_DATA_DIR", "var")))
    p.add_argument("--train-rows", type=int, default=160)
    p.add_argument("--eval-rows", type=int, default=60)
    p.add_argument("--replay-rows", type=int, default=80,
                   help="POST /v1/replay-rows then upload them with the data (0: none); the "
                   "product's documented option against forgetting, a half of the train rows as in "
                   "the demo")
    p.add_argument("--base-model", default=None, help="default: the demo's embedded base")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "second_task.json")
    a = p.parse_args()
    var = a.var.resolve()
    base = a.base_model or str(var / "artifacts" / "base" / "smollm2-135m-instruct")
    t0, times = time.monotonic(), {}
    api = connect(var)
    wait_ready(api, var)
    before = {x["id"]: x.get("model") for x in api.get("/v1/aliases").get("data", [])}
    rows = generate(a.train_rows + a.eval_rows, seed=11)
    work = var / "second-task"
    work.mkdir(parents=True, exist_ok=True)
    _write_jsonl(work / "train.jsonl", rows[:a.train_rows])
    _write_jsonl(work / "eval.jsonl", rows[a.train_rows:])
    t = time.monotonic()
    replay = api.replay_rows(a.replay_rows)["data"] if a.replay_rows > 0 else []
    ds = api.upload_dataset(work / "train.jsonl", eval_file=work / "eval.jsonl",
                            options={"name": "orders", "tokenizer": base}, replay_rows=replay)
    times["dataset_s"] = round(time.monotonic() - t, 1)
    t = time.monotonic()
    job = api.create_job({"dataset_id": ds["id"], "base_model": base, "gate_alias": ALIAS})
    job = JobWatcher(api, console).watch(job["id"])
    times["training_s"] = round(time.monotonic() - t, 1)
    if job.get("status") != "succeeded":
        print(json.dumps(job.get("error")), file=sys.stderr)
        return 1
    t = time.monotonic()
    decision = step_gate(api, job)
    times["gate_s"] = round(time.monotonic() - t, 1)
    run = api.eval(decision["eval_id"]) if decision.get("eval_id") else {}
    report = run.get("report") or {}
    after = {x["id"]: x.get("model") for x in api.get("/v1/aliases").get("data", [])}
    targets = {t["role"]: t for t in report.get("targets") or []}
    cand = (targets.get("candidate") or {}).get("metrics") or {}
    best = max((t for r, t in targets.items() if r in ("base", "base_kshot")), default={},
               key=lambda t: (t.get("metrics") or {}).get("task_score", {}).get("value") or 0)
    bm = best.get("metrics") or {}

    def row(metric: str, key: str) -> dict:
        v, b = (cand.get(key) or {}).get("value"), (bm.get(key) or {}).get("value")
        return {"metric": f"{metric} tuned vs best baseline ({best.get('name')})", "value": v,
                "unit": "score", "baseline": b, "ratio": round(v / b, 3) if v is not None and b else None}

    doc = {"bench": "second_task", "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "machine": {"cpu": os.cpu_count(), "load_1m": os.getloadavg()[0]},
           "task": "order extraction (tuneloop.examples.orders): product, quantity, city, express",
           "rows": {"train": a.train_rows, "eval": a.eval_rows, "replay": len(replay)}, "alias": ALIAS,
           "results": [row("task score", "task_score"), row("json valid", "json_valid")],
           "decision": {k: decision.get(k) for k in ("status", "alias", "candidate", "reasons")},
           "support_bot_untouched": before.get("support-bot") == after.get("support-bot"),
           "aliases": {"before": before, "after": after},
           "resolved_hyperparameters": job.get("resolved_hyperparameters"),
           "eval_table": report.get("table"), "times": {**times, "total_s": round(time.monotonic() - t0, 1)},
           "notes": "no hyperparameters sent: the trainer's CPU defaults for a small model; replay "
                    "rows from POST /v1/replay-rows uploaded with the data (the dataset option)"}
    a.out.write_text(json.dumps(doc, indent=1, default=str))
    console.print(report.get("table") or "")
    console.print(f"gate: {decision.get('status')} -> {ALIAS}; support-bot untouched: "
                  f"{doc['support_bot_untouched']}")
    return 0 if decision.get("status") == "promoted" and doc["support_bot_untouched"] else 2


if __name__ == "__main__":
    sys.exit(main())

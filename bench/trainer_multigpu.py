"""GPU bench of multi-GPU training: the same job on 1 GPU and on 2 GPUs (needs nvidia-h200-x2).

Both runs go through the trainer's own launcher (:func:`tuneloop_trainer.launch.job_command`,
what the local executor runs: ``run_job`` alone, or under ``torchrun --standalone
--nproc_per_node=2``) with the GPUs handed out through ``CUDA_VISIBLE_DEVICES``:
- model: Llama-3.2-1B-shaped, random weights, tokenizer trained here (``trainer_gpu.py``'s);
- data: the same rows of ~1-2k tokens (``trainer_gpu.build_data``);
- job: backend ``peft``, 16-bit LoRA r=16 on q/k/v/o, batch 2 x accumulation 4 per GPU, seq
  2048, one epoch; 2 GPUs = DDP over NCCL, each rank half the rows, half the optimizer steps.
Tokens/s is steady state from the job's own ``metrics`` events (TRL's ``num_tokens``, gathered
over ranks) between the first and the last logged step; scaling efficiency = tps2 / (2 x tps1).
The 2-GPU job's merged model is then reloaded with plain transformers in a fresh process.

Run on the device (Unsloth payload: it brings TRL + datasets, see ../shared/gpu/README.md):
    source .gpu/device-setup.sh unsloth && PYTHONPATH=shared/src:services/trainer/src:$PYTHONPATH \\
        python bench/trainer_multigpu.py
Writes ``$OUT/trainer_multigpu.json`` (else ``bench/results/trainer_multigpu.json``).
``--small`` is a CPU dry run (tiny model, 2 processes over gloo; numbers mean nothing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from trainer_gpu import build_data, build_model  # noqa: E402


def run_job(store: Path, job_id: str, mv: str, model_dir: Path, data_key: str, gpus: int,
            small: bool, log: Path, timeout: float) -> dict:
    from tuneloop_trainer.launch import job_command

    spec = {"job_id": job_id, "model_id": mv, "dataset_id": "ds-00000000bench001",
            "dataset_key": data_key, "base_model": str(model_dir), "backend": "peft", "gpus": gpus,
            "hyperparameters": {"num_train_epochs": 1, "logging_steps": 1 if small else 2,
                                "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4,
                                "max_seq_length": 2048, "load_in_4bit": False,
                                "warmup_steps": 2, "early_stopping_patience": 0},
            "export": {"verify_prompts": 2, "verify_max_new_tokens": 8}}
    (store / "jobs" / job_id).mkdir(parents=True, exist_ok=True)
    (store / "jobs" / job_id / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    if not small:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(gpus))
    else:
        env["OMP_NUM_THREADS"] = "1"
    cmd = job_command(sys.executable, job_id, str(store), gpus=gpus)
    t0 = time.monotonic()
    with open(log, "ab") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n".encode())
        fh.flush()
        try:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    wall = time.monotonic() - t0
    events = [json.loads(x) for x in (store / "jobs" / job_id / "events.jsonl").read_text().splitlines()]
    metrics = [e for e in events if e["type"] == "metrics" and e["data"].get("num_tokens")]
    out: dict = {"gpus": gpus, "rc": rc, "wall_s": round(wall, 1), "command": cmd,
                 "process_starts": [e["data"] for e in events if e["type"] == "process_start"],
                 "errors": [e["data"] for e in events if e["type"] == "error"]}
    end = next((e["data"] for e in events if e["type"] == "train_end"), None)
    if end:
        out["train_end"] = {k: end.get(k) for k in ("global_step", "max_steps", "num_tokens",
                                                    "train_runtime_s", "world_size", "parallel",
                                                    "peak_gpu_bytes", "final_train_loss")}
    if len(metrics) >= 3:  # steady state: skip the first logged step (warm-up, compile)
        a, b = metrics[1], metrics[-1]
        out["steady_tokens"] = b["data"]["num_tokens"] - a["data"]["num_tokens"]
        out["steady_seconds"] = round(b["ts"] - a["ts"], 3)
        out["tokens_per_s"] = out["steady_tokens"] / (b["ts"] - a["ts"])
        out["steps_measured"] = b["data"]["step"] - a["data"]["step"]
    result = store / "jobs" / job_id / "result.json"
    if result.exists():
        res = json.loads(result.read_text())
        out["export_checks"] = res.get("export_checks")
        out["merged_key"] = res["artifacts"]["merged"]["key"]
    return out


def reload_merged(merged: Path, log: Path) -> dict:
    code = ("import json,torch; from transformers import AutoModelForCausalLM, AutoTokenizer;"
            f"p={str(merged)!r}; m=AutoModelForCausalLM.from_pretrained(p, dtype='auto');"
            "t=AutoTokenizer.from_pretrained(p); m=m.to('cuda' if torch.cuda.is_available() else 'cpu');"
            "ids=t.apply_chat_template([{'role':'user','content':'Subject: App keeps crashing'}],"
            "add_generation_prompt=True, return_tensors='pt', return_dict=True).to(m.device);"
            "y=m.generate(**ids, max_new_tokens=8, do_sample=False);"
            "print('RELOAD', json.dumps({'params': sum(x.numel() for x in m.parameters()),"
            "'dtype': str(m.dtype), 'generated_tokens': y.shape[1]-ids['input_ids'].shape[1]}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    with open(log, "a") as fh:
        fh.write(p.stdout + p.stderr)
    line = next((x for x in p.stdout.splitlines() if x.startswith("RELOAD ")), None)
    return {"rc": p.returncode, **(json.loads(line[7:]) if line else {})}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--rows", type=int, default=400, help="training rows (x ~1.5k tokens)")
    ap.add_argument("--per-row", type=int, default=12, help="tickets per row")
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--work", default="/tmp/trainer-multigpu-bench")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    store = work / "store"
    store.mkdir(parents=True)
    log = work / "bench.log"
    import torch

    machine = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               "gpus": torch.cuda.device_count(), "cpu_count": os.cpu_count(),
               "torch": torch.__version__}
    res: dict = {"bench": "trainer_multigpu", "when": None, "machine": machine, "results": [],
                 "notes": [], "runs": {}}
    out = Path(os.environ["OUT"]) / "trainer_multigpu.json" if os.environ.get("OUT") else \
        ROOT / "bench/results/trainer_multigpu.json"

    def save() -> None:
        res["when"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2))

    model_dir = build_model(work / "base", args.small)
    rows = 48 if args.small else args.rows
    data_key = build_data(store, rows, 2 if args.small else args.per_row)
    timeout = 900 if args.small else 280
    for n in (1, args.gpus):
        r = run_job(store, f"job-00000000multi{n:03d}", f"mv-00000000multi{n:03d}", model_dir,
                    data_key, n, args.small, log, timeout)
        res["runs"][f"{n}gpu"] = r
        print(json.dumps({k: v for k, v in r.items() if k != "command"})[:800], flush=True)
        save()
    one, many = res["runs"]["1gpu"], res["runs"][f"{args.gpus}gpu"]
    if many.get("merged_key"):
        many["reload"] = reload_merged(store / many["merged_key"], log)
    if one.get("tokens_per_s") and many.get("tokens_per_s"):
        eff = many["tokens_per_s"] / (args.gpus * one["tokens_per_s"])
        res["results"] += [
            {"metric": f"tokens_per_s_{args.gpus}gpu_ddp", "value": round(many["tokens_per_s"], 1),
             "unit": "tokens/s", "baseline": round(one["tokens_per_s"], 1),
             "ratio": round(many["tokens_per_s"] / one["tokens_per_s"], 3),
             "baseline_is": "the same job on 1 GPU"},
            {"metric": "scaling_efficiency", "value": round(eff, 3), "unit": "tps_n/(n*tps_1)",
             "baseline": 1.0, "ratio": round(eff, 3)}]
    res["results"].append({"metric": f"{args.gpus}gpu_job_merged_model_reloads",
                           "value": 1.0 if (many.get("reload") or {}).get("generated_tokens") else 0.0,
                           "unit": "bool", "baseline": None, "ratio": None})
    try:
        res["log_tail"] = log.read_text()[-4000:]
    except OSError:
        pass
    save()
    return 0 if one.get("rc") == 0 and many.get("rc") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

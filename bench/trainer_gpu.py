"""GPU benchmark of the trainer's backends, plus one real job through the unsloth backend.

Runs on the lent H200 (see ../shared/gpu/README.md):

    source .gpu/device-setup.sh unsloth && PYTHONPATH=shared/src:services/trainer/src:$PYTHONPATH \
        python bench/trainer_gpu.py --out $OUT

(a) builds a Llama-3.2-1B-shaped model (>=1B parameters, random weights, a tokenizer trained
    here; nothing downloaded), runs ``python -m tuneloop_trainer.run_job`` with
    ``backend="unsloth"`` on the support-ticket task (trains, merges to 16-bit, verifies), then
    reloads the merged folder with plain transformers in a fresh process;
(b) same GPU, model and data: tokens/s and peak GPU memory of the ``unsloth`` vs ``peft``
    backends, 16-bit LoRA and 4-bit QLoRA, each in its own process (Unsloth patches
    transformers/TRL globally, so the two never share a process). The backends are the
    service's own (``tuneloop_trainer.backends``), with the article's recipe: batch 2 x
    accumulation 4, LoRA r=16 alpha=16 on q/k/v/o, lr 2e-4, bf16, seq 2048.

Writes ``<out>/trainer_gpu.json`` in the bench format. ``--small`` is a CPU dry run (tiny model).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [("peft", False), ("peft", True), ("unsloth", False), ("unsloth", True)]


# ------------------------------------------------------------------------------ setup
def build_model(out: Path, small: bool) -> Path:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from tuneloop.examples.support_tickets import corpus_text
    from tuneloop.testing.models import GENERAL_TEXT, build_tokenizer

    tok = build_tokenizer(corpus_text(3000, seed=11) + GENERAL_TEXT * 20, vocab_size=8192)
    if small:
        shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2)
    else:  # Llama-3.2-1B shape (tied embeddings); vocab padded to 32768 -> ~1.04B parameters
        shape = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8)
    cfg = LlamaConfig(vocab_size=len(tok) if small else 32768, max_position_embeddings=4096,
                      tie_word_embeddings=True, rope_theta=500000.0, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, bos_token_id=None, **shape)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.float32 if small else torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id, do_sample=False)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_data(store_root: Path, n_rows: int, per_row: int) -> str:
    """Rows of ``per_row`` tickets each (~1-2k tokens: the size where the GPU is busy)."""
    from datasets import Dataset, DatasetDict

    from tuneloop.examples.support_tickets import generate

    tickets = generate(n_rows * per_row, seed=5)
    rows = []
    for i in range(n_rows):
        chunk = tickets[i * per_row:(i + 1) * per_row]
        prompt = "Summarize each support ticket and classify its urgency.\n\n" + "\n\n".join(
            f"Ticket {j + 1}:\n{t['input']}" for j, t in enumerate(chunk))
        answer = "[" + ", ".join(t["output"] for t in chunk) + "]"
        rows.append({"messages": [{"role": "user", "content": prompt},
                                  {"role": "assistant", "content": answer}], "line": i + 1})
    n_eval = max(4, n_rows // 10)
    key = "datasets/ds-00000000bench001/hf"
    DatasetDict({"train": Dataset.from_list(rows[n_eval:]),
                 "eval": Dataset.from_list(rows[:n_eval])}).save_to_disk(str(store_root / key))
    return key


# ----------------------------------------------------------------------- (b) one config
def measure(backend_name: str, four_bit: bool, model_dir: str, data_dir: str, steps: int,
            seq: int, out_json: str) -> None:
    """Child process: train ``steps`` optimizer steps, record tokens/s and peak memory."""
    from tuneloop_trainer.backends import get_backend

    backend = get_backend(backend_name)  # unsloth first: it patches transformers/TRL
    import torch
    from datasets import load_from_disk
    from transformers import TrainerCallback
    from trl import SFTConfig

    from tuneloop_trainer.hparams import Hyperparameters
    from tuneloop_trainer.data import to_prompt_completion
    from tuneloop_trainer.training import make_trainer_class

    cuda = torch.cuda.is_available()
    hp = Hyperparameters(max_seq_length=seq, load_in_4bit=four_bit)
    t0 = time.monotonic()
    model, tok = backend.load(model_dir, hp)
    load_s = time.monotonic() - t0
    train = to_prompt_completion(load_from_disk(data_dir)["train"])
    marks: list[tuple[int, float, float | None]] = []

    class Timer(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                if cuda:
                    torch.cuda.synchronize()
                marks.append((state.global_step, time.monotonic(), logs.get("num_tokens")))

    cfg = SFTConfig(output_dir=str(Path(out_json).parent / f"out-{backend_name}-{int(four_bit)}"),
                    per_device_train_batch_size=2, gradient_accumulation_steps=4, warmup_steps=10,
                    max_steps=steps, learning_rate=2e-4, logging_steps=1, save_strategy="no",
                    eval_strategy="no", report_to=[], completion_only_loss=True, max_length=seq,
                    seed=42, disable_tqdm=True, **backend.precision())
    trainer = make_trainer_class()(model=model, args=cfg, train_dataset=train,
                                   processing_class=tok, callbacks=[Timer()])
    ds = trainer.train_dataset
    lengths = [len(x) for x in ds["input_ids"]]
    avg_len = sum(lengths) / len(lengths)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.monotonic()
    trainer.train()
    wall = time.monotonic() - t0
    warm = min(3, len(marks) - 2)
    (s0, t_0, n0), (s1, t_1, n1) = marks[warm], marks[-1]
    rows = (s1 - s0) * 8
    tokens = (n1 - n0) if (n0 is not None and n1 is not None) else rows * avg_len
    res = {"backend": backend_name, "load_in_4bit": four_bit, "steps": steps,
           "tokens_per_s": tokens / (t_1 - t_0), "tokens_counted": tokens,
           "token_source": "trl num_tokens" if n1 is not None else "rows x mean length",
           "avg_row_tokens": avg_len, "step_time_s": (t_1 - t_0) / (s1 - s0), "train_wall_s": wall,
           "load_s": load_s, "final_loss": trainer.state.log_history[-2].get("loss"),
           "peak_gpu_bytes": int(torch.cuda.max_memory_allocated()) if cuda else None,
           "params": sum(p.numel() for p in model.parameters())}
    Path(out_json).write_text(json.dumps(res))


def run_child(args: list[str], log: Path, timeout: float) -> int:
    with open(log, "ab") as fh:
        fh.write(f"\n$ {' '.join(args)}\n".encode())
        fh.flush()
        try:
            return subprocess.run(args, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return 124


# --------------------------------------------------------------------------- (a) a job
def run_job(work: Path, store: Path, model_dir: Path, data_key: str, small: bool, log: Path) -> dict:
    job_id, mv = "job-00000000gpu00001", "mv-00000000gpu00001"
    spec = {"job_id": job_id, "model_id": mv, "dataset_id": "ds-00000000bench001",
            "dataset_key": data_key, "base_model": str(model_dir),
            "backend": "peft" if small else "unsloth",
            "hyperparameters": {"num_train_epochs": 1, "max_steps": 4 if small else 20,
                                "eval_strategy": "steps", "eval_steps": 2 if small else 10,
                                "logging_steps": 2 if small else 5, "max_seq_length": 2048},
            "export": {"verify_prompts": 2, "verify_max_new_tokens": 8}}
    (store / "jobs" / job_id).mkdir(parents=True, exist_ok=True)
    (store / "jobs" / job_id / "spec.json").write_text(json.dumps(spec))
    t0 = time.monotonic()
    rc = run_child([sys.executable, "-m", "tuneloop_trainer.run_job", job_id, "--store", str(store)],
                   log, 220)
    out: dict = {"rc": rc, "wall_s": round(time.monotonic() - t0, 1), "spec": spec}
    events = [json.loads(x) for x in (store / "jobs" / job_id / "events.jsonl").read_text().splitlines()]
    out["events"] = [e for e in events if e["type"] in ("info", "train_begin", "eval", "train_end",
                                                        "export", "export_check", "error", "done",
                                                        "warning")]
    out["metrics_events"] = [e["data"] for e in events if e["type"] == "metrics"][-3:]
    result = store / "jobs" / job_id / "result.json"
    if result.exists():
        out["result"] = json.loads(result.read_text())
        merged = store / "models" / mv / "merged"
        check = work / "reload.json"
        code = ("import json,sys,torch; from transformers import AutoModelForCausalLM, AutoTokenizer;"
                f"p={str(merged)!r}; m=AutoModelForCausalLM.from_pretrained(p, dtype='auto');"
                "t=AutoTokenizer.from_pretrained(p); m=m.to('cuda' if torch.cuda.is_available() else 'cpu');"
                "ids=t.apply_chat_template([{'role':'user','content':'Subject: App keeps crashing'}],"
                "add_generation_prompt=True, return_tensors='pt', return_dict=True).to(m.device);"
                "y=m.generate(**ids, max_new_tokens=8, do_sample=False);"
                "json.dump({'params': sum(p.numel() for p in m.parameters()), 'dtype': str(m.dtype),"
                "'generated_tokens': y.shape[1]-ids['input_ids'].shape[1], 'unsloth_loaded': 'unsloth' in sys.modules,"
                f"'files': sorted(__import__('os').listdir(p))}}, open({str(check)!r},'w'))")
        out["reload_rc"] = run_child([sys.executable, "-c", code], log, 300)
        if check.exists():
            out["reload"] = json.loads(check.read_text())
    return out


# --------------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--work", default="/tmp/trainer-gpu-bench")
    p.add_argument("--small", action="store_true", help="CPU dry run with a tiny model")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--skip-job", action="store_true")
    p.add_argument("--child-timeout", type=float, default=110)
    p.add_argument("--measure", nargs=6, metavar=("BACKEND", "4BIT", "MODEL", "DATA", "STEPS", "JSON"))
    a = p.parse_args()
    if a.measure:
        b, four, model, data, steps, js = a.measure
        measure(b, four == "1", model, data, int(steps), 2048, js)
        return
    work, out = Path(a.work), Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "trainer_gpu.log"
    store = work / "store"
    t0 = time.monotonic()
    model_dir = build_model(work / "base-1b", a.small) if not (work / "base-1b" / "config.json").exists() \
        else work / "base-1b"
    data_key = build_data(store, 60 if a.small else 260, 2 if a.small else 12) \
        if not (store / "datasets").exists() else "datasets/ds-00000000bench001/hf"
    setup_s = time.monotonic() - t0
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    state: dict = {"job": {}, "runs": {}}

    def write_doc() -> None:
        runs = state["runs"]
        results = []

        def add(metric: str, a_key: str, b_key: str, field: str, unit: str, scale: float = 1.0) -> None:
            va, vb = runs.get(a_key, {}).get(field), runs.get(b_key, {}).get(field)
            if va is None or vb is None:
                return
            results.append({"metric": metric, "value": round(va * scale, 3), "unit": unit,
                            "baseline": round(vb * scale, 3), "ratio": round(va / vb, 3)})

        gib = 1 / 2**30
        add("tokens_per_s unsloth 16-bit LoRA vs peft 16-bit LoRA", "unsloth_16bit", "peft_16bit", "tokens_per_s", "tokens/s")
        add("tokens_per_s unsloth 4-bit QLoRA vs peft 4-bit QLoRA", "unsloth_4bit", "peft_4bit", "tokens_per_s", "tokens/s")
        add("tokens_per_s unsloth 4-bit vs peft 16-bit (the article's comparison)", "unsloth_4bit", "peft_16bit", "tokens_per_s", "tokens/s")
        add("peak GPU memory unsloth 16-bit vs peft 16-bit", "unsloth_16bit", "peft_16bit", "peak_gpu_bytes", "GiB", gib)
        add("peak GPU memory unsloth 4-bit vs peft 4-bit", "unsloth_4bit", "peft_4bit", "peak_gpu_bytes", "GiB", gib)
        add("peak GPU memory unsloth 4-bit vs peft 16-bit (the article's comparison)", "unsloth_4bit", "peft_16bit", "peak_gpu_bytes", "GiB", gib)
        doc = {"bench": "trainer_gpu", "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "machine": {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda},
               "results": results, "runs": runs, "job": state["job"], "setup_s": round(setup_s, 1),
               "notes": ("Same GPU, model (Llama-3.2-1B shape, random weights, ~1.04B params), data "
                         "(support tickets, 12 per row, ~1-2k tokens/row), recipe (batch 2 x accum 4, "
                         "r=16, alpha=16, q/k/v/o, lr 2e-4, bf16, seq 2048), each config in its own "
                         "process through tuneloop_trainer.backends; tokens/s counts real (non-pad) "
                         "tokens after 3 warm-up steps; peak = torch.cuda.max_memory_allocated during "
                         "training. The article claims ~2x speed and ~70% less memory for Unsloth.")}
        (out / "trainer_gpu.json").write_text(json.dumps(doc, indent=1, default=str))
        print(json.dumps({"results": results, "runs": runs, "job_rc": state["job"].get("rc"),
                          "reload": state["job"].get("reload")}, indent=1, default=str), flush=True)

    if not a.skip_job:
        state["job"] = run_job(work, store, model_dir, data_key, a.small, log)
        write_doc()
    steps = 3 if a.small else a.steps
    for backend, four in CONFIGS:
        if a.small and (backend == "unsloth" or four):
            continue
        js = work / f"m-{backend}-{int(four)}.json"
        rc = run_child([sys.executable, __file__, "--measure", backend, "1" if four else "0",
                        str(model_dir), str(store / data_key), str(steps), str(js)], log, a.child_timeout)
        state["runs"][f"{backend}_{'4bit' if four else '16bit'}"] = json.loads(js.read_text()) \
            if js.exists() else {"error": f"exit {rc}; see trainer_gpu.log"}
        write_doc()


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.exit(1)
